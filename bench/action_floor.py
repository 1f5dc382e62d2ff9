"""How far one OpenVLA-7B action is from what the GPU allows, measured in one run on the same GPU.

    PYTHONPATH=src:bench python bench/action_floor.py [--iters 30] [--tiny]

1. The GPU's rates, measured: streaming-read bandwidth (the best of a reduction and cuBLAS's GEMV over 2 GiB of
   bf16, far beyond L2) and dense bf16 GEMM throughput (the best of 8192^3 and the prefill's own shapes).
2. The floor of one batch-1 action at those rates (``crane_x7_vla.models.cost``): every pass at the better of
   its two bounds, nothing else. Also at the datasheet's 4.8 TB/s and 989 TFLOP/s.
3. Where the engine's end-to-end batch-1 predict goes (undrafted, the bench's headline path), phase by phase,
   each timed with a device sync after it: preprocessing (``prepare_inputs``), the model (graph replay), and
   the tokens' way back (``decode_actions``); plus the host time of preprocessing without the sync.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from crane_x7_vla.models.cost import action_cost
from crane_x7_vla.models.engine import OpenVLAEngine
from openvla_latency import (  # type: ignore[import-not-found]
    INSTRUCTION,
    _interleaved,
    _pct,
    _sync,
    _time,
    build_model,
)

DATASHEET_H200 = {"read_tb_s": 4.8, "gemm_tflop_s": 989.0}


def _best_s(fn: Any, iters: int) -> float:
    fn()
    return min(_time(fn, iters))


def read_bandwidth_tb_s(device: str, gib: float, iters: int) -> dict[str, float]:
    """Streaming-read TB/s of a sum and of a GEMV over ``gib`` GiB of bf16 (the best of ``iters``)."""
    n = int(gib * 2**30 / 2)
    x = torch.empty(n // 4096, 4096, device=device, dtype=torch.bfloat16).normal_()
    v = torch.randn(4096, 1, device=device, dtype=torch.bfloat16)
    nbytes = x.numel() * 2
    return {"sum": nbytes / _best_s(lambda: x.sum(dtype=torch.float32), iters) / 1e12,
            "gemv": nbytes / _best_s(lambda: x @ v, iters) / 1e12}


def gemm_tflop_s(device: str, shapes: dict[str, tuple[int, int, int]], iters: int) -> dict[str, float]:
    """TFLOP/s of bf16 ``a @ b`` for each (m, k, n) (the best of ``iters``)."""
    out = {}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
        out[name] = 2.0 * m * k * n / _best_s(lambda a=a, b=b: a @ b, iters) / 1e12
    return out


def predict_phases(model: Any, engine: OpenVLAEngine, image: np.ndarray, iters: int) -> dict[str, float]:
    """p50 ms of each phase of an undrafted batch-1 ``engine.predict`` (each timed with a sync after it), and
    ``predict`` with the prompt ids on the device (laid out on the device every request, as before session 14)
    against the engine's own inputs (ids on the host, laid out once per prompt), timed in alternating rounds."""
    d = model.action_dim
    inputs = engine.prepare_inputs([image], [INSTRUCTION])
    tokens = engine.generate(inputs, d)  # captures
    ab = _interleaved({
        "predict_ms": lambda: engine.predict([image], [INSTRUCTION]),
        "predict_device_ids_ms": lambda: engine.predict_from_inputs(model.prepare_inputs([image], [INSTRUCTION])),
    }, iters)
    host = []
    for _ in range(iters):
        _sync()
        t0 = time.perf_counter()
        engine.prepare_inputs([image], [INSTRUCTION])
        host.append(time.perf_counter() - t0)
    return {
        **{name: _pct(ts, 50) for name, ts in ab.items()},
        "prepare_inputs_ms": _pct(_time(lambda: engine.prepare_inputs([image], [INSTRUCTION]), iters), 50),
        "prepare_inputs_host_ms": _pct(host, 50),
        "generate_ms": _pct(_time(lambda: engine.generate(inputs, d), iters), 50),
        "decode_actions_ms": _pct(_time(lambda: model.decode_actions(tokens), iters), 50),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--read-gib", type=float, default=2.0)
    ap.add_argument("--tiny", action="store_true", help="the tiny architecture (CPU smoke run)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(args.tiny, device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    prompt = int(model.prepare_inputs([image], [INSTRUCTION]).input_ids.shape[1])
    cost = action_cost(model.config, prompt, model.action_dim)
    h = model.config.llm_hidden_size
    inter = int(model.config.text_config["intermediate_size"])
    rows = prompt + model.config.vision_towers[0].num_patches
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                              "arch": "tiny" if args.tiny else "openvla-7b", "torch": torch.__version__,
                              "prompt_tokens": prompt, "prefill_rows": rows, "cost": vars(cost)}
    result["read_tb_s"] = read_bandwidth_tb_s(device, args.read_gib if not args.tiny else 0.0625, args.iters)
    shapes = {"square_8192": (8192, 8192, 8192) if not args.tiny else (256, 256, 256),
              "prefill_qkv": (rows, h, 3 * h), "prefill_gate_up": (rows, h, 2 * inter),
              "prefill_down": (rows, inter, h), "prefill_o": (rows, h, h)}
    result["gemm_tflop_s"] = gemm_tflop_s(device, shapes, args.iters)
    read, gemm = max(result["read_tb_s"].values()), max(result["gemm_tflop_s"].values())
    result["floor_ms_measured_rates"] = cost.floor_ms(read, gemm)
    result["floor_phases_ms_measured_rates"] = cost.phases_ms(read, gemm)
    result["floor_ms_datasheet"] = cost.floor_ms(**DATASHEET_H200)

    engine = OpenVLAEngine(model, max_batch=1, draft_previous=False)
    result["engine_triton_decode"] = engine.triton_attention
    result["phases"] = predict_phases(model, engine, image, args.iters)
    result["predict_over_floor"] = result["phases"]["predict_ms"] / result["floor_ms_measured_rates"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
