"""CRANE-X7 facts as code: the single source of truth for names, limits, poses and interfaces.

Numbers are transcribed from the public robot description (RT Corporation's crane_x7_description, ROS 2
"humble" branch) as collected in ``shared/specs/crane_x7.yaml``. No mesh or description file is copied;
the simulator models in :mod:`crane_x7_vla.robot.model` are generated from these numbers with primitives.

Conventions (URDF): a joint origin is the pose of the child link frame in the parent link frame. Every
arm and gripper joint has rpy = 0, so at q = 0 all link frames are parallel to ``base_link`` (z up, arm
pointing straight up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class JointSpec:
    """One revolute joint of the CRANE-X7 (arm or gripper)."""

    name: str
    label: str
    parent: str
    child: str
    xyz: Vec3  # origin of the child frame in the parent frame (m)
    axis: Vec3  # rotation axis in the child frame (unit vector)
    lower: float  # ROS 2 lower position limit (rad)
    upper: float  # ROS 2 upper position limit (rad)
    velocity: float = 4.81710873  # rad/s (xacro joints_vlimit)
    effort: float = 4.0  # N*m
    damping: float = 1.0e-6
    friction: float = 0.2
    mimic: str | None = None  # name of the joint this one mirrors (multiplier 1, offset 0)


@dataclass(frozen=True)
class LinkSpec:
    """Mass properties and a primitive-geometry envelope of one link (all in the link frame)."""

    name: str
    mass: float
    com: Vec3
    inertia: tuple[float, float, float, float, float, float]  # ixx ixy ixz iyy iyz izz
    inertia_rpy: Vec3
    aabb: tuple[Vec3, Vec3]  # (min xyz, max xyz) collision envelope


@dataclass(frozen=True)
class FixedJointSpec:
    name: str
    parent: str
    child: str
    xyz: Vec3
    rpy: Vec3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera rigidly attached to ``parent`` (``""`` = world).

    ``xyz``/``rpy`` place the camera's *body* frame (x = viewing direction, y = left, z = up; the ROS
    ``camera_link`` convention) in the parent frame.
    """

    name: str
    parent: str
    xyz: Vec3
    rpy: Vec3
    fovy_deg: float
    width: int = 224
    height: int = 224
    near: float = 0.01
    far: float = 10.0


# --------------------------------------------------------------------------------------------------
# Kinematic chain
# --------------------------------------------------------------------------------------------------
BASE_LINK: Final = "base_link"
MOUNTING_PLATE_LINK: Final = "crane_x7_mounting_plate_link"
GRIPPER_BASE_LINK: Final = "crane_x7_gripper_base_link"

FIXED_JOINTS: Final[tuple[FixedJointSpec, ...]] = (
    FixedJointSpec("crane_x7_mounting_plate_joint", BASE_LINK, MOUNTING_PLATE_LINK, (0.0, 0.0, 0.0)),
    FixedJointSpec(
        "crane_x7_shoulder_fixed_part_mount_joint",
        MOUNTING_PLATE_LINK,
        "crane_x7_shoulder_fixed_part_link",
        (0.0, 0.0, 0.005),  # mounting plate thickness
    ),
)

ARM_JOINTS: Final[tuple[JointSpec, ...]] = (
    JointSpec("crane_x7_shoulder_fixed_part_pan_joint", "J1", "crane_x7_shoulder_fixed_part_link",
              "crane_x7_shoulder_revolute_part_link", (0.0, 0.0, 0.036), (0.0, 0.0, 1.0),
              -2.740167, 2.740167, effort=10.0),
    JointSpec("crane_x7_shoulder_revolute_part_tilt_joint", "J2", "crane_x7_shoulder_revolute_part_link",
              "crane_x7_upper_arm_fixed_part_link", (0.0, 0.0, 0.064), (0.0, -1.0, 0.0),
              -1.570796, 1.570796, effort=10.0),
    JointSpec("crane_x7_upper_arm_revolute_part_twist_joint", "J3", "crane_x7_upper_arm_fixed_part_link",
              "crane_x7_upper_arm_revolute_part_link", (0.0, 0.0, 0.065), (0.0, 0.0, 1.0),
              -2.740167, 2.740167),
    JointSpec("crane_x7_upper_arm_revolute_part_rotate_joint", "J4", "crane_x7_upper_arm_revolute_part_link",
              "crane_x7_lower_arm_fixed_part_link", (0.0, 0.0, 0.185), (0.0, -1.0, 0.0),
              -2.775074, 0.0),
    JointSpec("crane_x7_lower_arm_fixed_part_joint", "J5", "crane_x7_lower_arm_fixed_part_link",
              "crane_x7_lower_arm_revolute_part_link", (0.0, 0.0, 0.121), (0.0, 0.0, 1.0),
              -2.740167, 2.740167),
    JointSpec("crane_x7_lower_arm_revolute_part_joint", "J6", "crane_x7_lower_arm_revolute_part_link",
              "crane_x7_wrist_link", (0.0, 0.0, 0.129), (0.0, -1.0, 0.0),
              -1.570796, 1.570796),
    JointSpec("crane_x7_wrist_joint", "J7", "crane_x7_wrist_link", GRIPPER_BASE_LINK,
              (0.0, 0.0, 0.019), (0.0, 0.0, 1.0), -2.914700, 2.914700),
)

