"""Forward kinematics of the CRANE-X7 in numpy (vectorised over any leading batch shape).

Pure functions, no simulator: the simulators are checked against these, and the scripted expert's
numeric IK is built on them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.robot.spec import ARM_JOINTS, FIXED_JOINTS, GRIPPER_JOINTS, TCP_OFFSET, JointSpec

F64 = NDArray[np.float64]


def rpy_to_matrix(rpy: ArrayLike) -> F64:
    """URDF fixed-axis roll/pitch/yaw -> rotation matrix ``Rz(y) @ Ry(p) @ Rx(r)``; shape (..., 3, 3)."""
    r, p, y = np.moveaxis(np.asarray(rpy, dtype=np.float64), -1, 0)
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.stack(
        [
            np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
            np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
            np.stack([-sp, cp * sr, cp * cr], -1),
        ],
        -2,
    )


def axis_angle_to_matrix(axis: ArrayLike, angle: ArrayLike) -> F64:
    """Rodrigues' formula for a fixed unit ``axis`` (3,) and angles of any shape -> (..., 3, 3)."""
    k = np.asarray(axis, dtype=np.float64)
    a = np.asarray(angle, dtype=np.float64)[..., None, None]
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(a) * kx + (1.0 - np.cos(a)) * (kx @ kx)


def _translation(xyz: ArrayLike, batch: tuple[int, ...]) -> F64:
    t = np.broadcast_to(np.eye(4), (*batch, 4, 4)).copy()
    t[..., :3, 3] = np.asarray(xyz, dtype=np.float64)
    return t


def _joint_transform(joint: JointSpec, q: F64) -> F64:
    t = _translation(joint.xyz, q.shape)
    t[..., :3, :3] = axis_angle_to_matrix(joint.axis, q)
    return t


def _base_to_first_joint_parent(batch: tuple[int, ...]) -> F64:
    t = _translation((0.0, 0.0, 0.0), batch)
    for fixed in FIXED_JOINTS:
        f = _translation(fixed.xyz, batch)
        f[..., :3, :3] = rpy_to_matrix(fixed.rpy)
        t = t @ f
    return t


def link_poses(qpos: ArrayLike) -> dict[str, F64]:
    """Poses (…, 4, 4) in ``base_link`` of every moving link for joint vectors ``qpos``.

    ``qpos`` has 7 (arm) or 8 (arm + gripper finger_a) values in the last axis; finger_b mirrors finger_a.
    """
    q = np.asarray(qpos, dtype=np.float64)
    if q.shape[-1] not in (7, 8):
        raise ValueError(f"qpos must have 7 or 8 values in its last axis, got shape {q.shape}")
    batch = q.shape[:-1]
    t = _base_to_first_joint_parent(batch)
    poses: dict[str, F64] = {}
    for i, joint in enumerate(ARM_JOINTS):
        t = t @ _joint_transform(joint, q[..., i])
        poses[joint.child] = t
    grip = q[..., 7] if q.shape[-1] == 8 else np.zeros(batch)
    for finger in GRIPPER_JOINTS:
        poses[finger.child] = t @ _joint_transform(finger, grip)
    return poses


def joint_origins(qpos: ArrayLike) -> dict[str, F64]:
    """Positions (…, 3) in ``base_link`` of each arm joint origin (keyed J1..J7)."""
    poses = link_poses(qpos)
    return {j.label: poses[j.child][..., :3, 3] for j in ARM_JOINTS}


def gripper_pose(qpos: ArrayLike) -> F64:
    """Pose (…, 4, 4) of ``crane_x7_gripper_base_link`` in ``base_link``."""
    q = np.asarray(qpos, dtype=np.float64)
    return link_poses(q[..., :7])[ARM_JOINTS[-1].child]


def tcp_pose(qpos: ArrayLike) -> F64:
    """Pose (…, 4, 4) of the tool centre point (grasp point between the fingers) in ``base_link``."""
    g = gripper_pose(qpos)
    offset = _translation(TCP_OFFSET, g.shape[:-2])
    return g @ offset


def position_jacobian(qpos: ArrayLike, eps: float = 1e-6) -> F64:
    """Central-difference Jacobian (…, 3, 7) of the TCP position w.r.t. the 7 arm joints."""
    q = np.asarray(qpos, dtype=np.float64)[..., :7]
    cols = []
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = eps
        cols.append((tcp_pose(q + dq)[..., :3, 3] - tcp_pose(q - dq)[..., :3, 3]) / (2 * eps))
    return np.stack(cols, axis=-1)
