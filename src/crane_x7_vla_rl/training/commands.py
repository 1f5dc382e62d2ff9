"""Implementations of the training CLI subcommands (filled in by the trainer)."""

from __future__ import annotations

import argparse


def _pending(args: argparse.Namespace) -> int:
    raise SystemExit(f"crane_x7_vla_rl: '{args.command}' is not available in this build yet")


train = evaluate = config = export = _pending
