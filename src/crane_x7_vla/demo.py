"""``crane-x7-vla demo``: the closed loop on an embedded default (placeholder until the loop lands)."""

from __future__ import annotations

import argparse

from crane_x7_vla import doctor


def configure(parser: argparse.ArgumentParser) -> None:
    doctor.configure(parser)


def main(args: argparse.Namespace) -> int:
    return doctor.main(args)
