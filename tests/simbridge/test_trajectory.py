"""JointTrajectory time interpolation (linear and cubic Hermite) and rejection of invalid trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from crane_x7_vla.simbridge.trajectory import Trajectory, TrajectoryError, TrajectoryPoint


def test_linear_between_points_and_hold_after_end() -> None:
    traj = Trajectory([0.0, 0.0], [TrajectoryPoint(1.0, np.array([1.0, -2.0]))])
    assert np.allclose(traj.sample(0.5), [0.5, -1.0])
    assert np.allclose(traj.sample(5.0), [1.0, -2.0]) and traj.duration == 1.0
    assert np.allclose(traj.sample(-1.0), [0.0, 0.0])


def test_cubic_with_velocities_hits_points_and_is_smooth() -> None:
    pts = [TrajectoryPoint(1.0, np.array([1.0]), np.array([0.0])), TrajectoryPoint(2.0, np.array([0.0]), np.array([0.0]))]
    traj = Trajectory([0.0], pts)
    assert traj.sample(1.0)[0] == pytest.approx(1.0)
    # Zero end velocities: the segment is an S-curve (slow near the ends, symmetric about the middle).
    assert traj.sample(0.5)[0] == pytest.approx(0.5)
    assert traj.sample(0.1)[0] < 0.1
    ts = np.linspace(0, 2, 201)
    values = np.array([traj.sample(t)[0] for t in ts])
    assert np.max(np.abs(np.diff(values))) < 0.02


def test_point_at_zero_replaces_start() -> None:
    traj = Trajectory([5.0], [TrajectoryPoint(0.0, np.array([1.0])), TrajectoryPoint(1.0, np.array([2.0]))])
    assert traj.sample(0.0)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("points", [
    [],
    [TrajectoryPoint(1.0, np.array([1.0])), TrajectoryPoint(0.5, np.array([1.0]))],
    [TrajectoryPoint(1.0, np.array([np.nan]))],
    [TrajectoryPoint(1.0, np.array([1.0, 2.0]))],
])
def test_invalid_trajectories_rejected(points: list[TrajectoryPoint]) -> None:
    with pytest.raises(TrajectoryError):
        Trajectory([0.0], points)
