"""The decode step's Triton kernels against what they replace, at openvla-7b's sizes, on one CUDA GPU.

    PYTHONPATH=src python bench/decode_kernels.py [--batches 1 8] [--keys 304] [--sweep]

Each variant runs for 32 layers (distinct weights and KV caches, so nothing stays in L2) inside one CUDA graph;
the time is the best of five rounds of replays, in microseconds per layer. Rows:

- ``attention``: RoPE + K/V cache write + attention over ``--keys`` keys. The torch side is
  ``decode_attention.reference`` compiled (the engine's RoPE, ``index_copy_`` and masked SDPA); the Triton side is ``decode_attention`` at its launch config.
- ``o`` / ``down``: ``residual + x @ W.T`` (cuBLAS + add against ``decode_linear.linear``).
- ``gate_up``: ``silu(x @ Wg.T) * (x @ Wu.T)`` (cuBLAS + compiled SwiGLU against ``decode_linear.swiglu``).
- ``qkv``: ``x @ W.T`` (cuBLAS against ``decode_linear.linear`` at its q/k/v block sizes).
- ``layer``: a whole decode layer. ``session11``: compiled residual + RMSNorm + cuBLAS q/k/v, the Triton
  attention, o, compiled RMSNorm, gate/up + SwiGLU and down; ``fused_norms``: five
  kernels (Triton q/k/v, the attention pair and GEMVs), no RMSNorm kernel (the engine's
  ``fused_decode_layers``); ``fused_norms_cublas_qkv``: the same with q/k/v through cuBLAS
  (``triton_qkv=False``). The layers' outputs differ only by rounding (``max_rel_diff_fused_vs_session11``).

``--sweep`` also times each Triton kernel over a grid of block sizes, stages and warps. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from crane_x7_vla.models import decode_attention as da
from crane_x7_vla.models import decode_linear as dl

LAYERS, HIDDEN, HEADS, HEAD_DIM, INTER = 32, 4096, 32, 128, 11008  # Llama-2-7B
DEVICE = "cuda"


def per_layer_us(fn: Callable[[], Any], reps: int = 30, rounds: int = 5) -> float:
    """Microseconds per layer of ``fn`` (which runs all layers), captured once and replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles) off the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(rounds):
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / reps / LAYERS)
    return best


def _step_inputs(b: int, keys: int, dt: torch.dtype) -> tuple[Any, ...]:
    """One decode step's per-layer KV caches and its shared write column, RoPE tables and key mask: (col, k_c,
    v_c, cos, sin, valid), the new token's key at column keys - 5."""
    dev = DEVICE
    col = torch.tensor([keys - 5], device=dev)
    k_c = [torch.randn(b, HEADS, keys, HEAD_DIM, device=dev, dtype=dt) for _ in range(LAYERS)]
    v_c = [torch.randn(b, HEADS, keys, HEAD_DIM, device=dev, dtype=dt) for _ in range(LAYERS)]
    inv = 1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2, device=dev).float() / HEAD_DIM)
    ang = torch.cat([inv, inv]) * float(keys - 5)
    cos, sin = (t.expand(b, -1).to(dt).contiguous() for t in (ang.cos(), ang.sin()))
    valid = torch.zeros(b, keys, dtype=torch.bool, device=dev)
    valid[:, : keys - 4] = True
    return col, k_c, v_c, cos, sin, valid


def attention_rows(b: int, keys: int, sweep: bool, dt: torch.dtype) -> dict[str, Any]:
    col, k_c, v_c, cos, sin, valid = _step_inputs(b, keys, dt)
    qkv = [torch.randn(b, 3 * HIDDEN, device=DEVICE, dtype=dt) for _ in range(LAYERS)]
    compiled = torch.compile(da.reference, dynamic=False, fullgraph=True)
    out: dict[str, Any] = {
        "torch_compiled_sdpa": per_layer_us(lambda: [compiled(qkv[i], cos, sin, k_c[i], v_c[i], col, valid, HEADS,
                                                              HEADS, HEAD_DIM) for i in range(LAYERS)]),
        "triton_config": da.launch_config(b, HEADS, keys),
        "triton": per_layer_us(lambda: [da.decode_attention(qkv[i], cos, sin, k_c[i], v_c[i], col, valid, HEADS,
                                                            HEADS, HEAD_DIM) for i in range(LAYERS)]),
    }
    if sweep:
        for splits, block_t, warps in itertools.product((4, 8, 16), (16, 32, 64), (1, 2, 4)):
            out[f"triton_s{splits}_bt{block_t}_w{warps}"] = per_layer_us(lambda s=splits, bt=block_t, w=warps: [
                da.decode_attention(qkv[i], cos, sin, k_c[i], v_c[i], col, valid, HEADS, HEADS, HEAD_DIM,
                                    splits=s, block_t=bt, num_warps=w) for i in range(LAYERS)])
    return out


def _swiglu_torch(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, w).chunk(2, dim=-1)
    return F.silu(gate) * up


