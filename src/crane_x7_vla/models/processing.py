"""Turning (image, instruction) pairs into model inputs: OpenVLA's image transform, prompt and token layout.

Pure preprocessing (PIL + numpy + torch tensors, no model): images are checked (non-empty, RGB, HxWx3 uint8),
resized with PIL BICUBIC per tower ("resize-naive", "letterbox" or "resize-crop", as Prismatic's transforms on
PIL images; for a CUDA device, the same pixels are computed there by :mod:`.resize`), scaled to [0, 1], normalised with the tower's mean/std and stacked on the channel axis (6 channels
for fused DINOv2+SigLIP). Prompts follow the published templates; the Llama "▁" token (29871) is appended when
it is not already last, exactly as ``predict_action`` of the release does. Batches are LEFT-padded so that the
last position of every row is the one that predicts the first action token, and position ids (cumsum of the
attention mask) stay contiguous per sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeGuard, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from crane_x7_vla.models.config import ViTConfig
from crane_x7_vla.models.resize import letterbox_padding, resize_crop_box, resize_square

_T = TypeVar("_T")

ImageLike = np.ndarray | Image.Image
SPIECE_UNDERLINE = "▁"
LLAMA_SPIECE_UNDERLINE_ID = 29871

PROMPT_PURE = "In: What action should the robot take to {instruction}?\nOut:"
PROMPT_V01 = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: What action should the robot take to "
    "{instruction}? ASSISTANT:"
)


@dataclass
class ModelInputs:
    """A left-padded batch. pixel_values [B, 3*T, H, W] float; input_ids [B, L] long; attention_mask [B, L] long."""

    pixel_values: Tensor
    input_ids: Tensor
    attention_mask: Tensor

    def to(self, device: torch.device | str) -> ModelInputs:
        return ModelInputs(self.pixel_values.to(device), self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def check_left_padded(self) -> None:
        """Raise unless ids and mask are equal [B, L] and left-padded (what the multimodal embedding assumes)."""
        if self.input_ids.ndim != 2 or self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(f"input_ids {tuple(self.input_ids.shape)} / attention_mask "
                             f"{tuple(self.attention_mask.shape)} must be equal [B, L]")
        if not bool(self.attention_mask[:, -1].all()):
            raise ValueError("ModelInputs must be left-padded (last column all real tokens); build them with prepare_inputs")


def build_prompt(instruction: str, style: str = "pure") -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("instruction must be a non-empty string, e.g. 'pick up the red block'")
    template = PROMPT_V01 if style == "v01" else PROMPT_PURE
    return template.format(instruction=instruction.lower())


def check_image(image: Any) -> ImageLike:
    """Validate one camera image (HxWx3 uint8 array or RGB PIL image) and return it unchanged."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError("image is empty (0 pixels)")
        if image.mode != "RGB":
            raise ValueError(f"image mode is {image.mode!r}, expected 'RGB'; convert it with image.convert('RGB')")
        return image
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) uint8 or a PIL image, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image has shape {image.shape}, expected (H, W, 3) RGB; grayscale/RGBA/CHW images must be converted "
            "to HWC RGB first"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"image dtype is {image.dtype}, expected uint8 (0..255); convert with (img*255).astype(np.uint8)")
    return image


def to_pil_rgb(image: Any) -> Image.Image:
    """Validate one camera image (HxWx3 uint8 array or RGB PIL image) and return it as a PIL RGB image."""
    image = check_image(image)
    if isinstance(image, Image.Image):
        return image
    return Image.fromarray(np.ascontiguousarray(image), mode="RGB")


def _resize(img: Image.Image, size: int, strategy: str, fill: tuple[int, int, int]) -> Image.Image:
    """PIL's resize of one image with a strategy (the definition that :func:`.resize.resize_square` matches)."""
    if strategy == "letterbox":
        w, h = img.size
        pad_x, pad_y = letterbox_padding(w, h)  # same padding on both sides, as Prismatic's LetterboxPad
        canvas = Image.new("RGB", (w + 2 * pad_x, h + 2 * pad_y), fill)
        canvas.paste(img, (pad_x, pad_y))
        img = canvas
    elif strategy == "resize-crop":
        # torchvision Resize(int) on a PIL image: short side -> size, long side truncated; then CenterCrop.
        new_w, new_h, left, top = resize_crop_box(*img.size, size)
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        return img.crop((left, top, left + size, top + size))
    return img.resize((size, size), Image.Resampling.BICUBIC)


