"""CRANE-X7 facts (:mod:`.spec`, the single source of truth) and forward kinematics (:mod:`.kinematics`)."""

from crane_x7_vla.robot.kinematics import (  # noqa: F401
    gripper_pose,
    joint_origins,
    link_poses,
    position_jacobian,
    rpy_to_matrix,
    tcp_pose,
)
from crane_x7_vla.robot.spec import *  # noqa: F403  (the spec module is this package's namespace)
