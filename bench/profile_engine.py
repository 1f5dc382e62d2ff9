"""Where the CUDA time of one OpenVLA-7B engine action goes, per batch size (kernel level, by phase and kind).

    PYTHONPATH=src:bench python bench/profile_engine.py [--batches 1 8 32] [--tables DIR] [--tiny]

For each batch the static computation is run once under torch.profiler without the CUDA graph (same kernels,
compiled layers included) and its kernels are summed by phase (vision / prefill / decode, from the engine's
``record_function`` ranges) and by kind (matmul, attention, other). Then the graph replay time is measured with
the prefill layers compiled and not. Prints one JSON object; ``--tables`` also writes the top-kernel tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from crane_x7_vla.models.engine import OpenVLAEngine
from openvla_latency import INSTRUCTION, _sync, build_model  # type: ignore[import-not-found]

PHASES = ("engine.vision", "engine.prefill", "engine.decode")


def kernel_kind(name: str) -> str:
    """Coarse class of a CUDA kernel from its name (cuBLAS/CUTLASS GEMMs, attention kernels, the rest)."""
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    if any(k in n for k in ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "splitk")):
        return "matmul"
    return "other"


def cuda_ms_by_kind(events: Any) -> dict[str, float]:
    """Kernel time (ms) of profiler ``key_averages()`` by kind. Only the CUDA events themselves count: a CPU op's
    device time is its kernels' time again."""
    kinds: dict[str, float] = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
            k = kernel_kind(e.key)
            kinds[k] = kinds.get(k, 0.0) + e.self_device_time_total / 1e3
    return kinds


def replay_ms(engine: OpenVLAEngine, inputs: Any, dim: int, iters: int) -> float:
    engine.generate(inputs, dim)  # capture
    _sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        engine.generate(inputs, dim)
    _sync()
    return (time.perf_counter() - t0) / iters * 1e3


def profile_batch(model: Any, inputs: Any, batch: int, tables: Path | None) -> dict[str, Any]:
    eng = OpenVLAEngine(model, use_cuda_graphs=False, max_batch=max(32, batch))
    for _ in range(3):  # compile and warm up
        eng.generate(inputs, model.action_dim)
    _sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        eng.generate(inputs, model.action_dim)
        _sync()
    events = prof.key_averages()
    kinds = cuda_ms_by_kind(events)
    phases: dict[str, float] = {}
    for e in events:  # a range shows up as a CPU and as a GPU annotation event: keep the larger GPU time
        if e.key in PHASES:
            phases[e.key] = max(phases.get(e.key, 0.0), e.device_time_total / 1e3)
    if tables is not None:
        tables.mkdir(parents=True, exist_ok=True)
        (tables / f"kernels_b{batch}.txt").write_text(
            events.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90))
    return {"cuda_ms_by_kind": kinds, "cuda_ms_by_phase": phases, "cuda_ms_total": sum(kinds.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--tables", type=Path, default=None, help="write the top-kernel table of each batch here")
    ap.add_argument("--tiny", action="store_true", help="tiny architecture (CPU smoke run; no CUDA kernels)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(args.tiny, device)
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                           "torch": torch.__version__, "batches": {}}
    graphs = {name: OpenVLAEngine(model, compile_prefill=on, max_batch=max(32, *args.batches))
              for name, on in (("prefill_eager", False), ("prefill_compiled", True))}
    for b in args.batches:
        inputs = model.prepare_inputs([img] * b, [INSTRUCTION] * b)
        row = profile_batch(model, inputs, b, args.tables)
        for name, eng in graphs.items():
            row[f"graph_ms_{name}"] = replay_ms(eng, inputs, model.action_dim, args.iters)
        out["batches"][str(b)] = row
        print(json.dumps({str(b): row}), flush=True)
    if device == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