def _is_rgb_array(image: Any, size: int | None) -> TypeGuard[np.ndarray]:
    """A uint8 RGB array of exactly ``size`` x ``size`` (never when the towers' sizes differ: ``size`` None)."""
    return isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (size, size, 3)


def _frames_on(images: Sequence[ImageLike], device: torch.device | str) -> Tensor | None:
    """The batch as one uint8 [B,H,W,3] tensor on ``device``, or None when the frames' shapes differ; a bad
    image raises :func:`check_image`'s error (the PIL path's), in the batch's order. For a CUDA device the
    frames are stacked into pinned memory and copied without blocking: on an H200 host, 32 camera frames took
    3.3 ms this way against 4.8 ms for a pageable stack and copy (frame-by-frame copies were as fast, but warn about
    the read-only arrays that ``np.asarray`` of a decoded PIL image gives)."""
    arrays = [np.asarray(check_image(im)) for im in images]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        return None
    pinned = torch.device(device).type == "cuda"
    host = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=pinned)
    np.stack(arrays, out=host.numpy())  # strided views (a flip, a BGR->RGB swap) too
    return host.to(device, non_blocking=pinned)  # the caching host allocator keeps the block until it is read


@cache
def _resize_pool() -> ThreadPoolExecutor:
    """Threads for the per-image PIL resizes of a batch: PIL releases the GIL while it resamples, so a batch of
    camera frames (e.g. 8 robots' 640x480 frames, ~3 ms each) is resized in parallel instead of in series."""
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="vla-resize")


