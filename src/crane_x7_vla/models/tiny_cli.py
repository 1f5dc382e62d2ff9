"""``crane-x7-vla make-tiny-checkpoint OUT``: write a tiny random VLA checkpoint in its published layout.

``--family openvla`` (default): the OpenVLA HF layout. ``--family minivla``: the Prismatic MiniVLA layout
(``--vq`` for the VQ action-chunk variant with its ``vq/`` weights; ``--history2`` / ``--wrist`` for the
multi-image variants).
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output directory (replaced atomically if it exists)")
    parser.add_argument("--family", choices=("openvla", "minivla"), default="openvla", help="model family / layout")
    parser.add_argument("--non-fused", action="store_true", help="one SigLIP-like tower instead of DINOv2+SigLIP")
    parser.add_argument("--lora", action="store_true", help="write OUT as a PEFT LoRA adapter with its base at OUT-base")
    parser.add_argument("--vq", action="store_true", help="minivla: VQ action chunks (8 steps) instead of binning")
    parser.add_argument("--history2", action="store_true", help="minivla: two frames per sample [t-1, t]")
    parser.add_argument("--wrist", action="store_true", help="minivla: [third-person, wrist] images per sample")
    parser.add_argument("--action-dim", type=int, default=7, choices=(7, 8), help="7 arm joints, or 8 with the gripper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unnorm-key", default="crane_x7", help="dataset key of dataset_statistics.json")
    parser.add_argument("--image-size", type=int, default=224, help="openvla: tower input size (multiple of 14)")


def main(args: argparse.Namespace) -> int:
    if args.family == "minivla":
        bad = [flag for flag, on in (("--non-fused", args.non_fused), ("--lora", args.lora)) if on]
        if bad:
            raise SystemExit(f"make-tiny-checkpoint: {', '.join(bad)} only apply to --family openvla")
        from crane_x7_vla.models.minivla_tiny import make_tiny_minivla_checkpoint

        out = make_tiny_minivla_checkpoint(
            args.out,
            vq=args.vq,
            action_dim=args.action_dim,
            image_sequence_len=2 if args.history2 else 1,
            use_wrist_image=args.wrist,
            seed=args.seed,
            unnorm_key=args.unnorm_key,
        )
        print(f"wrote tiny MiniVLA checkpoint ({'VQ' if args.vq else 'binning'}) to {out}")
        return 0
    bad = [flag for flag, on in (("--vq", args.vq), ("--history2", args.history2), ("--wrist", args.wrist)) if on]
    if bad:
        raise SystemExit(f"make-tiny-checkpoint: {', '.join(bad)} only apply to --family minivla")
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
