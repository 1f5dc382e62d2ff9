"""Weight-streaming GEMMs for a decode step's few rows: the q/k/v projection, the o and down projections
(``residual + x @ W.T``) and the gate/up projection with its SwiGLU (``silu(x @ Wg.T) * (x @ Wu.T)``).

At batch 1 cuBLAS runs the o and down products (4096x4096 and 4096x11008) as split-K kernels plus a reduce
kernel each (docs/performance.md, "One decode layer"), at ~2.5 and ~3.3 TB/s. Here each program streams the
full K extent of ``BLOCK_N`` weight rows once and multiplies them with the (padded) rows of x in one MMA tile;
the residual add, or SwiGLU, is its epilogue. Measured on the H200 in a graph of 32 layers (sessions 11, 12): o
with its residual 11.1 us against 14.7 us for cuBLAS + add, down 24.3 against 29.6 us, q/k/v (its own block
sizes) 25.4 against 28.2 us.

An RMSNorm between two GEMVs gets no kernel of its own (session 12): RMSNorm(x) . W = (x * g) . W / rms(x). The
GEMV that produces x writes x * g and each block's sum of squares of x from its epilogue
(:func:`linear_norm_out`), and the GEMV after the norm divides its products by the rms in its epilogue
(``rms_in``). Forming x * g inside the consuming GEMV's K loop instead was 1.8x slower: a tile changed before
the MMA leaves Triton's pipelined asynchronous copy.

Written by hand because cuBLAS offers no choice of algorithm through torch and no library ships a GEMV with
these epilogues. Rounding follows the eager layer: products rounded to the weight's dtype before the residual
add, gate and up rounded before SiLU, SiLU rounded before the product.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from crane_x7_vla.models.decode_attention import interpreting, next_pow2, triton_available

MAX_ROWS = 16  # one MMA tile of rows; more go to cuBLAS
BLOCK_N, BLOCK_K, NUM_WARPS, NUM_STAGES = 32, 512, 4, 4  # best for o and down on the H200 (sessions 9, 11)
SWIGLU_BLOCK_N, SWIGLU_BLOCK_K, SWIGLU_STAGES = 32, 128, 3  # best for gate/up with SwiGLU (session 11 sweep)
QKV_BLOCK_K, QKV_STAGES = 128, 4  # best for q/k/v (session 11 sweep: 25.0 us against cuBLAS's 27.1)


def usable(x: Tensor) -> bool:
    """Whether :func:`linear` runs for activations x [M, K]: Triton on CUDA (or its CPU interpreter), M <= 16."""
    return (x.is_cuda or interpreting()) and triton_available() and x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS


SMEM_MARGIN = 16 * 1024  # shared memory Triton may use beside the pipelined tiles (layout conversions)


def fit_pipeline(block_n: int, block_k: int, stages: int, swiglu: bool, elem_size: int,
                 smem_limit: int) -> tuple[int, int]:
    """(block_k, stages) that fit a device's shared memory per block: Triton keeps ``stages - 1`` copies of the
    x tile and the weight tile(s). The defaults were tuned on the H200 (227 KB); consumer GPUs (~100 KB) get
    fewer stages (down to 2), then shorter K blocks (down to 16, the smallest MMA K)."""
    def need(bk: int, st: int) -> int:
        return max(1, st - 1) * (MAX_ROWS + block_n * (2 if swiglu else 1)) * bk * elem_size + SMEM_MARGIN

    while need(block_k, stages) > smem_limit and stages > 2:
        stages -= 1
    while need(block_k, stages) > smem_limit and block_k > 16:
        block_k //= 2
    return block_k, stages


@functools.cache
def _smem_limit(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter: no limit
        return 1 << 30
    from triton.runtime import driver

    return int(driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"])


def _rms(x: Tensor, norm: tuple[Tensor, float] | None) -> Tensor:
    if norm is None:
        return x
    from crane_x7_vla.models.engine import _rms_norm  # here: the engine imports this module

    return _rms_norm(x, norm[0], norm[1])


def reference(x: Tensor, w: Tensor, residual: Tensor | None = None, norm: tuple[Tensor, float] | None = None) -> Tensor:
    """``residual + RMSNorm(x) @ w.T`` in torch (``norm=(weight, eps)``; None: x itself)."""
    out = torch.nn.functional.linear(_rms(x, norm), w)
    return out if residual is None else residual + out


@functools.cache
def _kernel(interpret: bool) -> Any:  # one per mode: triton.jit reads TRITON_INTERPRET when it wraps
    import triton
    import triton.language as tl

    @triton.jit
    def _gemv(x_ptr, w_ptr, res_ptr, out_ptr, sq_in_ptr, g_ptr, xg_ptr, sq_out_ptr, M, N, K, P, stride_x,
              stride_res, stride_out, stride_sq_in, eps, RESIDUAL: tl.constexpr, SWIGLU: tl.constexpr,
              RMS_IN: tl.constexpr, NORM_OUT: tl.constexpr, IEEE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
        # out[m, n] = x[m] . w[n] (+ residual), or with SWIGLU silu(x[m] . w[n]) * (x[m] . w[N + n]): the weight
        # is gate rows then up rows, and each program reads both blocks of its outputs once.
        # RMS_IN: x is RMSNorm's input times its weight (see NORM_OUT) and the products are scaled by
        # 1 / rms = rsqrt(sum of the P partial sums of squares / K + eps) before rounding.
        # NORM_OUT: also write the next RMSNorm's input: out * g (rounded) and this block's sum of squares of out.
        pid = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = rm < M
        n_ok = rn < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            a = tl.load(x_ptr + rm[:, None] * stride_x + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            wmask = n_ok[:, None] & k_ok[None, :]
            b = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=wmask, other=0.0)
            if IEEE:  # float32 weights (tests): full-precision products, not TF32
                acc += tl.dot(a, tl.trans(b), input_precision="ieee")
            else:
                acc += tl.dot(a, tl.trans(b))
            if SWIGLU:
                u = tl.load(w_ptr + (N + rn[:, None]) * K + rk[None, :], mask=wmask, other=0.0)
                if IEEE:
                    acc_up += tl.dot(a, tl.trans(u), input_precision="ieee")
                else:
                    acc_up += tl.dot(a, tl.trans(u))
        if RMS_IN:
            rp = tl.arange(0, BLOCK_P)
            parts = tl.load(sq_in_ptr + rm[:, None] * stride_sq_in + rp[None, :], mask=m_ok[:, None] & (rp < P)[None, :],
                            other=0.0)
            r = 1.0 / tl.sqrt(tl.sum(parts, axis=1) / K + eps)
            acc = acc * r[:, None]
            acc_up = acc_up * r[:, None]
        dt = out_ptr.dtype.element_ty
        out = acc.to(dt)
        if SWIGLU:  # eager rounding: gate and up in the weight's dtype, silu(gate) rounded, the product rounded
            g = out.to(tl.float32)
            out = ((g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32) * acc_up.to(dt).to(tl.float32)).to(dt)
        ok = m_ok[:, None] & n_ok[None, :]
        if RESIDUAL:
            res = tl.load(res_ptr + rm[:, None] * stride_res + rn[None, :], mask=ok, other=0.0)
            out = (res.to(tl.float32) + out.to(tl.float32)).to(dt)
        tl.store(out_ptr + rm[:, None] * stride_out + rn[None, :], out, mask=ok)
        if NORM_OUT:
            of = tl.where(ok, out.to(tl.float32), 0.0)
            gn = tl.load(g_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
            tl.store(xg_ptr + rm[:, None] * stride_out + rn[None, :], (of * gn[None, :]).to(dt), mask=ok)
            tl.store(sq_out_ptr + rm * tl.num_programs(0) + pid, tl.sum(of * of, axis=1), mask=m_ok)

    return _gemv


def _launch(x: Tensor, w: Tensor, n: int, residual: Tensor | None, swiglu: bool, rms_in: tuple[Tensor, float] | None,
            norm_out: Tensor | None, block_n: int, block_k: int, num_warps: int,
            num_stages: int) -> tuple[Tensor, Tensor, Tensor]:
    m, k = x.shape
    if not usable(x) or w.shape != ((2 if swiglu else 1) * n, k) or not w.is_contiguous() or x.stride(-1) != 1:
        raise ValueError(f"decode_linear needs x [M <= {MAX_ROWS}, K] with unit stride in K and a contiguous "
                         f"w [N, K] (got x {tuple(x.shape)}, w {tuple(w.shape)}); check usable(x) first")
    if residual is not None and (residual.shape != (m, n) or residual.stride(-1) != 1):
        raise ValueError(f"residual must be [M, N] = {(m, n)} with unit stride in N")
    if rms_in is not None and (rms_in[0].dim() != 2 or rms_in[0].shape[0] != m or rms_in[0].stride(-1) != 1
                               or rms_in[0].dtype != torch.float32):
        raise ValueError(f"rms_in's sums of squares must be float32 [M, P] = [{m}, P] with unit stride in P "
                         f"(got {tuple(rms_in[0].shape)}, {rms_in[0].dtype})")
    if norm_out is not None and (norm_out.shape != (n,) or norm_out.stride(0) != 1):
        raise ValueError(f"norm_out must be the next RMSNorm's contiguous weight [N] = [{n}]")
    block_k, num_stages = fit_pipeline(block_n, block_k, num_stages, swiglu, x.element_size(), _smem_limit(x.device))
    grid = -(-n // block_n)
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    xg = torch.empty_like(out) if norm_out is not None else out
    sq_out = torch.empty(m, grid, device=x.device, dtype=torch.float32) if norm_out is not None else out
    res = out if residual is None else residual
    sq_in, eps = (out, 0.0) if rms_in is None else rms_in
    _kernel(interpreting())[(grid,)](
        x, w, res, out, sq_in, out if norm_out is None else norm_out, xg, sq_out, m, n, k,
        1 if rms_in is None else sq_in.shape[1], x.stride(0), res.stride(0), out.stride(0), sq_in.stride(0), eps,
        RESIDUAL=residual is not None, SWIGLU=swiglu, RMS_IN=rms_in is not None, NORM_OUT=norm_out is not None,
        IEEE=x.dtype == torch.float32, BLOCK_M=MAX_ROWS, BLOCK_N=block_n, BLOCK_K=block_k,
        BLOCK_P=next_pow2(1 if rms_in is None else sq_in.shape[1]), num_warps=num_warps, num_stages=num_stages)
    return out, xg, sq_out


def linear(x: Tensor, w: Tensor, residual: Tensor | None = None, *, rms_in: tuple[Tensor, float] | None = None,
           block_n: int = BLOCK_N, block_k: int = BLOCK_K, num_warps: int = NUM_WARPS,
           num_stages: int = NUM_STAGES) -> Tensor:
    """``residual + x @ w.T`` (or ``x @ w.T``) for x [M <= 16, K], w [N, K] (row-major), residual [M, N].
    ``rms_in=(sq, eps)``: x is an RMSNorm's input times its weight and sq [M, P] float32 partial sums of squares
    of that input (from :func:`linear_norm_out`): the products are divided by its rms, so the result is the
    RMSNorm's output times w."""
    return _launch(x, w, w.shape[0], residual, False, rms_in, None, block_n, block_k, num_warps, num_stages)[0]


