"""``crane-x7-vla sft``: supervised fine-tuning of an OpenVLA-architecture model on recorded demonstrations.

Progress goes to the log (stderr) and ``OUT/metrics.jsonl``; the LAST stdout line is one JSON object
(``checkpoint``, ``step``, ``done``, ``loss``, ...). ``OUT/checkpoint_latest`` loads with ``load_vla`` and with
``python -m crane_x7_vla_rl.training.cli train --sft-checkpoint``. torch is imported only inside :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crane_x7_vla_rl.sft.trainer import SFTConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demos", help="demo dataset directory (crane-x7-vla expert --record DIR)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--base", metavar="CKPT", help="start from this checkpoint (local dir, Hub id or LoRA dir)")
    src.add_argument("--init-small", nargs="?", const="small", metavar="PRESET",
                     help="build a small from-scratch model instead: 'small' (fused towers, ~53M params, the "
                          "default) or 'small-cpu' (one tower, 28 px patches, ~23M)")
    parser.add_argument("--output", metavar="OUT", help="run directory (OUT/checkpoint_latest, OUT/metrics.jsonl)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="mode", action="store_const", const="lora",
                      help="train LoRA adapters (r 32, alpha 16; default with --base)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="train every weight (default with --init-small)")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps (default 2000)")
    parser.add_argument("--batch-size", type=int, default=None, help="frames per step (default 16)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 3e-4 full, 5e-4 LoRA)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--unnorm-key", default=None, help="dataset key of the written statistics (default crane_x7)")
    parser.add_argument("--all-episodes", action="store_true", help="also train on unsuccessful demos")
    parser.add_argument("--max-episodes", type=int, default=None, help="use at most this many episodes")
    parser.add_argument("--log-every", type=int, default=None, help="log every N steps (default 10)")
    parser.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default 200)")
    parser.add_argument("--image-shift", type=int, default=None, metavar="PX",
                        help="random-shift augmentation of up to +-PX pixels (default 8; 0 turns it off)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the vision towers and Llama layers (the first steps pay for the compilation)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="checkpoint and stop after this wall time; rerun with --resume to continue")
    parser.add_argument("--resume", metavar="OUT", default=None,
                        help="continue the run in OUT (its saved settings; --steps/--device/--max-seconds may change)")


def _config(args: argparse.Namespace) -> SFTConfig:
    from crane_x7_vla_rl.sft.trainer import SFTConfig

    mode = args.mode or ("full" if args.init_small else "lora")
    given = {
        "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
        "unnorm_key": args.unnorm_key, "max_episodes": args.max_episodes, "log_every": args.log_every,
        "save_every": args.save_every, "max_seconds": args.max_seconds, "image_shift": args.image_shift,
        "compile": args.compile, "lr": args.lr if args.lr is not None else (5e-4 if mode == "lora" else None),
    }
    if args.all_episodes:
        given["only_successful"] = False
    return SFTConfig(demos=args.demos, output=args.output, base=args.base, init_small=args.init_small, mode=mode,
                     **{k: v for k, v in given.items() if v is not None})


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crane_x7_vla_rl.sft.trainer import resume_config, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.resume is not None:
            if args.output is not None and Path(args.output).resolve() != Path(args.resume).resolve():
                raise ValueError("--resume OUT continues the run in OUT; do not also pass a different --output")
            cfg = resume_config(Path(args.resume), steps=args.steps, device=args.device,
                                max_seconds=args.max_seconds, compile=args.compile)
        else:
            missing = [f for f, v in (("--demos", args.demos), ("--output", args.output)) if v is None]
            if args.base is None and args.init_small is None:
                missing.append("--base CKPT or --init-small")
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or pass --resume OUT to continue a run)")
            cfg = _config(args)
        summary = train(cfg, resume=args.resume is not None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"crane-x7-vla sft: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
