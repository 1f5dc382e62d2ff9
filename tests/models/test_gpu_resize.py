"""Pillow's bicubic in torch (models/resize.py): bit for bit PIL's on the CPU here (the float64 products are
exact on any device), and ImageTransform.batch's use of it for CUDA batches, forced onto the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from crane_x7_vla.models import processing
from crane_x7_vla.models.config import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD, ViTConfig
from crane_x7_vla.models.processing import ImageTransform, _resize
from crane_x7_vla.models.resize import (
    PRECISION_BITS,
    bicubic_weights,
    letterbox_padding,
    resize_bicubic,
    resize_square,
    weight_matrix,
)

STRATEGIES = ["resize-naive", "letterbox", "resize-crop"]
# Two fused towers with different means: "letterbox" pads each with its own colour (two resizes, not one).
TOWERS = [ViTConfig(8, 2, 2, 16, 14, 28, mean=DINO_MEAN, std=DINO_STD),
          ViTConfig(8, 2, 2, 16, 14, 28, mean=SIGLIP_MEAN, std=SIGLIP_STD)]


def pil_bicubic(img: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BICUBIC))


def frames(rng: np.random.Generator, b: int, h: int, w: int, binary: bool = False) -> np.ndarray:
    """Random uint8 [b, h, w, 3]; ``binary`` (0/255 only) makes the bicubic overshoot, so the clamps matter."""
    if binary:
        return (rng.integers(0, 2, (b, h, w, 3)) * 255).astype(np.uint8)
    return rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)


def assert_equals_pil(batch: np.ndarray, height: int, width: int, device: str = "cpu") -> None:
    got = resize_bicubic(torch.from_numpy(batch).to(device), height, width).cpu()
    assert got.shape == (len(batch), height, width, 3) and got.dtype == torch.uint8
    for i, img in enumerate(batch):
        want = pil_bicubic(img, height, width)
        diff = np.abs(got[i].numpy().astype(int) - want).max()
        assert diff == 0, f"{img.shape[:2]} -> {(height, width)}: image {i} differs from PIL by up to {diff}"


@pytest.mark.parametrize(
    ("src", "dst"),  # (H, W) -> (h, w)
    [
        ((480, 640), (224, 224)),  # a camera frame to OpenVLA's towers
        ((480, 640), (256, 320)),
        ((5, 7), (11, 3)),  # odd sizes, one axis up and one down
        ((7, 5), (40, 33)),  # upscale
        ((13, 2), (200, 1)),
        ((1, 1), (6, 4)),  # 1-pixel edges
        ((1, 9), (1, 4)),
        ((9, 1), (3, 1)),
        ((6, 8), (1, 1)),
        ((30, 40), (30, 17)),  # one axis unchanged (Pillow skips that pass)
        ((30, 40), (12, 40)),
        ((31, 29), (31, 29)),  # nothing to do: a copy
        ((255, 3), (2, 254)),  # extreme aspect changes
    ],
)
def test_named_sizes_equal_pil(src: tuple[int, int], dst: tuple[int, int]) -> None:
    rng = np.random.default_rng(src[0] * 1000 + dst[1])
    assert_equals_pil(frames(rng, 2, *src), *dst)
    assert_equals_pil(frames(rng, 1, *src, binary=True), *dst)


def random_sizes_equal_pil(device: str, cases: int) -> None:
    """Random size pairs (1..48 px, plus a few larger), random and 0/255 images."""
    rng = np.random.default_rng(7)
    sizes = [*range(1, 49), 64, 97, 128, 224]
    for n in range(cases):
        h_in, w_in, h, w = (int(s) for s in rng.choice(sizes, 4))
        assert_equals_pil(frames(rng, 2, h_in, w_in, binary=n % 3 == 0), h, w, device)


def test_random_sizes_equal_pil() -> None:
    random_sizes_equal_pil("cpu", 1000)


def test_torch_bicubic_is_not_pil_bicubic() -> None:
    """Why this module exists: torch's own antialiased bicubic misses PIL's pixels (so these tests can fail)."""
    img = frames(np.random.default_rng(0), 1, 480, 640)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    ours = torch.nn.functional.interpolate(x, (224, 224), mode="bicubic", antialias=True, align_corners=False)
    ours = ours.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)[0].numpy()
    assert not np.array_equal(ours, pil_bicubic(img[0], 224, 224))


def test_weights() -> None:
    one = 1 << PRECISION_BITS
    for n in (1, 2, 5, 224):  # an unchanged axis: the identity, so skipping that pass (as Pillow does) is exact
        assert torch.equal(weight_matrix(n, n, torch.device("cpu")), one * torch.eye(n, dtype=torch.float64))
    rows = bicubic_weights(640, 224)  # shrinking widens the window (support 2 * 640/224 on either side)
    assert max(len(ws) for _, ws in rows) == 12 and all(abs(sum(ws) - one) <= len(ws) for _, ws in rows)
    assert min(min(ws) for _, ws in rows) < 0  # bicubic lobes: negative weights, hence the clamps
    with pytest.raises(ValueError, match="positive"):
        bicubic_weights(0, 3)
    with pytest.raises(ValueError, match="uint8"):
        resize_bicubic(torch.zeros(1, 4, 4, 3), 2, 2)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (11, 40), (40, 11), (17, 17), (3, 200), (28, 50), (50, 28)])
def test_strategies_equal_pil_resize(strategy: str, shape: tuple[int, int]) -> None:
    """resize_square == processing._resize (PIL) per image; (11, 40) letterboxes to a 40x39 canvas, not a
    square, and (28, 50) / (50, 28) keep one axis of "resize-crop" at its size."""
    rng = np.random.default_rng(shape[0] + 3 * shape[1])
    batch = frames(rng, 2, *shape)
    for fill in ((124, 116, 104), (127, 127, 127)):
        got = resize_square(torch.from_numpy(batch), 28, strategy, fill)
        assert got.shape == (2, 28, 28, 3)
        for i, img in enumerate(batch):
            want = np.asarray(_resize(Image.fromarray(img), 28, strategy, fill))
            assert np.array_equal(got[i].numpy(), want), (strategy, shape, fill, i)
    assert letterbox_padding(40, 11) == (0, 14)
    with pytest.raises(ValueError, match="unknown resize strategy"):
        resize_square(torch.from_numpy(batch), 28, "resize", (0, 0, 0))


def _no_pil(*_: Any) -> Any:
    raise AssertionError("the PIL path ran")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_on_the_device_path_gives_the_pil_paths_tensor(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    transform = ImageTransform(TOWERS, strategy)
    arrays = list(frames(rng, 3, 30, 50))
    flipped = [a[:, ::-1] for a in arrays]  # non-contiguous views (a flip, a BGR->RGB swap) are fine too
    pil, pil_flipped = transform.batch(arrays, "cpu"), transform.batch(flipped, "cpu")  # CPU default: PIL
    monkeypatch.setattr(ImageTransform, "resized_batch", _no_pil)
    assert torch.equal(transform.batch(arrays, "cpu", resize_on_device=True), pil)
    assert torch.equal(transform.batch([Image.fromarray(a) for a in arrays], "cpu", resize_on_device=True), pil)
    assert torch.equal(transform.batch(arrays[:1], "cpu", resize_on_device=True), pil[:1])
    assert torch.equal(transform.batch(flipped, "cpu", resize_on_device=True), pil_flipped)


def test_batch_dispatch_and_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(12)
    transform = ImageTransform(TOWERS)
    arrays = list(frames(rng, 3, 30, 50))
    calls: list[str] = []
    monkeypatch.setattr(processing, "resize_square", lambda *a: calls.append("device") or resize_square(*a))
    transform.batch(arrays, "cpu")  # a CPU device: PIL (faster there than dense float64 products)
    transform.batch(arrays, "cpu", resize_on_device=False)
    assert calls == []
    transform.batch(arrays, "cpu", resize_on_device=True)
    assert calls == ["device"]  # fused towers of one size share one resize
    mixed = [*arrays[:2], arrays[2][:29]]  # shapes differ: no single stacked copy, so PIL
    assert torch.equal(transform.batch(mixed, "cpu", resize_on_device=True), transform.batch(mixed, "cpu"))
    model_size = list(frames(rng, 2, 28, 28))  # frames at the model's size skip every resize
    assert torch.equal(transform.batch(model_size, "cpu", resize_on_device=True), transform.batch(model_size, "cpu"))
    assert calls == ["device"]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((30, 50, 3), np.float32), np.zeros((30, 50, 4), np.uint8), np.zeros((0, 50, 3), np.uint8),
     Image.new("L", (50, 30)), "frame.png"],
)
def test_bad_frames_get_the_pil_paths_errors(bad: object) -> None:
    """Validation is to_pil_rgb's on either path: the same exception, the same message."""
    transform = ImageTransform(TOWERS)
    batch = [np.zeros((30, 50, 3), np.uint8), bad]
    with pytest.raises((ValueError, TypeError)) as pil:
        transform.batch(batch, "cpu")
    with pytest.raises((ValueError, TypeError)) as device:
        transform.batch(batch, "cpu", resize_on_device=True)
    assert type(device.value) is type(pil.value) and str(device.value) == str(pil.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_batches_are_resized_on_the_gpu_with_pils_pixels(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    transform = ImageTransform(TOWERS, strategy)
    arrays = list(frames(rng, 8, 480, 640))
    pil = transform.resized_batch(arrays)
    gpu = transform.resized_on_device(torch.from_numpy(np.stack(arrays)).cuda())
    for p, g in zip(pil, gpu, strict=True):
        assert torch.equal(g.cpu(), torch.from_numpy(p))  # cuBLAS's DGEMM: exact too
    want = transform.normalize([torch.from_numpy(p).cuda() for p in pil])
    monkeypatch.setattr(ImageTransform, "resized_batch", _no_pil)
    assert torch.equal(transform.batch(arrays, "cuda"), want)  # CUDA: the device path by default


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_random_sizes_equal_pil_on_cuda() -> None:
    random_sizes_equal_pil("cuda", 1000)
    assert_equals_pil(frames(np.random.default_rng(14), 32, 480, 640), 224, 224, "cuda")
