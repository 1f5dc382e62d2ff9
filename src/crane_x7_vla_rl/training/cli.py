"""``python -m crane_x7_vla_rl.training.cli train|evaluate|config|export`` (the seed's interface).

Flags and defaults follow the documented VLA-RL interface; the training logic lives in ``trainer``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crane_x7_vla_rl.training.cli",
                                     description="VLA-RL: PPO fine-tuning of VLA policies in simulation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,config,export}")
    train = sub.add_parser("train", help="train a policy with PPO (or GRPO)")
    src = train.add_mutually_exclusive_group()
    src.add_argument("--sft-checkpoint", help="SFT checkpoint (exclusive with --pretrained)")
    src.add_argument("--pretrained", help="Hub id or path (default openvla/openvla-7b)")
    train.add_argument("--config", help="YAML config")
    train.add_argument("--experiment-name", help="run name (default crane_x7_vla_rl)")
    train.add_argument("--output-dir", help="output root (default outputs)")
    train.add_argument("--seed", type=int)
    train.add_argument("--simulator", help="maniskill / genesis / mujoco / isaacsim (env LIFT_SIMULATOR)")
    train.add_argument("--env-id", help="task id (default PickPlace-CRANE-X7)")
    train.add_argument("--backend", help="cpu / gpu (env LIFT_BACKEND)")
    train.add_argument("--num-parallel-envs", type=int)
    train.add_argument("--sim-workers", type=int,
                       help="step the envs in this many processes (default 0: in the trainer's; CPU backends)")
    train.add_argument("--engine", choices=("auto", "on", "off"),
                       help="act through the CUDA-graph engine (rollout.engine; auto = OpenVLA on CUDA)")
    train.add_argument("--render", action="store_true", help="live visualisation")
    train.add_argument("--camera", choices=("wrist", "third_person"), help="camera the policy sees (default wrist)")
    train.add_argument("--num-updates", type=int)
    train.add_argument("--num-rollouts", type=int, help="rollouts (episodes) per update")
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--num-epochs", type=int, help="PPO epochs per update")
    train.add_argument("--instruction", help="language instruction")
    train.add_argument("--use-wandb", action="store_true")
    train.add_argument("--wandb-project")
    train.add_argument("--resume", help="checkpoint directory to resume from")
    train.add_argument("--max-seconds", type=float,
                       help="stop before an update that would end past this many seconds since start (the first "
                            "always runs), the last one checkpointed (--resume continues); not saved in the config")
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint with fixed seeds")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--num-episodes", type=int, default=20)
    ev.add_argument("--simulator", default=None,
                    help="default: the checkpoint's (env LIFT_SIMULATOR overrides it), else maniskill")
    ev.add_argument("--env-id", default=None, help="default: the checkpoint's, else PickPlace-CRANE-X7")
    ev.add_argument("--seed", type=int, default=42, help="episode e of batch b starts from seed + b*envs + e")
    ev.add_argument("--render", action="store_true")
    ev.add_argument("--camera", choices=("wrist", "third_person"), default=None,
                    help="camera the policy sees (default: the checkpoint's, else wrist; match the SFT demos)")
    ev.add_argument("--backend", default=None, help="cpu / gpu (default: the checkpoint's)")
    ev.add_argument("--num-parallel-envs", type=int, default=None)
    ev.add_argument("--sim-workers", type=int, default=None,
                    help="step the envs in this many processes (default: the checkpoint's, else 0 = in this one)")
    ev.add_argument("--engine", choices=("auto", "on", "off"), default=None,
                    help="act through the CUDA-graph engine (default: the checkpoint's rollout.engine, else auto)")
    ev.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: eval_temperature)")
    ev.add_argument("--instruction", default=None)
    ev.add_argument("--device", default=None)
    ev.add_argument("--num-videos", type=int, default=0, help="save this many episodes as mp4")
    ev.add_argument("--video-per-outcome", action="store_true",
                    help="save the first successful and the first failed episode of this evaluation as mp4")
    ev.add_argument("--video-dir", default="eval_videos")
    cfg = sub.add_parser("config", help="write a config template")
    cfg.add_argument("--output", "-o", default="config.yaml")
    cfg.add_argument("--template", choices=["default", "fast", "full"], default="default")
    ex = sub.add_parser("export", help="merge a checkpoint's LoRA into a full OpenVLA checkpoint")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--output", "-o", required=True)
    ex.add_argument("--device", default=None, help="device used for merging (default cpu)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crane_x7_vla_rl.training import commands

    return int(getattr(commands, args.command)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
