"""One decode step's attention in two Triton kernels: RoPE, the K/V cache write and split-KV attention.

In a batch-1 decode layer the time between the q/k/v and o projections went to four latency-bound kernels
(docs/performance.md, "One decode layer"): RoPE (inductor), the two cache writes, the boolean mask's
conversion, and cuDNN's attention with one CTA per head, so 32 of the H200's 132 SMs, ~14 us with the gaps
between them. Here:

- ``_partial``: one program per (row, head, key chunk). It rotates the row's new q and k (RoPE, float32,
  rounded to the cache's dtype as inductor's fused RoPE does), the chunk that holds the write column writes the
  new k and v into the cache, and every program attends its q over its chunk of keys (the new key taken from
  registers, so no program waits for another's write). It leaves a partial softmax: max, sum and the weighted
  sum of values.
- ``_combine``: one program per (row, head) merges the chunks' partials into the o-projection's input.

Written by hand because no library has this decode step for a static cache with a key mask. FlashAttention's
``flash_attn_with_kvcache`` does RoPE, the cache append and split-KV in one kernel, but it is a separate CUDA
build, and it takes per-row cache lengths, not a per-key mask (the engine's prompts are padded after their
ends, so a row's valid keys are not one prefix). The math is the engine's
``_rope`` + ``index_copy_`` + SDPA; :func:`reference` is that math in torch, which the kernels are tested
against (in Triton's CPU interpreter in float32, and on the GPU in bf16).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
from torch import Tensor

MAX_SPLITS = 16
MIN_CHUNK = 16  # keys per chunk at least: below that, the combine costs more than the chunk saves
MAX_PROGRAMS = 2048  # (row, head, chunk) programs at most: beyond, fewer and longer chunks win (batch 8)


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (CUDA builds of torch ship it; on CPU it comes with the dev extra)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1; the CPU tests set it)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1): Triton's block shapes, the engine's batch buckets."""
    return 1 << max(0, n - 1).bit_length()


def usable(qkv: Tensor) -> bool:
    """Whether the kernels run for these activations: on CUDA (or in Triton's CPU interpreter) with Triton."""
    return (qkv.is_cuda or interpreting()) and triton_available()


def launch_config(batch: int, heads: int, keys: int) -> tuple[int, int, int]:
    """(splits, block_t, num_warps): as many key chunks per (row, head) as keep at least :data:`MIN_CHUNK` keys
    each and :data:`MAX_PROGRAMS` programs in all (at most :data:`MAX_SPLITS`), in blocks of 16 keys with one
    warp per program. Measured on the H200 at openvla-7b's sizes (docs/performance.md): one decode token per row
    leaves the attention latency-bound, so many short programs win; 32-key blocks or more warps were slower."""
    splits = 1
    while (splits < MAX_SPLITS and math.ceil(keys / (2 * splits)) >= MIN_CHUNK
           and batch * heads * 2 * splits <= MAX_PROGRAMS):
        splits *= 2
    return splits, 16, 1


def write_rows(cache: Tensor, col: Tensor, new: Tensor) -> None:
    """cache [B, nkv, T, hd][b, :, col[b]] = new [B, nkv, hd], one ``index_copy_`` through a flat row index;
    ``col`` is [1] (one column for every row) or [B]."""
    b, nkv, t, hd = cache.shape
    rows = torch.arange(b * nkv, device=cache.device).view(b, nkv)
    cache.view(-1, hd).index_copy_(0, (rows * t + col.view(-1, 1)).flatten(), new.reshape(-1, hd))