def gemv_row(name: str, n: int, k: int, b: int, sweep: bool, dt: torch.dtype) -> dict[str, Any]:
    """One product of ``b`` rows by 32 layers' [n, k] weights: torch/cuBLAS against decode_linear."""
    ws = [torch.randn(n, k, device=DEVICE, dtype=dt) * k**-0.5 for _ in range(LAYERS)]
    x = torch.randn(b, k, device=DEVICE, dtype=dt)
    r = torch.randn(b, n // 2 if name == "gate_up" else n, device=DEVICE, dtype=dt)
    if name == "gate_up":
        swiglu_torch = torch.compile(_swiglu_torch, dynamic=False, fullgraph=True)
        row: dict[str, Any] = {"torch": per_layer_us(lambda: [swiglu_torch(x, w) for w in ws])}

        def run(**kw: int) -> list[torch.Tensor]:
            return [dl.swiglu(x, w, **kw) for w in ws]
    elif name == "qkv":
        row = {"torch": per_layer_us(lambda: [F.linear(x, w) for w in ws])}

        def run(**kw: int) -> list[torch.Tensor]:
            kw = {"block_k": dl.QKV_BLOCK_K, "num_stages": dl.QKV_STAGES, **kw}
            return [dl.linear(x, w, **kw) for w in ws]
    else:  # o, down: the residual add
        row = {"torch": per_layer_us(lambda: [r + F.linear(x, w) for w in ws])}

        def run(**kw: int) -> list[torch.Tensor]:
            return [dl.linear(x, w, r, **kw) for w in ws]
    row["triton"] = per_layer_us(run)
    row["weight_mb"] = n * k * x.element_size() / 1e6
    row["torch_tb_s"], row["triton_tb_s"] = row["weight_mb"] / row["torch"], row["weight_mb"] / row["triton"]
    if sweep:
        for bn, bk, st in itertools.product((16, 32, 64), (64, 128, 256, 512), (2, 3, 4)):
            try:
                row[f"triton_bn{bn}_bk{bk}_s{st}"] = per_layer_us(
                    lambda bn=bn, bk=bk, st=st: run(block_n=bn, block_k=bk, num_stages=st))
            except Exception as e:  # a config that does not fit the GPU is a result, not a failure
                row[f"triton_bn{bn}_bk{bk}_s{st}"] = type(e).__name__
    return row


def layer_rows(b: int, keys: int, dt: torch.dtype) -> dict[str, Any]:
    from crane_x7_vla.models.engine import _layer_in, _LayerWeights, _post_norm, fused_decode_layers

    dev = DEVICE

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, device=dev) * shape[-1] ** -0.5).to(dt)

    ws = [_LayerWeights(torch.rand(HIDDEN, device=dev).to(dt) + 0.5, rand(3 * HIDDEN, HIDDEN), rand(HIDDEN, HIDDEN),
                        torch.rand(HIDDEN, device=dev).to(dt) + 0.5, rand(2 * INTER, HIDDEN), rand(HIDDEN, INTER),
                        1e-5) for _ in range(LAYERS)]
    col, k_c, v_c, cos, sin, valid = _step_inputs(b, keys, dt)
    x0 = torch.randn(b, 1, HIDDEN, device=dev, dtype=dt)
    layer_in = torch.compile(_layer_in, dynamic=False, fullgraph=True)
    post_norm = torch.compile(_post_norm, dynamic=False, fullgraph=True)

    def session11() -> torch.Tensor:
        x, delta = x0, None
        for i, w in enumerate(ws):
            x, qkv = layer_in(x, delta, w)
            att = da.decode_attention(qkv[:, 0], cos, sin, k_c[i], v_c[i], col, valid, HEADS, HEADS, HEAD_DIM)
            x = dl.linear(att, w.o, x[:, 0])[:, None]
            delta = dl.linear(dl.swiglu(post_norm(x, w)[:, 0], w.gate_up), w.down)[:, None]
        return x + delta

    def fused(triton_qkv: bool = True) -> torch.Tensor:
        return fused_decode_layers(x0[:, 0], cos, sin, ws, (k_c, v_c), col, valid, HEADS, HEADS, HEAD_DIM,
                                   triton_qkv=triton_qkv)

    out: dict[str, Any] = {"session11": per_layer_us(session11), "fused_norms": per_layer_us(fused),
                           "fused_norms_cublas_qkv": per_layer_us(lambda: fused(False))}
    a, c = session11()[:, 0].float(), fused().float()
    out["max_rel_diff_fused_vs_session11"] = float((a - c).abs().max() / a.abs().max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="decode rows (robots) per step")
    ap.add_argument("--keys", type=int, default=304, help="KV cache length (openvla-7b's batch-1 bucket: 304)")
    ap.add_argument("--sweep", action="store_true", help="also time each kernel over a grid of launch configs")
    args = ap.parse_args()
    if not torch.cuda.is_available() or not da.triton_available():
        sys.exit("decode_kernels.py measures Triton kernels on a CUDA GPU; none is available here")
    dt = torch.bfloat16
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "unit": "us per layer", "keys": args.keys}
    for b in args.batches:
        shapes = {"o": (HIDDEN, HIDDEN), "down": (HIDDEN, INTER), "gate_up": (2 * INTER, HIDDEN),
                  "qkv": (3 * HIDDEN, HIDDEN)}
        result[f"b{b}"] = {"layer": layer_rows(b, args.keys, dt),
                           "attention": attention_rows(b, args.keys, args.sweep, dt),
                           **{name: gemv_row(name, n, k, b, args.sweep, dt) for name, (n, k) in shapes.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
