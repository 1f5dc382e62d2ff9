#!/usr/bin/env python3
"""Host-side image preprocessing of a batch (the PIL resize + normalise of ``prepare_inputs``), in series and
with the resize thread pool, for OpenVLA's fused 224 px towers and 640x480 camera frames (JSON).

  .venv/bin/python bench/preprocess_batch.py [--batches 1 8 32] [--repeats 20]
  .venv/bin/python bench/preprocess_batch.py --frame 224 --batches 32 128   # simulator frames, model size
  python bench/preprocess_batch.py --device-resize cuda --batches 1 8 32     # PIL vs the on-device resize

With ``--frame 224`` the frames are already at the towers' size, as the simulators render them for RL rollouts
and PPO minibatches: ``batch`` then skips PIL (every strategy leaves such frames as they are; checked equal
here). ``host_pil`` / ``host_pil_free`` time what stays on the host when the device is a GPU (the
normalisation runs there): the PIL round trip in the thread pool plus the stack, against the stack alone.

``--device-resize DEVICE`` (640x480 frames) times, per batch, what ``batch(frames, DEVICE)`` costs with the
resize in PIL (``pil``: thread pool, stack, copy, normalise) against the resize on the device (``device``:
a stack into pinned memory, one uint8 copy, models/resize.py, normalise), and its parts (``h2d``: stack and copy;
``device_resize``: the resize of frames already there), synchronised; ``bit_exact`` says both give the same
tensor. It runs on the CPU too (where PIL wins: dense float64 products are the GPU's trade).

It runs before every engine call on the critical path (the engine's own graph replay does not include it), so
on a many-core GPU host it is what a batch of several robots' frames adds to their latency.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from crane_x7_vla.models.config import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD, ViTConfig
from crane_x7_vla.models.processing import (
    ImageTransform,
    _frames_on,
    build_prompt,
    left_pad,
    prompt_token_ids,
    underline_token_id,
)
from inference_overhead import time_it  # type: ignore[import-not-found]

INSTRUCTION = "pick up the object and place it"


def timed_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up call (thread pool start, allocator)."""
    fn()
    return time_it(fn, repeats)["p50"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--frame", type=int, choices=(480, 224), default=480,
                   help="480: 640x480 camera frames; 224: frames already at the model's size")
    p.add_argument("--device-resize", metavar="DEVICE", default=None,
                   help="also time PIL against the on-device resize with this device (cuda, cpu)")
    args = p.parse_args()
    if args.device_resize is not None and args.frame != 480:
        p.error("--device-resize times the resize of camera frames: use it with --frame 480")
    towers = [ViTConfig(8, 2, 1, 8, 14, 224, mean=DINO_MEAN, std=DINO_STD),
              ViTConfig(8, 2, 1, 8, 14, 224, mean=SIGLIP_MEAN, std=SIGLIP_STD)]  # only the sizes matter here
    transform = ImageTransform(towers)
    rng = np.random.default_rng(0)
    shape = (480, 640, 3) if args.frame == 480 else (224, 224, 3)
    if args.frame == 224:  # prompt ids need a tokenizer: the tiny test checkpoint's (the real id layout)
        from crane_x7_vla.models import load_vla, make_tiny_checkpoint

        vla = load_vla(make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny", action_dim=8), device="cpu")
    out: dict[str, object] = {"cpu_count": os.cpu_count(), "frame": list(shape), "image_size": 224}
    for b in args.batches:
        frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(b)]

        def serial(frames: list[np.ndarray] = frames) -> torch.Tensor:  # what batch() did before the pool
            per_image = [transform.resized(f) for f in frames]
            return transform.normalize([torch.from_numpy(np.stack([r[i] for r in per_image]))
                                        for i in range(len(towers))])

        def pooled(frames: list[np.ndarray] = frames) -> torch.Tensor:  # the PIL path of batch()
            return transform.normalize([torch.from_numpy(p) for p in transform.resized_batch(frames)])

        def batch(frames: list[np.ndarray] = frames) -> torch.Tensor:
            return transform.batch(frames, "cpu")

        assert torch.equal(serial(), pooled()) and torch.equal(serial(), batch())
        out[f"b{b}_serial_ms"] = round(timed_ms(serial, args.repeats), 2)
        out[f"b{b}_threads_ms"] = round(timed_ms(pooled, args.repeats), 2)
        if args.frame == 224:  # the host part only: with a GPU device the normalisation runs there
            out[f"b{b}_host_pil_ms"] = round(timed_ms(lambda f=frames: transform.resized_batch(f), args.repeats), 2)
            out[f"b{b}_host_pil_free_ms"] = round(timed_ms(lambda f=frames: np.stack(f), args.repeats), 2)
            texts = [INSTRUCTION] * b  # a PPO minibatch repeats its few instructions

            def uncached(texts: list[str] = texts) -> object:  # what prepare_text did before the cache
                under = underline_token_id(vla.tokenizer)
                return left_pad([prompt_token_ids(vla.tokenizer, build_prompt(t), under) for t in texts],
                                vla.config.pad_token_id)

            out[f"b{b}_prompt_ids_uncached_ms"] = round(timed_ms(uncached, args.repeats), 2)
            out[f"b{b}_prompt_ids_cached_ms"] = round(timed_ms(lambda t=texts: vla.prepare_text(t), args.repeats), 2)
        if args.device_resize is not None:
            out.update({f"b{b}_{k}": v for k, v in device_resize(transform, frames, args.device_resize,
                                                                  args.repeats).items()})
    if args.device_resize is not None:
        out["device"] = torch.cuda.get_device_name() if torch.device(args.device_resize).type == "cuda" else "cpu"
        out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out))


def device_resize(transform: ImageTransform, frames: list[np.ndarray], device: str, repeats: int) -> dict[str, object]:
    """Milliseconds of ``batch`` with the PIL resize and with the on-device one (synchronised), and whether they
    give the same tensor."""
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def run(fn: Callable[[], object]) -> Callable[[], object]:
        def timed() -> object:
            t = fn()
            sync()
            return t
        return timed

    on_device = torch.from_numpy(np.stack(frames)).to(dev)
    pil = run(lambda: transform.batch(frames, dev, resize_on_device=False))
    resized = run(lambda: transform.batch(frames, dev, resize_on_device=True))
    return {
        "bit_exact": torch.equal(transform.batch(frames, dev, resize_on_device=False),
                                 transform.batch(frames, dev, resize_on_device=True)),
        "pil_ms": round(timed_ms(pil, repeats), 2),
        "device_ms": round(timed_ms(resized, repeats), 2),
        "h2d_ms": round(timed_ms(run(lambda: _frames_on(frames, dev)), repeats), 2),
        "device_resize_ms": round(timed_ms(run(lambda: transform.resized_on_device(on_device)[0]), repeats), 2),
    }


if __name__ == "__main__":
    main()
