"""Action (un)normalisation with OpenVLA's BOUNDS_Q99 scheme, and the norm-stats bookkeeping around it.

Pure numpy/dict logic. ``dataset_statistics.json`` is merged *over* ``config.norm_stats`` (fine-tuned stats live
only in the file), and the dataset key is chosen explicitly: the given key, or the only one, or a clear error
listing the keys; never a silent fallback to some default dataset.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

EPS = 1e-8


@dataclass(frozen=True)
class ActionStats:
    q01: NDArray[np.float64]  # [D]
    q99: NDArray[np.float64]  # [D]
    mask: NDArray[np.bool_]  # [D]; False = the dimension is passed through (e.g. a binary gripper)

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], key: str = "?") -> ActionStats:
        action = stats.get("action") if isinstance(stats, Mapping) else None
        if not isinstance(action, Mapping) or "q01" not in action or "q99" not in action:
            raise ValueError(f"norm stats for {key!r} have no action.q01/action.q99")
        q01 = np.asarray(action["q01"], dtype=np.float64)
        q99 = np.asarray(action["q99"], dtype=np.float64)
        if q01.ndim != 1 or q01.shape != q99.shape:
            raise ValueError(f"norm stats for {key!r}: q01 {q01.shape} and q99 {q99.shape} must be equal 1-D shapes")
        mask = np.asarray(action.get("mask", [True] * q01.shape[0]), dtype=bool)
        if mask.shape != q01.shape:
            raise ValueError(f"norm stats for {key!r}: mask has shape {mask.shape}, expected {q01.shape}")
        return cls(q01, q99, mask)


def unnormalize(a_norm: ArrayLike, stats: ActionStats) -> NDArray[np.float32]:
    """[-1, 1] actions [..., D] -> dataset units: ``0.5*(a+1)*(q99-q01)+q01`` where mask, else unchanged."""
    a = np.asarray(a_norm, dtype=np.float64)
    out = np.where(stats.mask, 0.5 * (a + 1.0) * (stats.q99 - stats.q01) + stats.q01, a)
    return out.astype(np.float32)


def normalize(x: ArrayLike, stats: ActionStats) -> NDArray[np.float32]:
    """Training-time inverse: ``clip(2*(x-q01)/(q99-q01+eps)-1, -1, 1)`` where mask; q01 == q99 dims -> 0."""
    x = np.asarray(x, dtype=np.float64)
    scaled = np.clip(2.0 * (x - stats.q01) / (stats.q99 - stats.q01 + EPS) - 1.0, -1.0, 1.0)
    scaled = np.where(stats.q01 == stats.q99, 0.0, scaled)
    return np.where(stats.mask, scaled, x).astype(np.float32)


def merge_norm_stats(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``override`` per dataset key (the file's entry replaces the config's)."""
    merged = dict(base)
    merged.update(override)
    return merged


def select_unnorm_key(norm_stats: Mapping[str, Any], unnorm_key: str | None) -> str:
    keys = sorted(norm_stats)
    if unnorm_key is not None:
        if unnorm_key not in norm_stats:
            close = difflib.get_close_matches(unnorm_key, keys, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unnorm_key {unnorm_key!r} not in the model's norm stats.{hint} Available: {keys}")
        return unnorm_key
    if not keys:
        raise ValueError(
            "the model has no action norm stats (config.norm_stats and dataset_statistics.json are both empty); "
            "add a dataset_statistics.json to the checkpoint"
        )
    if len(keys) > 1:
        raise ValueError(f"the model has norm stats for several datasets; pass unnorm_key, one of {keys}")
    return keys[0]
