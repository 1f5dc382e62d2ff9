#!/usr/bin/env python3
"""Host-side image preprocessing of a batch (the PIL resize + normalise of ``prepare_inputs``), in series and
with the resize thread pool, for OpenVLA's fused 224 px towers and 640x480 camera frames (JSON).

  .venv/bin/python bench/preprocess_batch.py [--batches 1 8 32] [--repeats 20]

It runs before every engine call on the critical path (the engine's own graph replay does not include it), so
on a many-core GPU host it is what a batch of several robots' frames adds to their latency.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

import numpy as np
import torch

from crane_x7_vla.models.config import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD, ViTConfig
from crane_x7_vla.models.processing import ImageTransform
from inference_overhead import time_it  # type: ignore[import-not-found]


def timed_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up call (thread pool start, allocator)."""
    fn()
    return time_it(fn, repeats)["p50"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    towers = [ViTConfig(8, 2, 1, 8, 14, 224, mean=DINO_MEAN, std=DINO_STD),
              ViTConfig(8, 2, 1, 8, 14, 224, mean=SIGLIP_MEAN, std=SIGLIP_STD)]  # only the sizes matter here
    transform = ImageTransform(towers)
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"cpu_count": os.cpu_count(), "frame": [480, 640, 3], "image_size": 224}
    for b in args.batches:
        frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(b)]

        def serial(frames: list[np.ndarray] = frames) -> torch.Tensor:  # what batch() did before the pool
            per_image = [transform.resized(f) for f in frames]
            return transform.normalize([torch.from_numpy(np.stack([r[i] for r in per_image]))
                                        for i in range(len(towers))])

        def pooled(frames: list[np.ndarray] = frames) -> torch.Tensor:
            return transform.batch(frames, "cpu")

        assert torch.equal(serial(), pooled())
        out[f"b{b}_serial_ms"] = round(timed_ms(serial, args.repeats), 2)
        out[f"b{b}_threads_ms"] = round(timed_ms(pooled, args.repeats), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
