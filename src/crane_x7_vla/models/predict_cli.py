"""``crane-x7-vla predict``: load a VLA (OpenVLA or MiniVLA), predict for image(s) + instruction, print it.

With ``--json`` the last stdout line is ``{"action": [...]}`` (machine-readable; the first step) plus, for
models that predict action chunks (MiniVLA VQ), ``"chunk": [[...], ...]`` (chunk_size x action_dim); logs go
to stderr. Multi-image models take several ``--image`` files in the model's order (history2: t-1 then t;
wrist: third-person then wrist); one image fills a history as at an episode start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from crane_x7_vla.inference.settings import ENV_VQ_PATH


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory, Hub id, or LoRA adapter directory")
    parser.add_argument("--image", required=True, nargs="+", help="RGB image file(s) (PNG/JPEG), in the model's order")
    parser.add_argument("--instruction", required=True, help='e.g. "pick up the red block"')
    parser.add_argument("--unnorm-key", default=None, help="dataset key of the action statistics")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--vq-path", default=None,
                        help=f"MiniVLA VQ checkpoints: directory or Hub id of the residual-VQ weights ({ENV_VQ_PATH})")
    parser.add_argument("--json", action="store_true", help='print {"action": [...]} as the last line')


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from PIL import Image

    from crane_x7_vla.models.loading import load_vla

    images = []
    for name in args.image:
        path = Path(name)
        if not path.is_file():
            print(f"crane-x7-vla predict: image {path} not found", file=sys.stderr)
            return 2
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    vq_path = args.vq_path or os.environ.get(ENV_VQ_PATH) or None
    model = load_vla(args.model, device=args.device, unnorm_key=args.unnorm_key, vq_path=vq_path)
    sample = images[0] if len(images) == 1 else images
    try:
        if hasattr(model, "predict_action_chunk"):
            chunk = model.predict_action_chunk([sample], [args.instruction])[0]  # (chunk_size, action_dim)
        else:
            chunk = model.predict_action([sample], [args.instruction])  # (1, action_dim)
    except (ValueError, TypeError) as exc:  # e.g. a wrong number of images for this model
        print(f"crane-x7-vla predict: {exc}", file=sys.stderr)
        return 2
    steps = [[float(x) for x in row] for row in chunk]
    out: dict[str, object] = {"action": steps[0]}
    if len(steps) > 1:
        out["chunk"] = steps
    if args.json:
        print(json.dumps(out))
    else:
        for i, row in enumerate(steps):
            tag = f"step {i}" if len(steps) > 1 else "action"
            print(f"{tag} ({model.unnorm_key}): " + " ".join(f"{v:+.4f}" for v in row))
    return 0
