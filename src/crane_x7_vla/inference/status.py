"""Service statistics for the status topic and the logs (pure; the service feeds it timings).

Latencies are kept in fixed-size windows (the last ``window`` ticks) so the status reflects the present,
not the average since start; the achieved rate is the number of publishes in the window divided by the
time it spans.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

STAGES = ("decode", "preprocess", "model", "publish", "total")


@dataclass(frozen=True)
class TickTiming:
    """Seconds spent per stage of one tick (``total`` = frame receipt -> action published)."""

    decode: float
    preprocess: float
    model: float
    publish: float
    total: float


def percentiles_ms(values: Any) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds of a sequence of seconds ({} when empty)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99]) * 1e3
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "max": round(float(arr.max() * 1e3), 3)}


class StatusTracker:
    """Counts and timing windows of the inference service."""

    def __init__(self, *, model: str, instruction: str, target_rate: float, window: int = 200) -> None:
        self.model = model
        self.instruction = instruction
        self.target_rate = target_rate
        self._timings: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}
        self._publish_times: deque[float] = deque(maxlen=window)
        self.published = 0
        self.errors: Counter[str] = Counter()
        self.missed_deadlines = 0
        self.ticks_without_frame = 0
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None

    def record_tick(self, timing: TickTiming, published_at: float) -> None:
        """An action published from a model run: its stage timings, then the publish."""
        for stage in STAGES:
            self._timings[stage].append(getattr(timing, stage))
        self.record_open_loop(published_at)

    def record_open_loop(self, published_at: float) -> None:
        """An action published from a queued chunk step (no model run: counts for the rate, not the latencies)."""
        self._publish_times.append(published_at)
        self.published += 1

    def record_error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        self.last_error = f"{kind}: {message}"[:300]

    def achieved_rate(self) -> float:
        t = self._publish_times
        if len(t) < 2 or t[-1] <= t[0]:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    def latencies_ms(self) -> dict[str, dict[str, float]]:
        return {s: percentiles_ms(self._timings[s]) for s in STAGES}

    def snapshot(self, *, frames_received: int, frames_dropped: int, frames_stale: int) -> dict[str, Any]:
        """A JSON-serialisable status message."""
        return {
            "model": self.model,
            "instruction": self.instruction,
            "connected": self.connected,
            "target_rate_hz": self.target_rate,
            "achieved_rate_hz": round(self.achieved_rate(), 3),
            "actions_published": self.published,
            "latency_ms": self.latencies_ms(),
            "frames": {"received": frames_received, "dropped": frames_dropped, "stale": frames_stale},
            "missed_deadlines": self.missed_deadlines,
            "ticks_without_frame": self.ticks_without_frame,
            "reconnects": self.reconnects,
            "errors": dict(self.errors),
            "last_error": self.last_error,
        }
