"""Open-loop execution of action chunks (pure; the service decides *when*, this decides *what*).

A chunked policy (MiniVLA VQ: 8 steps per query) predicts several future actions at once. With ``steps = N``
the service publishes step 0 on the tick that ran the model and steps 1..N-1 on the following ticks WITHOUT
running the model; then it queries again. ``N = 1`` (the default) re-queries every tick, which is what the
published openvla-mini evaluation does. The rest of a chunk is thrown away as soon as it no longer describes
the present: a new instruction, a stale camera feed, a lost connection (the service calls :meth:`discard`).
Validation happens once per chunk, over the steps that will actually run, so a NaN in step 3 means nothing
of that chunk is published (a half-executed plan is worse than a skipped tick).
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
from numpy.typing import NDArray


class ChunkExecutor:
    """Queue of the not-yet-published steps of the current chunk."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"chunk steps must be >= 1, got {steps}")
        self.steps = steps
        self._queue: deque[NDArray[np.float64]] = deque()
        self.chunks = 0  # chunks started (= model queries that produced a published action)
        self.open_loop = 0  # actions published from the queue (no model run)
        self.discarded: Counter[str] = Counter()  # queued steps thrown away, by reason

    @property
    def pending(self) -> int:
        return len(self._queue)

    def executed_part(self, chunk: NDArray[np.floating]) -> NDArray[np.float64]:
        """The steps of ``chunk`` (K, D) that will run: the first ``min(steps, K)``, as float64 (n, D)."""
        arr = np.asarray(chunk, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]  # a plain (D,) action is a chunk of one
        if arr.ndim != 2 or arr.shape[0] < 1:
            raise ValueError(f"an action chunk must be (steps, action_dim), got shape {arr.shape}")
        return arr[: self.steps]

    def start(self, chunk: NDArray[np.floating], *, queue_rest: bool = True) -> NDArray[np.float64]:
        """Begin a new chunk: return step 0 and queue steps 1..steps-1 (replacing any leftover).

        ``queue_rest=False`` keeps only step 0 (the instruction changed while the model was running).
        """
        part = self.executed_part(chunk)
        self.discard("replaced")
        if queue_rest:
            self._queue.extend(part[1:])
        self.chunks += 1
        return part[0]

    def pop(self) -> NDArray[np.float64] | None:
        """The next queued step, or None when the chunk is used up (time to run the model)."""
        if not self._queue:
            return None
        self.open_loop += 1
        return self._queue.popleft()

    def discard(self, reason: str) -> int:
        """Drop every queued step; returns how many (counted under ``reason`` when > 0)."""
        n = len(self._queue)
        if n:
            self.discarded[reason] += n
            self._queue.clear()
        return n

    def snapshot(self) -> dict[str, object]:
        return {"steps": self.steps, "chunks": self.chunks, "open_loop_actions": self.open_loop,
                "pending": self.pending, "discarded": dict(self.discarded)}
