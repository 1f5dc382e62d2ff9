#!/usr/bin/env python3
"""The seed's script name, kept for existing Docker images and docs: ``crane-x7-vla infer`` under another name.

Same flags (``--rosbridge-host --rosbridge-port --model-path --task-instruction --device --unnorm-key
--inference-rate``) and env vars (ROSBRIDGE_HOST, VLA_MODEL_PATH, ...); everything lives in
:mod:`crane_x7_vla.inference`.
"""

from __future__ import annotations

import argparse
import sys

from crane_x7_vla.inference import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla_inference_rosbridge.py",
                                     description="VLA inference client using rosbridge WebSocket")
    cli.configure(parser)
    return cli.main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
