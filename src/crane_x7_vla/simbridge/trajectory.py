"""Time interpolation of a ``trajectory_msgs/JointTrajectory``, like ros2_control's JointTrajectoryController.

The controller starts from the state at goal acceptance (t = 0) and passes through every point at its
``time_from_start``; between points it uses a cubic Hermite segment when both ends carry velocities and a
linear one otherwise (the JTC's "splines" interpolation degrades the same way). After the last point it
holds the last positions. Pure numpy; the sim bridge samples it every physics tick.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class TrajectoryPoint:
    time: float  # s from trajectory start
    positions: NDArray[np.float64]  # (J,)
    velocities: NDArray[np.float64] | None = None  # (J,) or None


class TrajectoryError(ValueError):
    """A trajectory the controller rejects (the JTC rejects the same cases)."""


class Trajectory:
    """Positions over time through ``points``, starting at ``start`` (J,) at t = 0."""

    def __init__(self, start: Sequence[float] | NDArray[np.floating], points: Sequence[TrajectoryPoint]) -> None:
        if not points:
            raise TrajectoryError("trajectory has no points")
        q0 = np.asarray(start, dtype=np.float64)
        times = [p.time for p in points]
        if any(t < 0 for t in times) or any(b <= a for a, b in itertools.pairwise(times)):
            raise TrajectoryError(f"time_from_start must be >= 0 and strictly increasing, got {times}")
        for p in points:
            if p.positions.shape != q0.shape or not np.all(np.isfinite(p.positions)):
                raise TrajectoryError(f"point positions must be {q0.shape[0]} finite numbers")
            if p.velocities is not None and (p.velocities.shape != q0.shape or not np.all(np.isfinite(p.velocities))):
                raise TrajectoryError(f"point velocities must be {q0.shape[0]} finite numbers")
        # A first point at t=0 replaces the start state (the JTC does the same).
        first = TrajectoryPoint(0.0, q0, np.zeros_like(q0))
        self._points = [first, *points] if points[0].time > 0 else list(points)
        if self._points[0].velocities is None:
            self._points[0] = TrajectoryPoint(0.0, self._points[0].positions, np.zeros_like(q0))

    @property
    def duration(self) -> float:
        return self._points[-1].time

    @property
    def final(self) -> NDArray[np.float64]:
        return self._points[-1].positions

    def sample(self, t: float) -> NDArray[np.float64]:
        """(J,) positions at ``t`` seconds after start (clamped to [0, duration])."""
        pts = self._points
        if t <= pts[0].time:
            return pts[0].positions.copy()
        if t >= pts[-1].time:
            return pts[-1].positions.copy()
        i = int(np.searchsorted([p.time for p in pts], t, side="right")) - 1
        a, b = pts[i], pts[i + 1]
        h = b.time - a.time
        s = (t - a.time) / h
        if a.velocities is None or b.velocities is None:
            return a.positions + s * (b.positions - a.positions)
        # Cubic Hermite basis on s in [0, 1]; velocities scale by the segment length h.
        h00 = 2 * s**3 - 3 * s**2 + 1
        h10 = s**3 - 2 * s**2 + s
        h01 = -2 * s**3 + 3 * s**2
        h11 = s**3 - s**2
        return h00 * a.positions + h10 * h * a.velocities + h01 * b.positions + h11 * h * b.velocities
