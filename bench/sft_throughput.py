"""SFT training speed of the small OpenVLA-family model: steps/s of the real ``crane-x7-vla sft`` loop, and how
much of a step the GPU is actually busy.

    PYTHONPATH=src:bench python bench/sft_throughput.py [--preset small] [--batch-size 128] [--steps 120] [--compile]

Writes a synthetic demo dataset (smooth random images, random joint targets) in the published format, runs
:func:`crane_x7_vla_rl.sft.trainer.train` on it and reads the loop's own ``samples_per_s`` after the first
log window (warm-up). ``--profile-steps N`` then runs N more steps under torch.profiler and reports the device
time per step against the wall time per step: a device busy far less than the wall clock means the step is
bound by the host (Python, launches, synchronisations), not by the GPU. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from crane_x7_vla.lift.dataset import DemoWriter, Episode
from crane_x7_vla_rl.sft.trainer import METRICS, SMALL_PRESETS, SFTConfig, train
from profile_engine import cuda_ms_by_kind  # type: ignore[import-not-found]


def write_demos(root: Path, episodes: int, length: int, size: int, seed: int = 0) -> None:
    """Episodes of smooth images (a per-frame colour gradient: realistic compressed size) and random targets."""
    rng = np.random.default_rng(seed)
    writer = DemoWriter(root, "PickPlace-CRANE-X7", "third_person", 10.0, (size, size))
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for e in range(episodes):
        colours = rng.uniform(0, 255, (length, 1, 1, 3)).astype(np.float32)
        images = (colours * ramp[None, :, None, None] + 40 * ramp[None, None, :, None]).clip(0, 255).astype(np.uint8)
        actions = rng.normal(0, 0.3, (length, 8)).astype(np.float32)
        writer.add(Episode(images=images, actions=actions, qpos=actions.copy(), instruction="pick up the object and "
                           "place it", success=True, seed=e))


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sft_bench_"))
    write_demos(work / "demos", args.episodes, 60, SMALL_PRESETS[args.preset].image_size)
    cfg = SFTConfig(demos=str(work / "demos"), output=str(work / "run"), init_small=args.preset,
                    steps=args.steps, batch_size=args.batch_size, warmup_steps=10, log_every=args.log_every,
                    save_every=10**9, device=args.device, compile=args.compile)
    t0 = time.perf_counter()
    summary = train(cfg)
    rows = [json.loads(line) for line in (work / "run" / METRICS).read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows[1:]]  # the first window holds the warm-up
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "preset": args.preset, "parameters": summary["parameters"], "batch_size": args.batch_size,
        "steps": args.steps, "compile": args.compile, "samples_per_s_median": round(statistics.median(rates), 1) if rates else None,
        "steps_per_s_median": round(statistics.median(rates) / args.batch_size, 2) if rates else None,
        "run_s": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
    }
    if args.profile_steps:
        result.update(profile_steps(cfg, work, args.profile_steps))
    return result


def profile_steps(cfg: SFTConfig, work: Path, steps: int) -> dict[str, Any]:
    """Continue the run for ``steps`` steps under the profiler: device time per step by kind, against wall time."""
    resumed = dataclasses.replace(cfg, steps=cfg.steps + steps, save_every=10**9)
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        train(resumed, resume=True)
    rows = [json.loads(line) for line in (work / "run" / METRICS).read_text().splitlines() if line.strip()]
    profiled = [r["samples_per_s"] for r in rows if r["step"] > cfg.steps]  # the windows of the resumed run
    wall_ms = 1e3 * cfg.batch_size / statistics.median(profiled)
    # The profile spans the resumed run's start too (model load, frames to the device): a slight overestimate.
    device_ms = {k: round(v / steps, 2) for k, v in sorted(cuda_ms_by_kind(prof.key_averages()).items())}
    busy = sum(device_ms.values())
    return {"profiled_steps": steps, "wall_ms_per_step_profiled": round(wall_ms, 2),
            "device_ms_per_step": device_ms, "device_busy_ms_per_step": round(busy, 2),
            "device_busy_fraction": round(busy / wall_ms, 3) if cuda else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=sorted(SMALL_PRESETS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--episodes", type=int, default=40, help="synthetic episodes of 60 frames")
    p.add_argument("--profile-steps", type=int, default=0, help="steps to run under torch.profiler afterwards")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="sft --compile (the first log window holds the compile)")
    print(json.dumps(run(p.parse_args())))


if __name__ == "__main__":
    main()