GRIPPER_JOINTS: Final[tuple[JointSpec, ...]] = (
    JointSpec("crane_x7_gripper_finger_a_joint", "gripper", GRIPPER_BASE_LINK,
              "crane_x7_gripper_finger_a_link", (-0.012, 0.0, 0.024), (0.0, -1.0, 0.0),
              -0.087266, 1.570796, friction=0.8),
    JointSpec("crane_x7_gripper_finger_b_joint", "gripper mimic", GRIPPER_BASE_LINK,
              "crane_x7_gripper_finger_b_link", (0.012, 0.0, 0.024), (0.0, 1.0, 0.0),
              -0.087266, 1.570796, friction=0.8, mimic="crane_x7_gripper_finger_a_joint"),
)

ALL_JOINTS: Final[tuple[JointSpec, ...]] = ARM_JOINTS + GRIPPER_JOINTS
ARM_JOINT_NAMES: Final[tuple[str, ...]] = tuple(j.name for j in ARM_JOINTS)
GRIPPER_JOINT_NAMES: Final[tuple[str, ...]] = tuple(j.name for j in GRIPPER_JOINTS)
GRIPPER_JOINT_NAME: Final = GRIPPER_JOINTS[0].name  # the actuated one (servo id 9)
JOINT_NAMES: Final[tuple[str, ...]] = ARM_JOINT_NAMES + GRIPPER_JOINT_NAMES

NUM_ARM_JOINTS: Final = 7
ACTION_DIM: Final = 8  # 7 absolute arm joint targets (rad) + gripper finger_a target (rad)

ARM_LOWER: Final[tuple[float, ...]] = tuple(j.lower for j in ARM_JOINTS)
ARM_UPPER: Final[tuple[float, ...]] = tuple(j.upper for j in ARM_JOINTS)
ARM_VELOCITY_LIMITS: Final[tuple[float, ...]] = tuple(j.velocity for j in ARM_JOINTS)
GRIPPER_LOWER: Final = GRIPPER_JOINTS[0].lower
GRIPPER_UPPER: Final = GRIPPER_JOINTS[0].upper
ACTION_LOWER: Final[tuple[float, ...]] = ARM_LOWER + (GRIPPER_LOWER,)
ACTION_UPPER: Final[tuple[float, ...]] = ARM_UPPER + (GRIPPER_UPPER,)

# Zero-pose heights (m, in base_link) of each joint origin, as listed by the spec: used by tests.
ZERO_POSE_JOINT_HEIGHTS: Final[dict[str, float]] = {
    "J1": 0.041, "J2": 0.105, "J3": 0.170, "J4": 0.355, "J5": 0.476, "J6": 0.605, "J7": 0.624,
    "fingers": 0.648,
}

# --------------------------------------------------------------------------------------------------
# Poses and gripper
# --------------------------------------------------------------------------------------------------
# [0, pi/8, 0, -5pi/8, 0, -pi/4, pi/2]: the NOPLAB rest pose, gripper pointing down in front of the base.
REST_ARM_QPOS: Final[tuple[float, ...]] = (0.0, 0.392699, 0.0, -1.963495, 0.0, -0.785398, 1.570796)
GRIPPER_OPEN: Final = 1.047198  # 60 deg, RT sample "open"
GRIPPER_GRASP: Final = 0.349066  # 20 deg, RT pick_and_place "close"
GRIPPER_CLOSED: Final = 0.0  # fingers parallel and touching
REST_QPOS: Final[tuple[float, ...]] = REST_ARM_QPOS + (GRIPPER_OPEN,)  # 8-vector (arm + finger_a)

