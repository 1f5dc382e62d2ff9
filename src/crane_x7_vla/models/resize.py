"""Pillow's 8-bit BICUBIC resize in torch, bit for bit, so that camera frames can be resized on the GPU.

OpenVLA's image transform is defined by ``PIL.Image.resize(size, BICUBIC)`` on uint8 RGB images; any other
bicubic (torch's ``interpolate``, antialiased or not) differs from it by a few grey levels, and the policy's
actions with it. Pillow's 8-bit path is separable and integer: per axis, every output pixel is a weighted sum
of a window of input pixels with weights quantised to 22-bit fixed point, rounded and clamped to uint8, the
horizontal pass first and the vertical one on its uint8 result. Here each pass is one matrix product with an
[out, in] matrix of those integer weights, in float64: every product is an integer below 2^31 and every partial
sum below 2^53, so the sums are exact in any order (cuBLAS's DGEMM included) and the result equals Pillow's.

Dense matrices spend most of their multiplies on zeros, which a GPU does not mind; on a CPU Pillow's own loop is
faster, so :class:`.processing.ImageTransform` uses this module only when the batch goes to a CUDA device.
Checked equal to Pillow 11.3 (CPU) and 12.3 (H200, cuBLAS) on over a thousand random size pairs
(tests/models/test_gpu_resize.py).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

PRECISION_BITS = 22  # Pillow's fixed-point weights for 8-bit images: w * 2^22, rounded half away from zero
_HALF = float(1 << (PRECISION_BITS - 1))
_ONE = float(1 << PRECISION_BITS)
STRATEGIES = ("resize-naive", "letterbox", "resize-crop")


def _bicubic(x: float) -> float:
    """Keys' cubic convolution kernel with a = -0.5 (Pillow's BICUBIC filter), support 2."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def bicubic_weights(in_size: int, out_size: int) -> list[tuple[int, list[int]]]:
    """Per output pixel, (first input index, integer weights of its window) as Pillow computes them.

    Pixel ``i``'s centre maps to ``(i + 0.5) * scale`` in the input; when shrinking, the kernel is stretched by
    the scale (an antialiasing filter), so the window grows with it. The weights are normalised by their sum in
    double precision and then quantised, so a row's integer weights need not sum to exactly 2^22.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    rows = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ws = [_bicubic((x - center + 0.5) / filterscale) for x in range(xmin, xmax)]
        total = 0.0
        for w in ws:  # in order, as a C loop adds them (a pairwise sum could differ in the last bit)
            total += w
        if total != 0.0:
            ws = [w / total for w in ws]
        rows.append((xmin, [int(w * _ONE + 0.5) if w >= 0 else int(w * _ONE - 0.5) for w in ws]))
    return rows


@lru_cache(maxsize=64)
def weight_matrix(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """[out_size, in_size] float64 matrix of :func:`bicubic_weights` on ``device`` (cached: built once per pair)."""
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i, (start, ws) in enumerate(bicubic_weights(in_size, out_size)):
        m[i, start : start + len(ws)] = torch.tensor(ws, dtype=torch.float64)
    return m.to(device)


def _quantise(sums: Tensor) -> Tensor:
    """Fixed-point sums -> pixel values (still float64): (s + 2^21) >> 22, clamped to 0..255. Exact: s is an
    integer and the division is by a power of two."""
    return torch.floor((sums + _HALF) / _ONE).clamp_(0.0, 255.0)


def _pass(x: Tensor, axis: int, in_size: int, out_size: int, keep: slice) -> Tensor:
    """One resampling pass of float64 planes ``x`` [N, H, W] along ``axis`` (1: rows, 2: columns), keeping the
    outputs ``keep`` (a crop costs nothing: each output pixel has its own row of weights). An axis whose size
    does not change is only sliced, as Pillow skips it (its weights would be the identity anyway)."""
    if in_size == out_size:
        return x[:, keep] if axis == 1 else x[:, :, keep]
    k = weight_matrix(in_size, out_size, x.device)[keep]  # [out, in]
    return _quantise(k @ x if axis == 1 else x @ k.T)


def _check(images: Tensor) -> tuple[int, int, int, int]:
    """The (B, H, W, C) of a uint8 [B, H, W, C] batch of non-empty images; ValueError otherwise."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"images must be non-empty uint8 [B, H, W, C], got {images.dtype} {tuple(images.shape)}")
    b, h, w, c = images.shape
    return b, h, w, c


def _resize_window(images: Tensor, height: int, width: int, rows: slice, cols: slice) -> Tensor:
    """uint8 [B, H, W, C] resized to ``height`` x ``width``, of which only ``rows`` x ``cols`` are returned."""
    b, h_in, w_in, c = _check(images)
    # Planar float64 [B*C, H, W]: the horizontal pass is then one [B*C*H, W] @ [W, w] product and the
    # vertical one a batch of [h, H] @ [H, w] products, with no per-channel strides in either.
    planes = images.permute(0, 3, 1, 2).reshape(b * c, h_in, w_in).to(torch.float64)
    planes = _pass(planes, 2, w_in, width, cols)  # horizontal first, on uint8-valued rows, as Pillow does
    planes = _pass(planes, 1, h_in, height, rows)
    out = planes.to(torch.uint8)  # values are integers in 0..255 already
    return out.reshape(b, c, out.shape[1], out.shape[2]).permute(0, 2, 3, 1)


def resize_bicubic(images: Tensor, height: int, width: int) -> Tensor:
    """uint8 [B, H, W, C] -> uint8 [B, height, width, C], equal to PIL's ``resize((width, height), BICUBIC)``
    of every image (note the torch order of the sizes). The result is a channels-last view of planar memory,
    which is what :meth:`.processing.ImageTransform.normalize` permutes it back to without a copy."""
    return _resize_window(images, height, width, slice(None), slice(None))


def letterbox_padding(width: int, height: int) -> tuple[int, int]:
    """(pad_x, pad_y) added on BOTH sides of a width x height image to pad it to a square, as Prismatic's
    LetterboxPad does; with an odd difference the padded image stays one pixel short of square."""
    m = max(width, height)
    return (m - width) // 2, (m - height) // 2


def resize_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(new_width, new_height, left, top) of torchvision's ``Resize(size)`` on a PIL image (short side -> size,
    long side truncated) followed by ``CenterCrop(size)``."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, round((new_w - size) / 2.0), round((new_h - size) / 2.0)


def resize_square(images: Tensor, size: int, strategy: str, fill: tuple[int, int, int]) -> Tensor:
    """uint8 [B, H, W, 3] -> uint8 [B, size, size, 3] with one of OpenVLA's resize strategies ("resize-naive",
    "letterbox" padded with ``fill``, "resize-crop"): the same pixels as ``processing._resize`` gives each image."""
    b, h, w, c = _check(images)
    if strategy == "resize-naive":
        return resize_bicubic(images, size, size)
    if strategy == "letterbox":
        pad_x, pad_y = letterbox_padding(w, h)
        canvas = images.new_empty((b, h + 2 * pad_y, w + 2 * pad_x, c))
        for ch, value in enumerate(fill):  # fills, not a copy of a host tensor (that would wait for the GPU)
            canvas[..., ch] = value
        canvas[:, pad_y : pad_y + h, pad_x : pad_x + w] = images
        return resize_bicubic(canvas, size, size)
    if strategy == "resize-crop":
        new_w, new_h, left, top = resize_crop_box(w, h, size)
        return _resize_window(images, new_h, new_w, slice(top, top + size), slice(left, left + size))
    raise ValueError(f"unknown resize strategy {strategy!r}; expected one of {STRATEGIES}")
