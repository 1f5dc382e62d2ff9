"""Kernel-level CUDA time of one OpenVLA-7B engine action (the same static computation, run without the graph).

    PYTHONPATH=src python bench/profile_engine.py [--batch 1]

Prints the top kernels by CUDA time, then one JSON line with the total CUDA time and the graph-replay time.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from crane_x7_vla.models.engine import OpenVLAEngine
from openvla_latency import INSTRUCTION, build_model  # type: ignore[import-not-found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    model = build_model(False, "cuda")
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    inputs = model.prepare_inputs([img] * args.batch, [INSTRUCTION] * args.batch)
    eager_engine = OpenVLAEngine(model, use_cuda_graphs=False)
    for _ in range(3):
        eager_engine.generate(inputs, model.action_dim)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        eager_engine.generate(inputs, model.action_dim)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    engine = OpenVLAEngine(model)
    engine.generate(inputs, model.action_dim)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        engine.generate(inputs, model.action_dim)
    torch.cuda.synchronize()
    print(json.dumps({"batch": args.batch, "cuda_kernel_ms": total_us / 1e3,
                      "graph_replay_ms": (time.perf_counter() - t0) / 20 * 1e3}))


if __name__ == "__main__":
    main()
