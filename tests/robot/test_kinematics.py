"""FK against the spec's zero-pose heights and an independently built chain of homogeneous transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crane_x7_vla import robot


def test_zero_pose_joint_heights_match_spec() -> None:
    origins = robot.joint_origins(np.zeros(8))
    for label, height in robot.ZERO_POSE_JOINT_HEIGHTS.items():
        if label == "fingers":
            z = robot.link_poses(np.zeros(8))["crane_x7_gripper_finger_a_link"][2, 3]
        else:
            z = origins[label][2]
        assert z == pytest.approx(height, abs=1e-9), label
        if label != "fingers":
            assert origins[label][:2] == pytest.approx([0.0, 0.0], abs=1e-12)


def _rot(axis: str, a: float) -> np.ndarray:
    """Elementary rotation, written out by hand (independent of the package's Rodrigues code)."""
    c, s = math.cos(a), math.sin(a)
    m = np.eye(4)
    if axis == "z":
        m[:2, :2] = [[c, -s], [s, c]]
    elif axis == "y":
        m[0, 0], m[0, 2], m[2, 0], m[2, 2] = c, s, -s, c
    return m


def _trans(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = [x, y, z]
    return m


def _reference_gripper_pose(q: np.ndarray) -> np.ndarray:
    # Offsets and axes read off the spec by hand: J1 +z, J2 -y, J3 +z, J4 -y, J5 +z, J6 -y, J7 +z.
    chain = [(0.041, "z", 1), (0.064, "y", -1), (0.065, "z", 1), (0.185, "y", -1), (0.121, "z", 1),
             (0.129, "y", -1), (0.019, "z", 1)]
    t = np.eye(4)
    for (dz, axis, sign), qi in zip(chain, q, strict=True):
        t = t @ _trans(0, 0, dz) @ _rot(axis, sign * qi)
    return t


def test_fk_matches_independent_chain_for_random_joints() -> None:
    rng = np.random.default_rng(0)
    lo, hi = np.array(robot.ARM_LOWER), np.array(robot.ARM_UPPER)
    qs = rng.uniform(lo, hi, size=(50, 7))
    batched = robot.gripper_pose(qs)
    for q, pose in zip(qs, batched, strict=True):
        np.testing.assert_allclose(pose, _reference_gripper_pose(q), atol=1e-12)


def test_tcp_is_offset_along_gripper_z() -> None:
    q = np.array(robot.REST_QPOS)
    g, t = robot.gripper_pose(q), robot.tcp_pose(q)
    np.testing.assert_allclose(t[:3, 3], g[:3, 3] + g[:3, 2] * robot.TCP_OFFSET[2], atol=1e-12)
    assert g[2, 2] < -0.5 and g[0, 3] > 0.1  # rest pose: gripper tilted down, in front


def test_jacobian_matches_finite_motion() -> None:
    q = np.array(robot.REST_ARM_QPOS)
    jac = robot.position_jacobian(q)
    dq = np.full(7, 1e-4)
    predicted = robot.tcp_pose(q)[:3, 3] + jac @ dq
    np.testing.assert_allclose(robot.tcp_pose(q + dq)[:3, 3], predicted, atol=1e-7)


def test_limits_and_names_are_consistent() -> None:
    assert len(robot.ARM_JOINT_NAMES) == 7 and len(robot.JOINT_NAMES) == 9
    assert all(lo < hi for lo, hi in zip(robot.ACTION_LOWER, robot.ACTION_UPPER, strict=True))
    assert all(lo <= q <= hi for lo, q, hi in zip(robot.ACTION_LOWER, robot.REST_QPOS, robot.ACTION_UPPER, strict=True))
    assert robot.GRIPPER_CLOSED < robot.GRIPPER_GRASP < robot.GRIPPER_OPEN


def test_bad_qpos_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="7 or 8 values"):
        robot.link_poses(np.zeros(5))
