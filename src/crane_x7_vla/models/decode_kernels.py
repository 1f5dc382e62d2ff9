"""Weight-streaming GEMMs for the engine's decode steps, with the layer's RMSNorm, SwiGLU and residual fused in.

A decode step multiplies a few rows (one token per robot) by every weight of the LLM, so its time is the time to
read 13.2 GB of weights. cuBLAS's kernels for these skinny shapes read them at ~83 % of the H200's copy
bandwidth (docs/performance.md), and each RMSNorm, SiLU-times-up and residual add between them is a kernel of
its own that waits for the previous one. The kernels here stream the weight rows of a block of outputs once,
with the small activation matrix re-read from L2, and fuse what surrounds each GEMM in the decoder layer:

- ``norm_linear``: ``rms_norm(x) @ W.T`` (the q/k/v projection; the norm is recomputed per program, 8 KB per
  row from L2);
- ``norm_swiglu``: ``silu(h @ Wg.T) * (h @ Wu.T)`` with ``h = rms_norm(x)``, over the stacked gate/up weight;
- ``linear_residual``: ``r + x @ W.T`` (the o and down projections).

Written by hand (Triton) because no library offers these fusions for bf16 GEMV-shaped products; the rounding
follows transformers' eager Llama layer step by step (float32 norm, cast, scale in the weight's dtype; bf16
GEMM outputs; SiLU in float32 rounded; products and sums rounded), so only the GEMMs' summation order differs
from cuBLAS. The ``reference_*`` functions are the same math in torch: the CPU path, and the definition the
Triton kernels are tested against (on the GPU, and in Triton's interpreter on CPU when Triton is installed).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_ROWS = 16  # the kernels take at most this many rows (one MMA tile); more go to cuBLAS


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of torch; CPU builds lack it)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def usable(x: Tensor) -> bool:
    """Whether the Triton kernels run for activations ``x`` [M, K]: on CUDA (or Triton's CPU interpreter), a
    half-precision dtype and at most :data:`MAX_ROWS` rows."""
    on_device = x.is_cuda or _interpreting()
    return (on_device and triton_available() and x.dtype in (torch.bfloat16, torch.float16)
            and x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS)


# ---------------------------------------------------------------------------------------------- reference math
def _rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def reference_norm_linear(x: Tensor, norm_w: Tensor, eps: float, w: Tensor) -> Tensor:
    return F.linear(_rms_norm(x, norm_w, eps), w)


def reference_norm_swiglu(x: Tensor, norm_w: Tensor, eps: float, gate_up: Tensor) -> Tensor:
    gate, up = F.linear(_rms_norm(x, norm_w, eps), gate_up).chunk(2, dim=-1)
    return F.silu(gate) * up


def reference_linear_residual(x: Tensor, w: Tensor, residual: Tensor) -> Tensor:
    return residual + F.linear(x, w)


# ---------------------------------------------------------------------------------------------- Triton
@dataclass(frozen=True)
class Config:
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 4


def default_config(n: int, k: int) -> Config:
    """Block sizes for an [n, k] weight: enough programs to keep every SM streaming (>= ~2 per SM on 132 SMs)."""
    block_n = 16 if n <= 8192 else 32 if n <= 16384 else 64
    return Config(block_n=block_n, block_k=256 if k % 256 == 0 else 128)


_CONFIGS: dict[tuple[str, int, int], Config] = {}  # (kind, n, k) -> measured best, see bench/decode_kernels.py


def set_config(kind: str, n: int, k: int, config: Config) -> None:
    """Pin the block sizes of one kernel kind and weight shape (what ``bench/decode_kernels.py --tune`` found)."""
    _CONFIGS[(kind, n, k)] = config


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernel(interpret: bool) -> Any:  # one per mode: triton.jit reads TRITON_INTERPRET when it wraps
    import triton
    import triton.language as tl

    @triton.jit
    def skinny_mm(x_ptr, w_ptr, out_ptr, res_ptr, norm_ptr, M, N, K, stride_x, stride_out, stride_res, eps,
                  NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # out[m, n] = epilogue(sum_k prologue(x)[m, k] * w[n, k]) for the BLOCK_N outputs of this program; the
        # weight is [N (x2 for SwiGLU: gate rows, then up rows), K] row-major, read once.
        pid = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = rm < M
        n_ok = rn < N
        dt = out_ptr.dtype.element_ty
        inv = tl.zeros([BLOCK_M], dtype=tl.float32)
        if NORM:  # RMS over the whole row, float32
            sq = tl.zeros([BLOCK_M], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                rk = k0 + tl.arange(0, BLOCK_K)
                xs = tl.load(x_ptr + rm[:, None] * stride_x + rk[None, :], mask=m_ok[:, None] & (rk[None, :] < K),
                             other=0.0).to(tl.float32)
                sq += tl.sum(xs * xs, axis=1)
            inv = 1.0 / tl.sqrt(sq / K + eps)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            a = tl.load(x_ptr + rm[:, None] * stride_x + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            if NORM:  # (x * inv).to(dtype), then weight * that, rounded: transformers' LlamaRMSNorm
                g = tl.load(norm_ptr + rk, mask=k_ok, other=0.0)
                a = (a.to(tl.float32) * inv[:, None]).to(dt)
                a = (g.to(tl.float32)[None, :] * a.to(tl.float32)).to(dt)
            if UPCAST:  # Triton's CPU interpreter multiplies bf16 wrongly; float32 products of bf16 are exact
                a = a.to(tl.float32)
            b = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            if UPCAST:
                b = b.to(tl.float32)
            acc += tl.dot(a, tl.trans(b))
            if SWIGLU:
                bu = tl.load(w_ptr + (rn + N)[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                             other=0.0)
                if UPCAST:
                    bu = bu.to(tl.float32)
                acc_up += tl.dot(a, tl.trans(bu))
        y = acc.to(dt)
        if SWIGLU:  # F.silu(gate) (float32 inside, rounded) * up, rounded
            gf = y.to(tl.float32)
            s = (gf / (1.0 + tl.exp(-gf))).to(dt)
            y = (s.to(tl.float32) * acc_up.to(dt).to(tl.float32)).to(dt)
        mask = m_ok[:, None] & n_ok[None, :]
        if RESIDUAL:
            r = tl.load(res_ptr + rm[:, None] * stride_res + rn[None, :], mask=mask, other=0.0)
            y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
        tl.store(out_ptr + rm[:, None] * stride_out + rn[None, :], y, mask=mask)

    return skinny_mm


def _launch(kind: str, x: Tensor, w: Tensor, *, norm_w: Tensor | None = None, eps: float = 0.0,
            residual: Tensor | None = None, config: Config | None = None) -> Tensor:
    import triton

    m, k = x.shape
    n = w.shape[0] // 2 if kind == "norm_swiglu" else w.shape[0]
    if w.shape[1] != k or not w.is_contiguous():
        raise ValueError(f"decode kernel {kind}: need x [M, K] and a contiguous weight [N, K], got x "
                         f"{tuple(x.shape)}, weight {tuple(w.shape)} with strides {w.stride()}")
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or _CONFIGS.get((kind, n, k)) or default_config(n, k)
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    res = residual if residual is not None else out
    nw = norm_w if norm_w is not None else w
    grid = (triton.cdiv(n, cfg.block_n),)
    _kernel(_interpreting())[grid](x, w, out, res, nw, m, n, k, x.stride(0), out.stride(0), res.stride(0), eps,
                    NORM=norm_w is not None, SWIGLU=kind == "norm_swiglu", RESIDUAL=residual is not None,
                    UPCAST=not x.is_cuda, BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


# ---------------------------------------------------------------------------------------------- public ops
def norm_linear(x: Tensor, norm_w: Tensor, eps: float, w: Tensor, config: Config | None = None) -> Tensor:
    """``F.linear(rms_norm(x), w)`` for x [M, K]."""
    if not usable(x):
        return reference_norm_linear(x, norm_w, eps, w)
    return _launch("norm_linear", x, w, norm_w=norm_w, eps=eps, config=config)


def norm_swiglu(x: Tensor, norm_w: Tensor, eps: float, gate_up: Tensor, config: Config | None = None) -> Tensor:
    """``silu(gate) * up`` of ``F.linear(rms_norm(x), gate_up)`` for x [M, K], gate_up [2I, K] (gate rows first)."""
    if not usable(x):
        return reference_norm_swiglu(x, norm_w, eps, gate_up)
    return _launch("norm_swiglu", x, gate_up, norm_w=norm_w, eps=eps, config=config)


def linear_residual(x: Tensor, w: Tensor, residual: Tensor, config: Config | None = None) -> Tensor:
    """``residual + F.linear(x, w)`` for x [M, K], residual [M, N]."""
    if not usable(x):
        return reference_linear_residual(x, w, residual)
    if residual.stride(1) != 1:
        residual = residual.contiguous()
    return _launch("linear_residual", x, w, residual=residual, config=config)


__all__ = ["MAX_ROWS", "Config", "default_config", "linear_residual", "norm_linear", "norm_swiglu",
           "reference_linear_residual", "reference_norm_linear", "reference_norm_swiglu", "set_config",
           "triton_available", "usable"]
