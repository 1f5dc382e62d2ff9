"""MiniVLA inputs: the Qwen chat prompt, its token ids (no BOS) and the per-sample image list of multi-image models.

Pure preprocessing (no model). Images use OpenVLA's fused transform unchanged (:class:`.processing.ImageTransform`);
a sample's frames are stacked on the channel axis, ``pixel_values [B, 6 * num_images, H, W]``, so batches keep
:class:`.processing.ModelInputs`' shape contract and move/batch like OpenVLA's. Frame order is the model's:
history2 ``[t-1, t]`` (a single image means the episode start, where the published rollout repeats the first
frame), wrist ``[third_person, wrist]``. :class:`FrameHistory` keeps the ``[t-1, t]`` window for a control loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from crane_x7_vla.models.processing import ImageLike
from crane_x7_vla.utils.history import SlidingWindow

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_PROMPT = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    "What action should the robot take to {instruction}?<|im_end|>\n<|im_start|>assistant\n"
)
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

SampleImages = ImageLike | Sequence[ImageLike]  # one image, or the model's frames for one sample


def build_qwen_prompt(instruction: str) -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("instruction must be a non-empty string, e.g. 'pick up the red block'")
    return QWEN_PROMPT.format(system=QWEN_SYSTEM, instruction=instruction.lower())


def qwen_prompt_ids(tokenizer: Any, instruction: str) -> list[int]:
    """Prompt token ids as Prismatic tokenises them (Qwen adds no BOS; the first id is ``<|im_start|>``)."""
    ids = list(tokenizer(build_qwen_prompt(instruction), add_special_tokens=True)["input_ids"])
    start = tokenizer.convert_tokens_to_ids(IM_START)
    if not ids or ids[0] != start:
        raise ValueError(
            f"the tokenizer did not encode {IM_START} as one special token (got first id {ids[:1]}); "
            "MiniVLA needs the Qwen2.5 tokenizer"
        )
    return ids


def sample_frames(item: SampleImages, image_sequence_len: int, use_wrist_image: bool) -> list[ImageLike]:
    """One sample's images -> exactly the model's frame list (see the module docstring for the order)."""
    if isinstance(item, (np.ndarray, Image.Image)):
        frames: list[ImageLike] = [item]
    elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
        frames = list(item)
    else:
        raise TypeError(f"each sample must be an image or a list of images, got {type(item).__name__}")
    n = image_sequence_len * (2 if use_wrist_image else 1)
    if len(frames) == n:
        return frames
    if len(frames) == 1 and image_sequence_len > 1:
        return frames * image_sequence_len  # episode start: history filled with the first frame
    want = "[third_person, wrist]" if use_wrist_image else f"{n} frames [t-{n - 1} .. t]" if n > 1 else "one image"
    raise ValueError(f"this MiniVLA takes {want} per sample, got {len(frames)} image(s)")


class FrameHistory(SlidingWindow[ImageLike]):
    """The last ``length`` frames of one camera, oldest first; the first frame fills the window (episode start)."""

    def __init__(self, length: int = 2) -> None:
        super().__init__(length)
