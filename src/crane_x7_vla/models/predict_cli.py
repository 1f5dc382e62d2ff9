"""``crane-x7-vla predict``: load a VLA, predict one action for an image + instruction, print it.

With ``--json`` the last stdout line is ``{"action": [...]}`` (machine-readable); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory, Hub id, or LoRA adapter directory")
    parser.add_argument("--image", required=True, help="RGB image file (PNG/JPEG)")
    parser.add_argument("--instruction", required=True, help='e.g. "pick up the red block"')
    parser.add_argument("--unnorm-key", default=None, help="dataset key of the action statistics")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", action="store_true", help='print {"action": [...]} as the last line')


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from PIL import Image

    from crane_x7_vla.models.loading import load_vla

    path = Path(args.image)
    if not path.is_file():
        print(f"crane-x7-vla predict: image {path} not found", file=sys.stderr)
        return 2
    with Image.open(path) as im:
        image = im.convert("RGB")
    model = load_vla(args.model, device=args.device, unnorm_key=args.unnorm_key)
    action = model.predict_action([image], [args.instruction])[0]
    values = [float(x) for x in action]
    if args.json:
        print(json.dumps({"action": values}))
    else:
        print("action (" + str(model.unnorm_key) + "): " + " ".join(f"{v:+.4f}" for v in values))
    return 0
