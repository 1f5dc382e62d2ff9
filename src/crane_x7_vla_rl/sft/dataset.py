"""Demonstrations -> OpenVLA training examples in the published fine-tuning layout (pure logic, no model).

Design choice: we reproduce the *published* training sequence token for token instead of re-using the runtime's
left-padded inference batch. One example is::

    <s> In: What action should the robot take to {instruction}?\\nOut: ▁ a1 .. aD </s>
    labels: -100 everywhere except a1..aD and </s>

built from the runtime's own ``prompt_token_ids`` (BOS + prompt + "▁" 29871, exactly what inference feeds the
model before the first action token) followed by the action-token ids and EOS; a batch is RIGHT-padded with PAD
(32000, labels -100). Real tokens of a right-padded row sit at positions 0..n-1, the same contiguous positions the
runtime gives a left-padded row, and causal attention never lets a real token see the trailing pads, so the
logits at every labelled position equal the runtime's (``tests/rl/test_rl_sft.py`` checks this numerically).

Action statistics follow OpenVLA's ``dataset_statistics.json``: per-dimension mean/std/min/max/q01/q99 of the
demo actions, ``mask`` all True (every CRANE-X7 dim, gripper included, is a continuous joint target).
Batches are drawn by a generator seeded with ``(seed, step)``: a resumed run draws exactly the batches the
uninterrupted run would have, without saving any sampler state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from crane_x7_vla.lift.dataset import DemoDataset
from crane_x7_vla.models.action_tokenizer import ActionTokenizer
from crane_x7_vla.models.normalization import ActionStats, normalize

DEFAULT_UNNORM_KEY = "crane_x7"
IGNORE_INDEX = -100  # the label value HF's cross-entropy ignores (prompt, patches, padding)


def quantile_stats(x: NDArray[Any]) -> dict[str, list[float]]:
    """(N, D) samples -> OpenVLA's per-dimension statistics block (mean, std, max, min, q01, q99)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"statistics need a non-empty (N, D) array, got shape {x.shape}")
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "max": x.max(0).tolist(),
        "min": x.min(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }


def dataset_statistics(
    actions: NDArray[Any], qpos: NDArray[Any], num_trajectories: int, key: str = DEFAULT_UNNORM_KEY
) -> dict[str, Any]:
    """The ``dataset_statistics.json`` dict for one dataset ``key`` (mask all True)."""
    action = quantile_stats(actions)
    return {
        key: {
            "action": {**action, "mask": [True] * len(action["q01"])},
            "proprio": quantile_stats(qpos),
            "num_transitions": int(np.asarray(actions).shape[0]),
            "num_trajectories": int(num_trajectories),
        }
    }


@dataclass
class DemoFrames:
    """Every (image, action, instruction) step of the chosen demos, held in memory as uint8 / float32."""

    images: NDArray[np.uint8]  # (N, H, W, 3)
    actions: NDArray[np.float32]  # (N, D)
    qpos: NDArray[np.float32]  # (N, D)
    instructions: list[str]  # N entries
    num_episodes: int

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @classmethod
    def load(cls, root: str | Path, only_successful: bool = True, max_episodes: int | None = None) -> DemoFrames:
        ds = DemoDataset(root, only_successful=only_successful)
        n = len(ds) if max_episodes is None else min(len(ds), max_episodes)
        if n == 0:
            which = "successful " if only_successful else ""
            raise ValueError(f"{root} holds no {which}episodes; record some with "
                             f"`crane-x7-vla expert --record {root}`" + (" (or pass --all-episodes)" if which else ""))
        eps = [ds.episode(i) for i in range(n)]
        return cls(
            images=np.concatenate([e.images for e in eps]),
            actions=np.concatenate([e.actions for e in eps]).astype(np.float32),
            qpos=np.concatenate([e.qpos for e in eps]).astype(np.float32),
            instructions=[e.instruction for e in eps for _ in range(len(e))],
            num_episodes=n,
        )

    def statistics(self, key: str = DEFAULT_UNNORM_KEY) -> dict[str, Any]:
        return dataset_statistics(self.actions, self.qpos, self.num_episodes, key)


def action_token_ids(actions: NDArray[Any], stats: ActionStats, tokenizer: ActionTokenizer) -> NDArray[np.int64]:
    """Raw actions (..., D) -> normalised (BOUNDS_Q99, clipped) -> action-token ids (..., D)."""
    if np.asarray(actions).shape[-1] != stats.dim:
        raise ValueError(f"actions have {np.asarray(actions).shape[-1]} dims but the statistics have {stats.dim}")
    return tokenizer.encode(normalize(actions, stats))


def build_example(prompt_ids: Sequence[int], action_ids: Sequence[int], eos_id: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one published training sequence: labels only on the actions and EOS."""
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: it must start with BOS")
    ids = [*prompt_ids, *action_ids, eos_id]
    labels = [IGNORE_INDEX] * len(prompt_ids) + [*action_ids, eos_id]
    return [int(i) for i in ids], [int(v) for v in labels]


def right_pad(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Examples -> (input_ids [B,L], attention_mask [B,L], labels [B,L]) right-padded with ``pad_id`` / -100."""
    if not examples:
        raise ValueError("empty batch")
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        if len(ids) != len(lab):
            raise ValueError(f"example {i}: {len(ids)} ids but {len(lab)} labels")
        input_ids[i, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        labels[i, : len(lab)] = torch.as_tensor(list(lab), dtype=torch.long)
        mask[i, : len(ids)] = 1
    return input_ids, mask, labels


def batch_indices(seed: int, step: int, num_frames: int, batch_size: int) -> NDArray[np.int64]:
    """The frame indices of training step ``step`` (a function of (seed, step) only: resume-exact)."""
    if num_frames <= 0:
        raise ValueError("no frames to sample from")
    rng = np.random.default_rng([seed, step])
    return rng.choice(num_frames, size=batch_size, replace=batch_size > num_frames).astype(np.int64)


def random_shift(pixels: Tensor, pad: int, seed: int, step: int) -> Tensor:
    """DrQ-style augmentation: each uint8 [B,H,W,C] frame is edge-padded by ``pad`` px and cropped back at a random
    offset (a shift of up to +-pad px, scale unchanged, so inference needs no matching transform). The offsets are
    a function of (seed, step) only, so a resumed run sees exactly the uninterrupted run's crops."""
    if pad <= 0:
        return pixels
    b, h, w, _ = pixels.shape
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen).to(pixels.device)  # [B,2] (dy, dx)
    # replicate-pad H and W: F.pad's replicate mode wants float [B,C,H,W], so index-clamp instead (exact on uint8).
    rows = (torch.arange(h, device=pixels.device)[None, :] + off[:, :1] - pad).clamp(0, h - 1)  # [B,H]
    cols = (torch.arange(w, device=pixels.device)[None, :] + off[:, 1:] - pad).clamp(0, w - 1)  # [B,W]
    batch = torch.arange(b, device=pixels.device)[:, None, None]
    return pixels[batch, rows[:, :, None], cols[:, None, :]]  # [B,H,W,C]