class ImageTransform:
    """PIL image -> [3*T, H, W] float32 tensor for T towers."""

    def __init__(self, towers: Sequence[ViTConfig], strategy: str = "resize-naive") -> None:
        self.towers = tuple(towers)
        self.strategy = strategy
        self._stat_cache: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    def _per_tower(self, resize: Callable[[int, tuple[int, int, int]], _T]) -> list[_T]:
        """``resize(size, fill)`` for each tower's (size, fill), once per distinct pair: fused towers of one size
        share one resize (the fill, the tower's mean colour, only pads "letterbox" images, so it is (0, 0, 0)
        for the other strategies)."""
        keys = []
        for t in self.towers:
            fill = (int(255 * t.mean[0]), int(255 * t.mean[1]), int(255 * t.mean[2]))
            keys.append((t.image_size, fill if self.strategy == "letterbox" else (0, 0, 0)))
        done: dict[tuple[int, tuple[int, int, int]], _T] = {}
        for key in keys:
            if key not in done:
                done[key] = resize(*key)
        return [done[key] for key in keys]

    def resized(self, image: ImageLike) -> list[np.ndarray]:
        """The PIL-resized uint8 [H,W,3] image each tower sees (fused towers share one resize)."""
        img = to_pil_rgb(image)
        return self._per_tower(lambda size, fill: np.asarray(_resize(img, size, self.strategy, fill), dtype=np.uint8))

    def resized_on_device(self, frames: Tensor) -> list[Tensor]:
        """Per tower, uint8 [B,H,W,3] frames resized where they are (:func:`.resize.resize_square`, Pillow's
        bicubic bit for bit): the same pixels as :meth:`resized_batch`, as uint8 [B,h,w,3] tensors."""
        return self._per_tower(lambda size, fill: resize_square(frames, size, self.strategy, fill))

    def __call__(self, image: ImageLike) -> Tensor:
        """[3*T, H, W] float32 on the CPU."""
        return self.batch([image], torch.device("cpu"))[0]

    def batch(self, images: Sequence[ImageLike], device: torch.device | str, *,
              resize_on_device: bool | None = None) -> Tensor:
        """[B, 3*T, H, W] float32 on ``device``: only uint8 pixels cross the bus, and ``(x/255 - mean)/std`` runs
        in float32 there (the GPU arithmetic differs from the CPU's by a few ulp: at most 7.2e-7, measured on an
        H200).

        The resize is PIL's BICUBIC, which defines parity. On the CPU, PIL itself resizes the images in
        parallel threads. On a CUDA device (or with ``resize_on_device=True``, as the tests force on the CPU), a
        batch of same-shaped frames is copied there as one uint8 batch and resized by
        :mod:`.resize` — the same pixels, without the host's ~3-5 ms per 640x480 frame; frames of mixed
        shapes fall back to PIL. ``resize_on_device=False`` always uses PIL."""
        size = self.shared_size()
        arrays = [im for im in images if _is_rgb_array(im, size)]
        if len(arrays) == len(images):
            # Frames already at the model's size (simulators render them so): every resize strategy leaves a
            # square image of the target size as it is (PIL's resize returns a copy), so skip PIL altogether and
            # send one stacked uint8 array: the same pixels, without the per-frame PIL round trip. (Through pinned
            # memory on CUDA, as below: a pageable copy would wait for whatever the GPU is running.)
            same = _frames_on(arrays, device)
            assert same is not None  # every frame is size x size x 3
            return self.normalize([same])
        if resize_on_device is None:
            resize_on_device = torch.device(device).type == "cuda"
        if resize_on_device and (frames := _frames_on(images, device)) is not None:
            return self.normalize(self.resized_on_device(frames))
        return self.normalize([torch.from_numpy(p).to(device) for p in self.resized_batch(images)])

    def resized_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Per tower, the batch's PIL-resized uint8 [B,H,W,3] pixels; the frames are resized in parallel threads."""
        per_image = (list(_resize_pool().map(self.resized, images)) if len(images) > 1
                     else [self.resized(im) for im in images])
        return [np.stack([r[i] for r in per_image]) for i in range(len(self.towers))]

    def normalize(self, pixels: Sequence[Tensor]) -> Tensor:
        """Already-resized uint8 [B,H,W,3] pixels (one tensor per tower, or one shared by all) -> [B,3T,H,W]."""
        if len(pixels) not in (1, len(self.towers)):
            raise ValueError(f"normalize takes 1 or {len(self.towers)} pixel tensors, got {len(pixels)}")
        chans = []
        for i in range(len(self.towers)):
            x = pixels[i if len(pixels) > 1 else 0].permute(0, 3, 1, 2).float() / 255.0  # [B,3,H,W]
            mean, std = self._stats(i, x.device)
            chans.append((x - mean) / std)
        return torch.cat(chans, dim=1)

    def _stats(self, tower: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """A tower's mean and std as [1,3,1,1] float32 tensors on ``device``, made once per device: building them
        per call copies from pageable host memory, which on CUDA waits until the stream is idle (a caller
        preprocessing beside a busy serving loop waited ~40 ms for it on an H200)."""
        key = (tower, str(device))
        if key not in self._stat_cache:
            t = self.towers[tower]
            self._stat_cache[key] = (torch.tensor(t.mean, dtype=torch.float32, device=device)[None, :, None, None],
                                     torch.tensor(t.std, dtype=torch.float32, device=device)[None, :, None, None])
        return self._stat_cache[key]

    def shared_size(self) -> int | None:
        """The input size every tower shares (so one resized frame serves all), or None when they differ."""
        sizes = {t.image_size for t in self.towers}
        return sizes.pop() if len(sizes) == 1 else None


def prompt_token_ids(tokenizer: Any, prompt: str, underline_id: int) -> list[int]:
    """BOS + prompt ids, with the "▁" token appended if it is not already last (the release's predict_action)."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    if ids[-1] != underline_id:
        ids.append(underline_id)
    return ids


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad id lists -> (input_ids [B,L], attention_mask [B,L])."""
    if not sequences:
        raise ValueError("empty batch")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, length - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, length - len(s) :] = 1
    return ids, mask


def underline_token_id(tokenizer: Any) -> int:
    tid = tokenizer.convert_tokens_to_ids(SPIECE_UNDERLINE)
    unk = getattr(tokenizer, "unk_token_id", None)
    return LLAMA_SPIECE_UNDERLINE_ID if tid is None or tid == unk else int(tid)