def linear_norm_out(x: Tensor, w: Tensor, residual: Tensor | None, norm_weight: Tensor, *,
                    block_n: int = BLOCK_N, block_k: int = BLOCK_K, num_warps: int = NUM_WARPS,
                    num_stages: int = NUM_STAGES) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`linear`'s ``out`` with, from the same epilogue, what the next RMSNorm (weight [N]) needs:
    ``out * norm_weight`` rounded to out's dtype, and per-block sums of squares of ``out`` [M, P] float32.
    Passed on as ``x`` and ``rms_in`` to the next GEMM (or :func:`decode_attention.decode_attention`), they
    make that RMSNorm part of it, with no kernel or extra pass of its own."""
    return _launch(x, w, w.shape[0], residual, False, None, norm_weight, block_n, block_k, num_warps,
                   num_stages)


def swiglu(x: Tensor, gate_up: Tensor, *, rms_in: tuple[Tensor, float] | None = None,
           block_n: int = SWIGLU_BLOCK_N, block_k: int = SWIGLU_BLOCK_K, num_warps: int = NUM_WARPS,
           num_stages: int = SWIGLU_STAGES) -> Tensor:
    """``silu(x @ Wg.T) * (x @ Wu.T)`` for x [M <= 16, K] and the stacked gate_up = [Wg; Wu] [2N, K]; ``rms_in``
    as in :func:`linear`."""
    return _launch(x, gate_up, gate_up.shape[0] // 2, None, True, rms_in, None, block_n, block_k, num_warps,
                   num_stages)[0]


def norm_in(x: Tensor, norm_weight: Tensor) -> tuple[Tensor, Tensor]:
    """What :func:`linear_norm_out` returns besides out, for an x that no GEMV produced (a step's embeddings):
    (x * norm_weight rounded to x's dtype, sums of squares [M, 1] float32)."""
    xf = x.float()
    return (xf * norm_weight.float()).to(x.dtype), xf.pow(2).sum(-1, keepdim=True)


def reference_swiglu(x: Tensor, gate_up: Tensor, norm: tuple[Tensor, float] | None = None) -> Tensor:
    gate, up = torch.nn.functional.linear(_rms(x, norm), gate_up).chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
