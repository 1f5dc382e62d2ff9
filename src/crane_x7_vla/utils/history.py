"""A fixed-length window of the newest items, oldest first, that an episode start fills with its first item.

One implementation for every multi-frame consumer (the MiniVLA history2 input, the inference service's frame
window, the RL collector's per-env frame stacks): the published rollout repeats the first frame at an episode
start rather than padding, and all three must agree on that. Pure Python, no torch.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class SlidingWindow(Generic[T]):
    """The last ``length`` items pushed, oldest first; the first push after :meth:`reset` fills the window."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"history length must be >= 1, got {length}")
        self.length = length
        self._items: list[T] = []

    def reset(self) -> None:
        """Episode boundary: the next item is repeated instead of mixing episodes."""
        self._items = []

    def push(self, item: T) -> list[T]:
        """Add the newest item; return the window ``[t-length+1, ..., t]``."""
        self._items = [item] * self.length if not self._items else [*self._items[1:], item]
        return list(self._items)

    @property
    def newest(self) -> T | None:
        return self._items[-1] if self._items else None
