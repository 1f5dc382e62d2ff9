"""The ``crane-x7-vla`` command line.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``main(args) -> int``; this
file only maps names to modules and imports the chosen one, so ``crane-x7-vla --help`` and the robot-side
commands never import torch or a simulator.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence

from crane_x7_vla import __version__

# name -> (module, one-line help). Modules must not import heavy dependencies at import time.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("crane_x7_vla.demo", "closed loop: sim bridge + controller + inference with a tiny VLA"),
    "doctor": ("crane_x7_vla.doctor", "report versions, GPU, rendering and simulators; what to install"),
    "infer": ("crane_x7_vla.inference.cli", "remote VLA inference service over rosbridge"),
    "controller": ("crane_x7_vla.control.cli", "robot-side controller: predicted actions -> robot goals"),
    "sim-bridge": ("crane_x7_vla.simbridge.cli", "a simulated CRANE-X7 behind a rosbridge server"),
    "predict": ("crane_x7_vla.models.predict_cli", "predict one action from an image and instruction"),
    "make-tiny-checkpoint": ("crane_x7_vla.models.tiny_cli", "write a tiny random VLA checkpoint"),
    "expert": ("crane_x7_vla.lift.expert_cli", "run (and record) the scripted expert"),
    "tunnel": ("crane_x7_vla.net.tunnel_cli", "keep an SSH tunnel to the robot's rosbridge alive"),
    "entrypoint": ("crane_x7_vla.net.entrypoint", "container entrypoint (Tailscale, checks, exec)"),
    "sft": ("crane_x7_vla_rl.sft.cli", "supervised fine-tuning on recorded demonstrations"),
}
# VLA-RL subcommands, delegated verbatim to ``python -m crane_x7_vla_rl.training.cli``.
RL_COMMANDS = ("train", "evaluate", "config", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crane-x7-vla", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"crane-x7-vla {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name in RL_COMMANDS:
        sub.add_parser(name, help=f"VLA-RL: {name} (see crane-x7-vla {name} --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        build_parser().parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name in RL_COMMANDS:
        from crane_x7_vla_rl.training import cli as rl_cli

        return rl_cli.main([name, *rest])
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, [*COMMANDS, *RL_COMMANDS], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"crane-x7-vla: unknown command {name!r}.{hint} See crane-x7-vla --help.", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"crane-x7-vla {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(rest)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