# Tool centre point: the grasp point between the fingers, on gripper_base z (no TCP frame is published;
# pick_and_place_tf places gripper_base 0.07 m above the object). Fingertips are at 0.084 m.
TCP_OFFSET: Final[Vec3] = (0.0, 0.0, 0.07)
FINGER_LENGTH: Final = 0.060

# --------------------------------------------------------------------------------------------------
# Links (mass properties from RT xacro; aabb from the collision envelopes)
# --------------------------------------------------------------------------------------------------
_R90: Final[Vec3] = (1.570795, 0.0, 0.0)
LINKS: Final[tuple[LinkSpec, ...]] = (
    LinkSpec("crane_x7_shoulder_fixed_part_link", 0.388, (-6.73e-3, -1.00e-6, 1.79e-2),
             (3.25e-4, 1.20e-9, -4.71e-5, 4.83e-4, 1.95e-8, 5.86e-4), (0, 0, 0),
             ((-0.0498, -0.0498, -0.0045), (0.0498, 0.0498, 0.050))),
    LinkSpec("crane_x7_shoulder_revolute_part_link", 0.253, (2.43e-4, -1.05e-4, 4.70e-2),
             (1.79e-4, -7.32e-8, 8.89e-7, 1.76e-4, 6.23e-7, 8.96e-5), (0, 0, 0),
             ((-0.034, -0.0335, 0.0), (0.034, 0.0335, 0.098))),
    LinkSpec("crane_x7_upper_arm_fixed_part_link", 0.136, (3.10e-5, 1.90e-5, 3.42e-2),
             (1.68e-4, 2.05e-8, -4.00e-7, 9.62e-5, 6.24e-8, 1.34e-4), _R90,
             ((-0.0327, -0.035, -0.027), (0.0327, 0.035, 0.065))),
    LinkSpec("crane_x7_upper_arm_revolute_part_link", 0.321, (-1.37e-2, -8.10e-5, 9.52e-2),
             (1.82e-3, 7.54e-7, -3.73e-5, 1.88e-3, 4.15e-6, 1.59e-4), (0, 0, 0),
             ((-0.0535, -0.034, -0.014), (0.0341, 0.034, 0.214))),
    LinkSpec("crane_x7_lower_arm_fixed_part_link", 0.222, (-9.39e-3, 6.40e-5, 8.04e-2),
             (4.89e-4, -3.90e-6, 8.29e-8, 1.14e-4, 2.82e-6, 5.03e-4), _R90,
             ((-0.045, -0.0311, -0.025), (0.0312, 0.0311, 0.135))),
    LinkSpec("crane_x7_lower_arm_revolute_part_link", 0.207, (-8.40e-5, 4.62e-4, 6.37e-2),
             (2.90e-4, 1.00e-7, -4.77e-7, 2.57e-4, -1.69e-5, 8.75e-5), (0, 0, 0),
             ((-0.0285, -0.0345, 0.0), (0.0285, 0.0345, 0.147))),
    LinkSpec("crane_x7_wrist_link", 0.14, (6.10e-3, 8.26e-4, -3.55e-3),
             (4.01e-5, -2.91e-6, 6.39e-7, 6.13e-5, -4.90e-7, 7.35e-5), _R90,
             ((-0.0425, -0.0275, -0.0425), (0.0425, 0.0295, 0.0234))),
    LinkSpec(GRIPPER_BASE_LINK, 0.121, (1.08e-4, -1.03e-3, 2.08e-2),
             (3.20e-5, -9.45e-8, 2.61e-7, 4.14e-5, 3.88e-7, 4.29e-5), (0, 0, 0),
             ((-0.0302, -0.0324, 0.0), (0.0302, 0.0288, 0.0422))),
    LinkSpec("crane_x7_gripper_finger_a_link", 0.0158, (-2.65e-3, 3.54e-3, 2.69e-2),
             (1.01e-5, -1.97e-7, -9.89e-8, 4.95e-6, 5.37e-7, 6.24e-6), _R90,
             ((-0.013, -0.027, -0.0126), (0.013, 0.027, 0.060))),
    LinkSpec("crane_x7_gripper_finger_b_link", 0.0139, (3.01e-3, 2.85e-3, 3.09e-2),
             (7.48e-6, 3.61e-7, 6.34e-8, 4.09e-6, 2.28e-7, 4.37e-6), _R90,
             ((-0.0129, -0.027, -0.0129), (0.0129, 0.027, 0.060))),
)
MOUNTING_PLATE_AABB: Final[tuple[Vec3, Vec3]] = ((-0.080, -0.050, 0.0), (0.050, 0.050, 0.005))

# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------
# Wrist RealSense D435 (RT ros2 description): camera_base at [0, 0.0445, 0.009] in gripper_base with
# rpy [-pi/2, -pi/2, 0], i.e. camera x (view) -> gripper +z, camera y -> gripper +x, camera z -> gripper +y.
# The colour optical centre sits at [0.0325, 0.0445, 0.0298] in the gripper frame. Real D435 colour fov
# is 69 x 42 deg; we render square 224 px images (the VLA input size) with a 58 deg vertical fov.
WRIST_CAMERA: Final = CameraSpec(
    name="wrist_camera", parent=GRIPPER_BASE_LINK, xyz=(0.0325, 0.0445, 0.0298),
    rpy=(-1.570796, -1.570796, 0.0), fovy_deg=58.0,
)
# A fixed third-person camera at the front right of the workspace, 41 deg down, looking back at the robot
# (world frame). It sees the base, the arm and the cube/goal regions at once, and the cube stays visible under
# the fingers while they close (a view straight from the front had the gripper hide the cube at the grasp).
THIRD_PERSON_CAMERA: Final = CameraSpec(
    name="third_person_camera", parent="", xyz=(0.68, -0.35, 0.45), rpy=(0.0, 0.72, 2.385),
    fovy_deg=45.0,
)

# --------------------------------------------------------------------------------------------------
# ROS 2 interfaces (real robot and the sim bridge)
# --------------------------------------------------------------------------------------------------
CAMERA_COMPRESSED_TOPIC: Final = "/camera/color/image_raw/compressed"
JOINT_STATES_TOPIC: Final = "/joint_states"
PREDICTED_ACTION_TOPIC: Final = "/vla/predicted_action"
UPDATE_INSTRUCTION_TOPIC: Final = "/vla/update_instruction"
INFERENCE_STATUS_TOPIC: Final = "/vla/status"
LANGUAGE_INSTRUCTION_TOPIC: Final = "/task/language_instruction"
ARM_ACTION_NAME: Final = "/crane_x7_arm_controller/follow_joint_trajectory"
ARM_ACTION_TYPE: Final = "control_msgs/FollowJointTrajectory"
ARM_TRAJECTORY_TOPIC: Final = "/crane_x7_arm_controller/joint_trajectory"
GRIPPER_ACTION_NAME: Final = "/crane_x7_gripper_controller/gripper_cmd"
GRIPPER_ACTION_TYPE: Final = "control_msgs/GripperCommand"
GRIPPER_GOAL_TOLERANCE: Final = 0.1  # rad (GripperActionController goal_tolerance)
GRIPPER_MAX_EFFORT: Final = 1.0
CONTROLLER_UPDATE_RATE_HZ: Final = 200.0
CAMERA_RATE_HZ: Final = 30.0
JOINT_STATES_RATE_HZ: Final = 100.0


@dataclass(frozen=True)
class RobotInterfaces:
    """Topic and action names grouped for code that wants to pass them around."""

    camera_compressed: str = CAMERA_COMPRESSED_TOPIC
    joint_states: str = JOINT_STATES_TOPIC
    predicted_action: str = PREDICTED_ACTION_TOPIC
    update_instruction: str = UPDATE_INSTRUCTION_TOPIC
    status: str = INFERENCE_STATUS_TOPIC
    arm_action: str = ARM_ACTION_NAME
    arm_trajectory: str = ARM_TRAJECTORY_TOPIC
    gripper_action: str = GRIPPER_ACTION_NAME
    extra: dict[str, str] = field(default_factory=dict)


def link(name: str) -> LinkSpec:
    """The :class:`LinkSpec` called ``name`` (KeyError names the known links)."""
    for spec in LINKS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown CRANE-X7 link {name!r}; known: {[s.name for s in LINKS]}")
