"""A weight-streaming GEMM for the decode steps' o and down projections: ``residual + x @ W.T`` for a few rows.

At batch 1 cuBLAS runs these two products (4096x4096 and 4096x11008) as split-K kernels plus a reduce kernel
each (docs/performance.md, "One decode layer"): two more kernels per layer, and ~2.5 and ~3.3 TB/s against the
~4 TB/s that its q/k/v and gate/up GEMVs reach. Here each program streams the full K extent of ``BLOCK_N``
weight rows once and multiplies them with the (padded) rows of x in one MMA tile, and the residual add is its
epilogue. Session 9 measured such kernels at 1.17x (o) and 1.14x (down) cuBLAS's time at their tuned block
sizes; the q/k/v and gate/up products stay with cuBLAS (0.99x and 1.07x there, and the norm and SwiGLU around
them fuse in inductor).

Written by hand because cuBLAS offers no choice of algorithm through torch and no library ships a GEMV with a
residual epilogue. Rounding follows the eager layer: the product is rounded to the weight's dtype before the
residual is added, as ``x + F.linear(a, W)`` does.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from crane_x7_vla.models.decode_attention import _interpreting, triton_available

MAX_ROWS = 16  # one MMA tile of rows; more go to cuBLAS
BLOCK_N, BLOCK_K, NUM_WARPS, NUM_STAGES = 32, 512, 4, 4  # session 9's best for both shapes on the H200


def usable(x: Tensor) -> bool:
    """Whether :func:`linear` runs for activations x [M, K]: Triton on CUDA (or its CPU interpreter), M <= 16."""
    return (x.is_cuda or _interpreting()) and triton_available() and x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS


def reference(x: Tensor, w: Tensor, residual: Tensor | None = None) -> Tensor:
    out = torch.nn.functional.linear(x, w)
    return out if residual is None else residual + out


@functools.cache
def _kernel(interpret: bool) -> Any:  # one per mode: triton.jit reads TRITON_INTERPRET when it wraps
    import triton
    import triton.language as tl

    @triton.jit
    def _gemv(x_ptr, w_ptr, res_ptr, out_ptr, M, N, K, stride_x, stride_res, stride_out,
              RESIDUAL: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = rm < M
        n_ok = rn < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            a = tl.load(x_ptr + rm[:, None] * stride_x + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            if IEEE:  # float32 weights (tests): full-precision products, not TF32
                acc += tl.dot(a, tl.trans(b), input_precision="ieee")
            else:
                acc += tl.dot(a, tl.trans(b))
        dt = out_ptr.dtype.element_ty
        out = acc.to(dt)
        ok = m_ok[:, None] & n_ok[None, :]
        if RESIDUAL:
            r = tl.load(res_ptr + rm[:, None] * stride_res + rn[None, :], mask=ok, other=0.0)
            out = (r.to(tl.float32) + out.to(tl.float32)).to(dt)
        tl.store(out_ptr + rm[:, None] * stride_out + rn[None, :], out, mask=ok)

    return _gemv


def linear(x: Tensor, w: Tensor, residual: Tensor | None = None, *, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
           num_warps: int = NUM_WARPS, num_stages: int = NUM_STAGES) -> Tensor:
    """``residual + x @ w.T`` (or ``x @ w.T``) for x [M <= 16, K], w [N, K] (row-major), residual [M, N]."""
    m, k = x.shape
    n = w.shape[0]
    if not usable(x) or w.shape != (n, k) or not w.is_contiguous() or x.stride(-1) != 1:
        raise ValueError(f"decode_linear.linear needs x [M <= {MAX_ROWS}, K] with unit stride in K and a contiguous "
                         f"w [N, K] (got x {tuple(x.shape)}, w {tuple(w.shape)}); check usable(x) first")
    if residual is not None and (residual.shape != (m, n) or residual.stride(-1) != 1):
        raise ValueError(f"residual must be [M, N] = {(m, n)} with unit stride in N")
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    res = out if residual is None else residual
    _kernel(_interpreting())[(-(-n // block_n),)](
        x, w, res, out, m, n, k, x.stride(0), res.stride(0), out.stride(0),
        RESIDUAL=residual is not None, IEEE=x.dtype == torch.float32, BLOCK_M=MAX_ROWS, BLOCK_N=block_n,
        BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return out
