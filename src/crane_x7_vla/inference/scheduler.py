"""A drift-free tick scheduler: deadline ``n`` is ``start + n * period``, computed, never accumulated.

Sleeping ``period`` after each tick drifts by the tick's own duration (the seed's loop ran at
``1 / (period + work)``). Here deadlines are absolute; when a tick overruns, the missed deadlines are
skipped (no burst of catch-up ticks, which would act on the same frame) and counted, so the service can
report that the model cannot keep up. Pure: the caller passes ``now``; the event loop does the sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TickReport:
    """What :meth:`RateScheduler.complete` learned about the tick that just finished."""

    index: int  # index of the finished tick
    lateness: float  # s the tick *finished* after the next deadline (<= 0: on time)
    missed: int  # deadlines skipped because the tick overran


class RateScheduler:
    """Absolute deadlines at ``rate_hz`` starting at ``start`` (any monotonic clock, seconds)."""

    def __init__(self, rate_hz: float, start: float) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate must be a positive finite number of Hz, got {rate_hz!r}")
        self.period = 1.0 / rate_hz
        self.start = start
        self._index = 0  # index of the next deadline
        self.total_missed = 0
        self.ticks = 0

    def deadline(self, index: int) -> float:
        return self.start + index * self.period

    def next_deadline(self) -> float:
        return self.deadline(self._index)

    def delay(self, now: float) -> float:
        """Seconds to sleep before the next deadline (0 when it has passed)."""
        return max(0.0, self.next_deadline() - now)

    def complete(self, now: float) -> TickReport:
        """Mark the current tick done at ``now`` and move to the first deadline strictly in the future."""
        done = self._index
        nxt = done + 1
        lateness = now - self.deadline(nxt)
        missed = 0
        if lateness >= 0:
            # Jump over every deadline that has already passed: first index whose deadline > now.
            target = math.floor((now - self.start) / self.period) + 1
            missed = max(0, target - nxt)
            nxt = max(nxt, target)
        self._index = nxt
        self.ticks += 1
        self.total_missed += missed
        return TickReport(index=done, lateness=lateness, missed=missed)

    def rebase(self, now: float) -> None:
        """Restart the deadline grid at ``now`` (after a reconnect pause, so no backlog is reported)."""
        self.start = now
        self._index = 0
