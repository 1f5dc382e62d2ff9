"""Numeric inverse kinematics of the CRANE-X7 (pure numpy, batched): damped least squares on the TCP pose.

The Jacobian is built analytically from :func:`crane_x7_vla.robot.link_poses` (column i = joint axis x lever
arm for position, the joint axis for orientation): one FK pass per iteration instead of the 14 that the
finite-difference :func:`crane_x7_vla.robot.position_jacobian` needs, which it matches (tested).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla.robot import ARM_JOINTS, ARM_LOWER, ARM_UPPER, TCP_OFFSET, link_poses

F64 = NDArray[np.float64]
_LOWER = np.asarray(ARM_LOWER)
_UPPER = np.asarray(ARM_UPPER)
_AXES = np.asarray([j.axis for j in ARM_JOINTS])  # (7, 3) in each joint's child frame


def tcp_jacobian(q: F64) -> tuple[F64, F64, F64]:
    """For arm joints q (N, 7): TCP position (N, 3), TCP rotation (N, 3, 3), Jacobian (N, 6, 7) [linear; angular]."""
    poses = link_poses(q)
    frames = np.stack([poses[j.child] for j in ARM_JOINTS], axis=1)  # (N, 7, 4, 4)
    grip = frames[:, -1]
    p = grip[:, :3, 3] + grip[:, :3, :3] @ np.asarray(TCP_OFFSET)
    axes = np.einsum("nkij,kj->nki", frames[:, :, :3, :3], _AXES)  # (N, 7, 3) world joint axes
    origins = frames[:, :, :3, 3]  # joint i rotates about the child frame's origin
    lin = np.cross(axes, p[:, None, :] - origins)  # (N, 7, 3)
    jac = np.concatenate([lin, axes], axis=-1).transpose(0, 2, 1)  # (N, 6, 7)
    return p, grip[:, :3, :3], jac


def orientation_error(r: F64, r_goal: F64) -> F64:
    """Small-angle rotation vector (N, 3) taking ``r`` (N, 3, 3) towards ``r_goal`` (world frame)."""
    return 0.5 * np.sum(np.cross(r.transpose(0, 2, 1), r_goal.transpose(0, 2, 1)), axis=1)


def solve_ik(
    q_init: F64,
    target_pos: F64,
    target_rot: F64,
    iterations: int = 30,
    damping: float = 0.02,
    rot_weight: float = 0.3,
    tol: float = 1e-4,
) -> tuple[F64, F64]:
    """Joint angles (N, 7) reaching ``target_pos`` (N, 3) with TCP rotation ``target_rot`` (N, 3, 3).

    Damped least squares, started from ``q_init`` (warm starts make it converge in a few iterations) and
    clipped to the joint limits each iteration. Returns (q, final position error norm (N,)).
    """
    q = np.clip(np.asarray(q_init, dtype=np.float64)[..., :7].copy(), _LOWER, _UPPER)
    w = np.array([1.0, 1.0, 1.0, rot_weight, rot_weight, rot_weight])
    err_norm = np.full(len(q), np.inf)
    for _ in range(iterations):
        p, r, jac = tcp_jacobian(q)
        err = np.concatenate([target_pos - p, orientation_error(r, target_rot)], axis=-1) * w  # (N, 6)
        err_norm = np.linalg.norm(target_pos - p, axis=-1)
        if (np.linalg.norm(err, axis=-1) < tol).all():
            break
        jw = jac * w[None, :, None]
        jjt = jw @ jw.transpose(0, 2, 1) + damping**2 * np.eye(6)
        dq = (jw.transpose(0, 2, 1) @ np.linalg.solve(jjt, err[..., None]))[..., 0]
        # Cap the step so a far target cannot swing the arm through a singularity in one iteration.
        dq = dq * np.minimum(1.0, 0.3 / (np.abs(dq).max(axis=-1, keepdims=True) + 1e-12))
        q = np.clip(q + dq, _LOWER, _UPPER)
    return q, err_norm


def down_rotation(heading: F64) -> F64:
    """TCP rotations (N, 3, 3) with gripper z pointing down and the finger-opening x axis at ``heading`` (N,)."""
    c, s = np.cos(heading), np.sin(heading)
    x = np.stack([c, s, np.zeros_like(c)], -1)
    z = np.broadcast_to(np.array([0.0, 0.0, -1.0]), x.shape)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)