def reference(qkv: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, col: Tensor,
              key_valid: Tensor, nh: int, nkv: int, hd: int) -> Tensor:
    """The engine's eager math: qkv [B, (nh+2nkv)hd] of one new token per row, cos/sin [B, hd], caches
    [B, nkv, T, hd] written at column ``col`` ([1] or [B]), key_valid [B, T] -> attention output [B, nh*hd]."""
    from crane_x7_vla.models.engine import _attend, _heads, _rope  # here: the engine imports this module

    b = qkv.shape[0]
    q, k, v = _heads(qkv[:, None], b, 1, nh, nkv, hd)
    q, k = _rope(q, k, cos[:, None], sin[:, None])
    write_rows(k_cache, col, k)
    write_rows(v_cache, col, v)
    return _attend(q, k_cache, v_cache, key_valid[:, None, None, :], nh, nkv)[:, 0]


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:  # one pair per mode: triton.jit reads TRITON_INTERPRET
    import triton
    import triton.language as tl

    @triton.jit
    def _partial(qkv_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, valid_ptr, col_ptr, acc_ptr, ml_ptr, sq_ptr,
                 stride_col, stride_qkv, stride_cs, stride_cb, stride_ch, stride_ct, stride_valid, stride_sq, T,
                 chunk, scale, P, width, eps, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr,
                 HALF: tl.constexpr, SPLITS: tl.constexpr, BLOCK_T: tl.constexpr, RMS: tl.constexpr,
                 BLOCK_P: tl.constexpr, STORE: tl.constexpr, ATTEND: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        group = NH // NKV
        kvh = h // group
        d = tl.arange(0, HALF)
        dt = k_ptr.dtype.element_ty
        cs = b * stride_cs
        c1 = tl.load(cos_ptr + cs + d).to(tl.float32)
        c2 = tl.load(cos_ptr + cs + HALF + d).to(tl.float32)
        s1 = tl.load(sin_ptr + cs + d).to(tl.float32)
        s2 = tl.load(sin_ptr + cs + HALF + d).to(tl.float32)
        row = qkv_ptr + b * stride_qkv
        r = 1.0  # q/k/v scaled by r and rounded back as the projection rounds them (r = 1: unchanged)
        if RMS:  # q/k/v were projected from RMSNorm's input times its weight: divide by its rms now
            rp = tl.arange(0, BLOCK_P)
            parts = tl.load(sq_ptr + b * stride_sq + rp, mask=rp < P, other=0.0)
            r = 1.0 / tl.sqrt(tl.sum(parts, axis=0) / width + eps)
        # rotate_half RoPE: [x1, x2] -> [x1 c1 - x2 s1, x2 c2 + x1 s2]
        q1 = (tl.load(row + h * HD + d).to(tl.float32) * r).to(dt).to(tl.float32)
        q2 = (tl.load(row + h * HD + HALF + d).to(tl.float32) * r).to(dt).to(tl.float32)
        qa = (q1 * c1 - q2 * s1).to(dt).to(tl.float32) * scale
        qb = (q2 * c2 + q1 * s2).to(dt).to(tl.float32) * scale
        kr = row + (NH + kvh) * HD
        k1 = (tl.load(kr + d).to(tl.float32) * r).to(dt).to(tl.float32)
        k2 = (tl.load(kr + HALF + d).to(tl.float32) * r).to(dt).to(tl.float32)
        ka_new = (k1 * c1 - k2 * s1).to(dt)
        kb_new = (k2 * c2 + k1 * s2).to(dt)
        vr = row + (NH + NKV + kvh) * HD
        va_new = (tl.load(vr + d).to(tl.float32) * r).to(dt)
        vb_new = (tl.load(vr + HALF + d).to(tl.float32) * r).to(dt)
        col = tl.load(col_ptr + b * stride_col)
        start = s * chunk
        stop = start + chunk  # the last chunk may reach past T; the loads below stop at T
        cache = b * stride_cb + kvh * stride_ch
        if STORE:  # noqa: SIM102 (a constexpr: its own if compiles the stores out)
            if (h % group == 0) & (col >= start) & (col < stop) & (col < T):  # one program writes the new K, V
                tl.store(k_ptr + cache + col * stride_ct + d, ka_new)
                tl.store(k_ptr + cache + col * stride_ct + HALF + d, kb_new)
                tl.store(v_ptr + cache + col * stride_ct + d, va_new)
                tl.store(v_ptr + cache + col * stride_ct + HALF + d, vb_new)
        if ATTEND:  # a constexpr: a launch that only writes the new K/V (one_sequence) compiles without this
            m_i = tl.full([], float("-inf"), tl.float32)
            l_i = tl.zeros([], dtype=tl.float32)
            acc_a = tl.zeros([HALF], dtype=tl.float32)
            acc_b = tl.zeros([HALF], dtype=tl.float32)
            for t0 in range(0, chunk, BLOCK_T):
                t = start + t0 + tl.arange(0, BLOCK_T)
                ok = (t < stop) & (t < T)
                valid = tl.load(valid_ptr + b * stride_valid + t, mask=ok, other=0) != 0
                new = (t == col)[:, None]
                off = cache + t[:, None] * stride_ct + d[None, :]
                ka = tl.where(new, ka_new[None, :], tl.load(k_ptr + off, mask=ok[:, None], other=0.0)).to(tl.float32)
                kb = tl.where(new, kb_new[None, :], tl.load(k_ptr + off + HALF, mask=ok[:, None], other=0.0))
                score = tl.sum(ka * qa[None, :], axis=1) + tl.sum(kb.to(tl.float32) * qb[None, :], axis=1)
                score = tl.where(valid, score, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(score, axis=0))
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a chunk with no valid key yet: no NaNs
                alpha = tl.exp(m_i - m_ref)
                p = tl.exp(score - m_ref)
                va = tl.where(new, va_new[None, :], tl.load(v_ptr + off, mask=ok[:, None], other=0.0)).to(tl.float32)
                vb = tl.where(new, vb_new[None, :], tl.load(v_ptr + off + HALF, mask=ok[:, None], other=0.0))
                acc_a = acc_a * alpha + tl.sum(p[:, None] * va, axis=0)
                acc_b = acc_b * alpha + tl.sum(p[:, None] * vb.to(tl.float32), axis=0)
                l_i = l_i * alpha + tl.sum(p, axis=0)
                m_i = m_new
            part = (b * NH + h) * SPLITS + s
            tl.store(acc_ptr + part * HD + d, acc_a)
            tl.store(acc_ptr + part * HD + HALF + d, acc_b)
            tl.store(ml_ptr + 2 * part, m_i)
            tl.store(ml_ptr + 2 * part + 1, l_i)

    @triton.jit
    def _combine(acc_ptr, ml_ptr, out_ptr, stride_out, NH: tl.constexpr, HD: tl.constexpr,
                 SPLITS: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        part = (b * NH + h) * SPLITS + tl.arange(0, SPLITS)
        m = tl.load(ml_ptr + 2 * part)
        lsum = tl.load(ml_ptr + 2 * part + 1)
        m_max = tl.max(m, axis=0)
        w = tl.exp(m - m_max)  # chunks without a valid key (m = -inf) weigh 0
        d = tl.arange(0, HD)
        acc = tl.load(acc_ptr + part[:, None] * HD + d[None, :])
        out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * lsum, axis=0)
        tl.store(out_ptr + b * stride_out + h * HD + d, out.to(out_ptr.dtype.element_ty))

    return _partial, _combine


def decode_attention(qkv: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, col: Tensor,
                     key_valid: Tensor, nh: int, nkv: int, hd: int, *, rms: tuple[Tensor, float, int] | None = None,
                     one_sequence: bool = False, splits: int | None = None, block_t: int | None = None,
                     num_warps: int | None = None) -> Tensor:
    """:func:`reference`'s result and cache writes, in two kernels. Every row attends over the keys that
    ``key_valid`` marks (which must include ``col``). ``rms=(sq, eps, width)``: qkv was projected from an
    RMSNorm's input times its weight (``decode_linear.linear_norm_out``), sq [B, P] float32 are partial sums of
    squares of that input of ``width`` elements: q, k and v are divided by its rms first. ``one_sequence``: the
    rows are tokens of one sequence, over one cache (``k_cache``/``v_cache`` expanded to B rows, stride 0), each
    seeing the others' keys that ``key_valid`` marks; their K/V are then written by a launch of their own before
    the attention reads them. The launch parameters default to :func:`launch_config`."""
    b, width = qkv.shape
    t = k_cache.shape[2]
    if width != (nh + 2 * nkv) * hd or hd % 2 or nh % nkv:
        raise ValueError(f"qkv width {width} does not match nh={nh}, nkv={nkv}, hd={hd}")
    if (k_cache.shape != (b, nkv, t, hd) or v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride()
            or k_cache.stride(-1) != 1):
        raise ValueError(f"caches must both be [B, nkv, T, hd] = {(b, nkv, t, hd)} with unit stride in hd")
    if key_valid.shape != (b, t) or cos.shape != (b, hd) or sin.shape != (b, hd) or col.numel() not in (1, b):
        raise ValueError(f"key_valid must be [B, T] = {(b, t)}, cos/sin [B, hd] = {(b, hd)} and col [1] or [B]")
    if qkv.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride() != cos.stride() or key_valid.stride(-1) != 1:
        raise ValueError("qkv, cos/sin and key_valid need unit stride in their last dimension")
    default = launch_config(b, nh, t)
    splits, block_t, num_warps = splits or default[0], block_t or default[1], num_warps or default[2]
    chunk = math.ceil(t / splits)
    partial, combine = _kernels(interpreting())
    acc = torch.empty(b, nh, splits, hd, device=qkv.device, dtype=torch.float32)
    ml = torch.empty(b, nh, splits, 2, device=qkv.device, dtype=torch.float32)
    out = torch.empty(b, nh * hd, device=qkv.device, dtype=qkv.dtype)
    if rms is not None and (rms[0].shape[0] != b or rms[0].dim() != 2 or rms[0].dtype != torch.float32
                            or rms[0].stride(-1) != 1):
        raise ValueError(f"rms's sums of squares must be float32 [B, P] with B = {b} and unit stride in P")
    sq, eps, norm_width = (acc, 0.0, 1) if rms is None else rms
    parts = 1 if rms is None else sq.shape[1]
    if one_sequence and (col.numel() != b or k_cache.stride(0) != 0):
        raise ValueError("one_sequence needs a column per row and the one cache expanded to the rows (stride 0)")

    def launch(grid_splits: int, grid_chunk: int, store: bool, attend: bool) -> None:
        partial[(b, nh, grid_splits)](
            qkv, cos, sin, k_cache, v_cache, key_valid, col, acc, ml, sq,
            0 if col.numel() == 1 else col.stride(0), qkv.stride(0), cos.stride(0), k_cache.stride(0),
            k_cache.stride(1), k_cache.stride(2), key_valid.stride(0), sq.stride(0), t, grid_chunk, hd ** -0.5,
            parts, norm_width, eps, NH=nh, NKV=nkv, HD=hd, HALF=hd // 2, SPLITS=splits, BLOCK_T=block_t,
            RMS=rms is not None, BLOCK_P=next_pow2(parts), STORE=store, ATTEND=attend, num_warps=num_warps)

    if one_sequence:  # every row's K/V in place first: a row's keys may be another program's new ones
        launch(1, t, True, False)
    launch(splits, chunk, not one_sequence, True)
    combine[(b, nh)](acc, ml, out, out.stride(0), NH=nh, HD=hd, SPLITS=splits, num_warps=num_warps)
    return out
