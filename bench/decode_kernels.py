"""The decode step's weight-streaming GEMMs: fused Triton kernels against cuBLAS + eager ops (CUDA only).

    PYTHONPATH=src python bench/decode_kernels.py [--rows 1 8] [--tune small|full] [--layers 32]

For the openvla-7b LLM shapes (Llama-2-7B: hidden 4096, MLP 11008), per kernel kind and row count: the time of
one call (CUDA graph of many calls over distinct weight copies, so every call streams its weight from HBM, not
L2), the weight bandwidth that implies, and the difference from the torch reference (max |diff| and the fraction
of bit-identical outputs). ``--tune`` sweeps block sizes and reports the best per kind. Then the four GEMMs of
``--layers`` whole decoder layers (one decode step's weight traffic) both ways. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from crane_x7_vla.models import decode_kernels as dk

HIDDEN, INTER, EPS = 4096, 11008, 1e-5
SHAPES = {  # name -> (kernel kind, weight rows, K)
    "qkv": ("norm_linear", 3 * HIDDEN, HIDDEN),
    "o": ("linear_residual", HIDDEN, HIDDEN),
    "gate_up": ("norm_swiglu", 2 * INTER, HIDDEN),
    "down": ("linear_residual", HIDDEN, INTER),
}


def graph_ms(fn: Callable[[int], Any], calls: int, replays: int = 20) -> float:
    """Mean time of one ``fn(i)`` inside a CUDA graph of ``calls`` calls."""
    for i in range(calls):  # warm-up (Triton compiles, cuBLAS picks)
        fn(i)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays / calls


def _ops(kind: str, config: dk.Config | None) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    if kind == "norm_linear":
        return (lambda x, w, nw, r: dk.norm_linear(x, nw, EPS, w, config),
                lambda x, w, nw, r: dk.reference_norm_linear(x, nw, EPS, w))
    if kind == "norm_swiglu":
        return (lambda x, w, nw, r: dk.norm_swiglu(x, nw, EPS, w, config),
                lambda x, w, nw, r: dk.reference_norm_swiglu(x, nw, EPS, w))
    return (lambda x, w, nw, r: dk.linear_residual(x, w, r, config),
            lambda x, w, nw, r: dk.reference_linear_residual(x, w, r))


def bench_kind(name: str, rows: int, copies: int, configs: list[dk.Config | None]) -> dict[str, Any]:
    kind, n, k = SHAPES[name]
    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    ws = [torch.randn(n, k, device=dev, dtype=dt, generator=gen) / k**0.5 for _ in range(copies)]
    x = torch.randn(rows, k, device=dev, dtype=dt, generator=gen)
    nw = 1 + 0.1 * torch.randn(k, device=dev, dtype=dt, generator=gen)
    out_n = n // 2 if kind == "norm_swiglu" else n
    r = torch.randn(rows, out_n, device=dev, dtype=dt, generator=gen)
    gb = n * k * 2 / 1e9
    _, ref = _ops(kind, None)
    ref_ms = graph_ms(lambda i: ref(x, ws[i % copies], nw, r), copies * 2)
    want = ref(x, ws[0], nw, r).float()
    res: dict[str, Any] = {"weight_gb": gb, "cublas_ms": ref_ms, "cublas_tb_s": gb / ref_ms}
    best: tuple[float, dk.Config | None] | None = None
    for cfg in configs:
        fast, _ = _ops(kind, cfg)
        try:
            ms = graph_ms(lambda i, fast=fast: fast(x, ws[i % copies], nw, r), copies * 2)
        except Exception as exc:  # a config that does not compile (shared memory) is skipped
            res.setdefault("failed", []).append(f"{cfg}: {type(exc).__name__}")
            continue
        if best is None or ms < best[0]:
            best = (ms, cfg)
    assert best is not None
    fast, _ = _ops(kind, best[1])
    got = fast(x, ws[0], nw, r).float()
    res.update({"triton_ms": best[0], "triton_tb_s": gb / best[0], "config": str(best[1] or "default"),
                "speedup": ref_ms / best[0], "max_abs_diff": float((got - want).abs().max()),
                "max_abs_ref": float(want.abs().max()), "identical_fraction": float((got == want).float().mean())})
    return res


def bench_layers(rows: int, layers: int) -> dict[str, Any]:
    """The four GEMMs (+ fused ops) of ``layers`` decoder layers, as one decode step reads them."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(1)

    def w(n: int, k: int) -> Tensor:
        return torch.randn(n, k, device=dev, dtype=dt, generator=gen) / k**0.5

    lw = [(w(3 * HIDDEN, HIDDEN), w(HIDDEN, HIDDEN), w(2 * INTER, HIDDEN), w(HIDDEN, INTER)) for _ in range(layers)]
    nw = torch.ones(HIDDEN, device=dev, dtype=dt)
    x = torch.randn(rows, HIDDEN, device=dev, dtype=dt, generator=gen)

    def step(fused: bool) -> Tensor:
        h = x
        for qkv, o, gu, down in lw:
            if fused:
                a = dk.norm_linear(h, nw, EPS, qkv)[:, :HIDDEN]
                h = dk.linear_residual(a.contiguous(), o, h)
                h = dk.linear_residual(dk.norm_swiglu(h, nw, EPS, gu), down, h)
            else:
                a = dk.reference_norm_linear(h, nw, EPS, qkv)[:, :HIDDEN]
                h = dk.reference_linear_residual(a, o, h)
                h = dk.reference_linear_residual(dk.reference_norm_swiglu(h, nw, EPS, gu), down, h)
        return h

    gb = sum(t.numel() for ws in lw for t in ws) * 2 / 1e9
    cub = graph_ms(lambda i: step(False), 1)
    tri = graph_ms(lambda i: step(True), 1)
    return {"weight_gb": gb, "cublas_eager_ms": cub, "triton_ms": tri, "cublas_tb_s": gb / cub,
            "triton_tb_s": gb / tri, "speedup": cub / tri}


def copy_tb_s() -> float:
    """Device-to-device copy bandwidth (read + write) of 2 GB, for reference."""
    a = torch.empty(2 * 1024**3 // 2, device="cuda", dtype=torch.bfloat16)
    b = torch.empty_like(a)
    ms = graph_ms(lambda i: b.copy_(a), 4)
    return 2 * a.numel() * 2 / 1e9 / ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tune", choices=("none", "small", "full"), default="none",
                    help="sweep block sizes: small = block_n x block_k at 4 warps, 4 stages; full adds warps, stages")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--copies", type=int, default=6, help="distinct weight copies per kind (defeats L2)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/decode_kernels.py needs a CUDA device")
    configs: list[dk.Config | None] = [None]
    if args.tune != "none":
        warps, stages = ((4, 8), (3, 5)) if args.tune == "full" else ((4,), (4,))
        configs += [dk.Config(bn, bk, nw, ns) for bn, bk, nw, ns in
                    itertools.product((16, 32, 64), (128, 256, 512), warps, stages)]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "copy_tb_s": copy_tb_s(), "kinds": {}, "layers": {}}
    import triton

    result["triton"] = triton.__version__
    for rows in args.rows:
        result["kinds"][str(rows)] = {name: bench_kind(name, rows, args.copies, configs) for name in SHAPES}
        result["layers"][str(rows)] = bench_layers(rows, args.layers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
