"""``crane-x7-vla make-tiny-checkpoint OUT``: write a tiny random OpenVLA checkpoint (published layout)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output directory (replaced atomically if it exists)")
    parser.add_argument("--non-fused", action="store_true", help="one SigLIP-like tower instead of DINOv2+SigLIP")
    parser.add_argument("--lora", action="store_true", help="write OUT as a PEFT LoRA adapter with its base at OUT-base")
    parser.add_argument("--action-dim", type=int, default=7, choices=(7, 8), help="7 arm joints, or 8 with the gripper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unnorm-key", default="crane_x7", help="dataset key of dataset_statistics.json")
    parser.add_argument("--image-size", type=int, default=224, help="tower input size (multiple of 14)")


def main(args: argparse.Namespace) -> int:
    from crane_x7_vla.models.tiny import make_tiny_checkpoint

    out = make_tiny_checkpoint(
        args.out,
        fused=not args.non_fused,
        lora=args.lora,
        action_dim=args.action_dim,
        seed=args.seed,
        unnorm_key=args.unnorm_key,
        image_size=args.image_size,
    )
    print(f"wrote tiny OpenVLA checkpoint to {out}")
    return 0
