"""A primitive-geometry CRANE-X7 model generated from :mod:`crane_x7_vla.robot.spec`, written as URDF or MJCF.

Design: one in-memory description (:func:`describe`) is built from the spec (joints, link mass properties,
collision envelopes, cameras) and *both* writers (:func:`urdf` for ManiSkill/Genesis, :func:`mjcf` for MuJoCo)
serialise that same description, so the simulators cannot drift apart. No mesh is used: each link is one box
(or cylinder) fitted to its measured envelope, and each finger carries a rubber pad so that the position
target :data:`~crane_x7_vla.robot.spec.GRIPPER_GRASP` squeezes a 4 cm cube at the fingertips as on the real arm.

Numbers that are not robot facts but simulator choices (PD gains, pad size, armature) live here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal
from xml.sax.saxutils import quoteattr

import numpy as np

from crane_x7_vla.robot.kinematics import axis_angle_to_matrix, rpy_to_matrix
from crane_x7_vla.robot.spec import (
    ALL_JOINTS,
    BASE_LINK,
    FINGER_LENGTH,
    FIXED_JOINTS,
    GRIPPER_BASE_LINK,
    GRIPPER_GRASP,
    GRIPPER_JOINTS,
    LINKS,
    MOUNTING_PLATE_AABB,
    MOUNTING_PLATE_LINK,
    THIRD_PERSON_CAMERA,
    WRIST_CAMERA,
    CameraSpec,
    JointSpec,
    Vec3,
)

# --------------------------------------------------------------------------------------------------
# Simulator choices (not robot facts)
# --------------------------------------------------------------------------------------------------
# Sim PD gains used by the public ManiSkill/Genesis CRANE-X7 models (spec: "arm kp 1e3 kd 1e2 force 1e4").
SIM_KP: Final = 1.0e3
SIM_KD: Final = 1.0e2
SIM_FORCE_LIMIT: Final = 1.0e4
# The gripper servo cannot push 1e4 N*m: its torque is capped at the finger joint's effort limit. (The real
# controller's max_effort of 1 N*m would not even beat the two fingers' joint friction of 0.8 N*m each.)
GRIPPER_FORCE_LIMIT: Final = GRIPPER_JOINTS[0].effort
# Stiffer-than-default contacts on the pads (MuJoCo solref/solimp) so a squeezed cube does not sink in.
PAD_SOLREF: Final = (0.004, 1.0)
PAD_SOLIMP: Final = (0.95, 0.99, 0.001, 0.5, 2.0)
# Reflected rotor inertia (kg m^2) of the geared servos; also keeps the light distal links numerically stable.
ARMATURE: Final = 0.005
FINGER_PAD_FRICTION: Final = 1.5
FINGER_PAD_THICKNESS: Final = 0.008  # rubber pad block on the inner face of each finger (m)
FINGER_PLATE_INNER: Final = 0.004  # inner face of the finger plate, from the finger joint axis (m)
FINGER_PAD_HEIGHT: Final = 0.025  # pad spans the last 2.5 cm of the finger
PAD_REFERENCE_WIDTH: Final = 0.04  # object width held face-on by the pads ...
PAD_CONTACT_Q: Final = GRIPPER_GRASP + 0.06  # ... at this finger angle (rad)
# D435 housing on the wrist (RT ros2 description, camera_base box), in the gripper_base frame.
D435_BOX_CENTRE: Final[Vec3] = (0.0, 0.0445, 0.0215)
D435_BOX_SIZE: Final[Vec3] = (0.09, 0.025, 0.025)
D435_MASS: Final = 0.072  # real D435 mass; RT's 0.6 kg is a placeholder

ROBOT_RGBA: Final = (0.92, 0.92, 0.92, 1.0)
DARK_RGBA: Final = (0.15, 0.15, 0.17, 1.0)
PAD_RGBA: Final = (0.05, 0.05, 0.05, 1.0)


@dataclass(frozen=True)
class Geom:
    """A primitive in its link frame. ``size``: box half-extents, or (radius, half-length) of a z-cylinder."""

    name: str
    kind: Literal["box", "cylinder"]
    size: tuple[float, ...]
    pos: Vec3
    rpy: Vec3 = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = ROBOT_RGBA
    friction: float = 0.8
    collide: bool = True


@dataclass(frozen=True)
class Inertial:
    mass: float
    com: Vec3
    inertia: tuple[float, float, float, float, float, float]  # ixx iyy izz ixy ixz iyz in the LINK frame


@dataclass(frozen=True)
class Body:
    """One link: its frame relative to ``parent`` (via ``joint`` if movable), mass and geometry."""

    name: str
    parent: str  # "" for the root
    xyz: Vec3
    rpy: Vec3
    joint: JointSpec | None  # None = fixed to the parent
    inertial: Inertial | None
    geoms: tuple[Geom, ...]


@dataclass(frozen=True)
class RobotDescription:
    bodies: tuple[Body, ...]  # parents before children
    cameras: tuple[CameraSpec, ...]
    kp: float = SIM_KP
    kd: float = SIM_KD

    def body(self, name: str) -> Body:
        for b in self.bodies:
            if b.name == name:
                return b
        raise KeyError(f"no body {name!r} in the CRANE-X7 description")

    @property
    def total_mass(self) -> float:
        return sum(b.inertial.mass for b in self.bodies if b.inertial is not None)


def _rotated_inertia(inertia: tuple[float, ...], rpy: Vec3) -> tuple[float, float, float, float, float, float]:
    """Spec inertia (ixx ixy ixz iyy iyz izz, expressed in a frame rotated by ``rpy``) -> link frame."""
    ixx, ixy, ixz, iyy, iyz, izz = inertia
    m = np.array([[ixx, ixy, ixz], [ixy, iyy, iyz], [ixz, iyz, izz]])
    r = rpy_to_matrix(rpy)
    i = r @ m @ r.T
    return (i[0, 0], i[1, 1], i[2, 2], i[0, 1], i[0, 2], i[1, 2])


def _box_from_aabb(name: str, aabb: tuple[Vec3, Vec3], rgba: tuple[float, float, float, float] = ROBOT_RGBA) -> Geom:
    lo, hi = np.asarray(aabb[0]), np.asarray(aabb[1])
    c, h = (lo + hi) / 2, (hi - lo) / 2
    return Geom(name, "box", tuple(float(v) for v in h), (float(c[0]), float(c[1]), float(c[2])), rgba=rgba)


def _cylinder_from_aabb(name: str, aabb: tuple[Vec3, Vec3]) -> Geom:
    lo, hi = np.asarray(aabb[0]), np.asarray(aabb[1])
    c, h = (lo + hi) / 2, (hi - lo) / 2
    return Geom(name, "cylinder", (float(min(h[0], h[1])), float(h[2])), (float(c[0]), float(c[1]), float(c[2])))


def _finger_geoms(joint: JointSpec, aabb: tuple[Vec3, Vec3]) -> tuple[Geom, ...]:
    """Knuckle, plate and pad of one finger (in its link frame).

    The hinged fingers meet an object at an angle, which squeezes a cube out like a wedge. So the pad is
    tilted back by the contact angle: at ``q = PAD_CONTACT_Q`` its face is vertical and sits
    ``PAD_REFERENCE_WIDTH / 2`` from the gripper axis, i.e. a 4 cm cube is held face-on at the fingertips, and
    the grasp target GRIPPER_GRASP (slightly more closed) presses with the full servo torque.
    """
    (x0, y0, z0), (x1, y1, z1) = aabb
    short = joint.child.removeprefix("crane_x7_gripper_").removesuffix("_link")
    side = 1.0 if joint.xyz[0] > 0 else -1.0  # which side of the gripper axis the finger is on
    inward = -side  # the inner face of the finger points towards the axis
    inner, outer = (x1, x0) if inward > 0 else (x0, x1)
    # The finger is a thin plate set back from the envelope's inner side, so that above the pad it clears
    # the top edge of a held cube; the envelope's thickness comes from the knuckle.
    plate_t = 0.006
    plate_c = inward * (FINGER_PLATE_INNER - plate_t / 2)
    # Pad centre in the gripper_base frame at q = PAD_CONTACT_Q, then mapped into the finger frame.
    t, hz = FINGER_PAD_THICKNESS, FINGER_PAD_HEIGHT
    centre_g = np.array([side * (PAD_REFERENCE_WIDTH / 2 + t / 2), 0.0,
                         joint.xyz[2] + FINGER_LENGTH - hz / 2 - 0.002])
    rot = axis_angle_to_matrix(joint.axis, PAD_CONTACT_Q)
    centre_f = rot.T @ (centre_g - np.asarray(joint.xyz))
    pitch = -PAD_CONTACT_Q * joint.axis[1]  # undo the finger's rotation about its (+-y) axis
    return (
        _box_from_aabb(f"{short}_knuckle", ((min(outer, inner), y0, z0), (max(outer, inner), y1, 0.012)), DARK_RGBA),
        Geom(f"{short}_plate", "box", (plate_t / 2, (y1 - y0) / 2, (z1 - 0.012) / 2),
             (plate_c, (y0 + y1) / 2, (z1 + 0.012) / 2), rgba=DARK_RGBA),
        Geom(f"{short}_pad", "box", (t / 2, 0.4 * (y1 - y0) / 2, hz / 2),
             (float(centre_f[0]), float(centre_f[1]), float(centre_f[2])), (0.0, float(pitch), 0.0),
             rgba=PAD_RGBA, friction=FINGER_PAD_FRICTION),
    )


def describe() -> RobotDescription:
    """The CRANE-X7 as bodies/geoms/cameras, built from the spec (pure; cheap)."""
    bodies: list[Body] = [
        Body(BASE_LINK, "", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), None, None, ()),
    ]
    fixed = {f.child: f for f in FIXED_JOINTS}
    plate = fixed[MOUNTING_PLATE_LINK]
    bodies.append(Body(MOUNTING_PLATE_LINK, plate.parent, plate.xyz, plate.rpy, None, None,
                       (_box_from_aabb("mounting_plate", MOUNTING_PLATE_AABB, DARK_RGBA),)))
    joints_by_child = {j.child: j for j in ALL_JOINTS}
    for spec in LINKS:
        inertial = Inertial(spec.mass, spec.com, _rotated_inertia(spec.inertia, spec.inertia_rpy))
        short = spec.name.removeprefix("crane_x7_").removesuffix("_link")
        geoms: tuple[Geom, ...]
        if spec.name.endswith(("finger_a_link", "finger_b_link")):
            geoms = _finger_geoms(joints_by_child[spec.name], spec.aabb)
        elif spec.name == "crane_x7_shoulder_fixed_part_link":
            geoms = (_cylinder_from_aabb(short, spec.aabb),)
        else:
            geoms = (_box_from_aabb(short, spec.aabb),)
        if spec.name == GRIPPER_BASE_LINK:
            c = D435_BOX_CENTRE
            geoms += (Geom("d435", "box", tuple(s / 2 for s in D435_BOX_SIZE), c, rgba=DARK_RGBA),)
            # Merge the camera's mass at its box centre (parallel-axis theorem) into the gripper base.
            inertial = _merge_point_mass(inertial, D435_MASS, c, D435_BOX_SIZE)
        if spec.name in joints_by_child:
            j = joints_by_child[spec.name]
            bodies.append(Body(spec.name, j.parent, j.xyz, (0.0, 0.0, 0.0), j, inertial, geoms))
        else:
            f = fixed[spec.name]
            bodies.append(Body(spec.name, f.parent, f.xyz, f.rpy, None, inertial, geoms))
    return RobotDescription(tuple(bodies), (WRIST_CAMERA, THIRD_PERSON_CAMERA))


def _merge_point_mass(inertial: Inertial, mass: float, pos: Vec3, box: Vec3) -> Inertial:
    """Combine ``inertial`` with a solid box of ``mass`` centred at ``pos`` (all in the link frame)."""

    def tensor(i: tuple[float, ...]) -> np.ndarray:
        ixx, iyy, izz, ixy, ixz, iyz = i
        return np.array([[ixx, ixy, ixz], [ixy, iyy, iyz], [ixz, iyz, izz]])

    def shift(m: float, d: np.ndarray) -> np.ndarray:
        return m * (float(d @ d) * np.eye(3) - np.outer(d, d))

    m1, m2 = inertial.mass, mass
    c1, c2 = np.asarray(inertial.com), np.asarray(pos)
    c = (m1 * c1 + m2 * c2) / (m1 + m2)
    sx, sy, sz = box
    box_i = np.diag([sy**2 + sz**2, sx**2 + sz**2, sx**2 + sy**2]) * m2 / 12.0
    i = tensor(inertial.inertia) + shift(m1, c1 - c) + box_i + shift(m2, c2 - c)
    return Inertial(m1 + m2, (float(c[0]), float(c[1]), float(c[2])),
                    (i[0, 0], i[1, 1], i[2, 2], i[0, 1], i[0, 2], i[1, 2]))


def _f(values: tuple[float, ...] | list[float] | np.ndarray) -> str:
    return " ".join(f"{float(v):.9g}" for v in values)


# --------------------------------------------------------------------------------------------------
# URDF
# --------------------------------------------------------------------------------------------------
def urdf(name: str = "crane_x7", description: RobotDescription | None = None) -> str:
    """URDF of the robot (root ``base_link``). Cameras are fixed, massless links in the ROS ``camera_link``
    convention (x = viewing direction), named after :class:`CameraSpec.name`; the third-person camera is not
    part of the robot and is left to the scene."""
    d = description or describe()
    out = ['<?xml version="1.0"?>', f"<robot name={quoteattr(name)}>",
           '  <material name="light"><color rgba="0.92 0.92 0.92 1"/></material>']
    for b in d.bodies:
        out.append(f"  <link name={quoteattr(b.name)}>")
        if b.inertial is not None:
            ixx, iyy, izz, ixy, ixz, iyz = b.inertial.inertia
            out += [
                "    <inertial>",
                f'      <origin xyz="{_f(b.inertial.com)}" rpy="0 0 0"/>',
                f'      <mass value="{b.inertial.mass:.9g}"/>',
                f'      <inertia ixx="{ixx:.9g}" ixy="{ixy:.9g}" ixz="{ixz:.9g}" iyy="{iyy:.9g}" iyz="{iyz:.9g}" izz="{izz:.9g}"/>',
                "    </inertial>",
            ]
        for g in b.geoms:
            shape = (f'<box size="{_f([2 * s for s in g.size])}"/>' if g.kind == "box"
                     else f'<cylinder radius="{g.size[0]:.9g}" length="{2 * g.size[1]:.9g}"/>')
            origin = f'<origin xyz="{_f(g.pos)}" rpy="{_f(g.rpy)}"/>'
            out.append(f"    <visual name={quoteattr(g.name)}>{origin}<geometry>{shape}</geometry>"
                       f'<material name="{g.name}_mat"><color rgba="{_f(g.rgba)}"/></material></visual>')
            if g.collide:
                out.append(f"    <collision name={quoteattr(g.name)}>{origin}<geometry>{shape}</geometry></collision>")
        out.append("  </link>")
        if not b.parent:
            continue
        j = b.joint
        if j is None:
            jname = next((f.name for f in FIXED_JOINTS if f.child == b.name), f"{b.name}_joint")
            out.append(f'  <joint name={quoteattr(jname)} type="fixed"><parent link={quoteattr(b.parent)}/>'
                       f'<child link={quoteattr(b.name)}/><origin xyz="{_f(b.xyz)}" rpy="{_f(b.rpy)}"/></joint>')
            continue
        out += [
            f'  <joint name={quoteattr(j.name)} type="revolute">',
            f"    <parent link={quoteattr(j.parent)}/><child link={quoteattr(j.child)}/>",
            f'    <origin xyz="{_f(j.xyz)}" rpy="0 0 0"/><axis xyz="{_f(j.axis)}"/>',
            f'    <limit lower="{j.lower:.9g}" upper="{j.upper:.9g}" effort="{j.effort:.9g}" velocity="{j.velocity:.9g}"/>',
            f'    <dynamics damping="{j.damping:.9g}" friction="{j.friction:.9g}"/>',
        ]
        if j.mimic:
            out.append(f'    <mimic joint={quoteattr(j.mimic)} multiplier="1" offset="0"/>')
        out.append("  </joint>")
    for cam in d.cameras:
        if not cam.parent:
            continue
        out += [f"  <link name={quoteattr(cam.name)}/>",
                f'  <joint name="{cam.name}_joint" type="fixed"><parent link={quoteattr(cam.parent)}/>'
                f'<child link={quoteattr(cam.name)}/><origin xyz="{_f(cam.xyz)}" rpy="{_f(cam.rpy)}"/></joint>']
    out.append("</robot>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# MJCF
# --------------------------------------------------------------------------------------------------
# Contact filtering: robot geoms (contype 2, conaffinity 1) never touch each other, scene geoms
# (contype 1, conaffinity 3) touch the robot and each other. The aabb envelopes of neighbouring links
# overlap, so self-collision would only produce spurious contacts.
ROBOT_CONTYPE: Final = 2
ROBOT_CONAFFINITY: Final = 1
SCENE_CONTYPE: Final = 1
SCENE_CONAFFINITY: Final = 3


def mujoco_camera_xyaxes(cam: CameraSpec) -> tuple[float, ...]:
    """MuJoCo ``xyaxes`` of a camera whose body frame is ``cam.rpy`` (x view, y left, z up).

    A MuJoCo camera looks along its -z with +y up, so its x axis is body -y and its y axis is body +z.
    """
    r = rpy_to_matrix(cam.rpy)
    x, y = -r[:, 1], r[:, 2]
    return tuple(float(v) for v in np.concatenate([x, y]))


def _mj_geom(g: Geom, indent: str) -> str:
    size = _f(g.size)
    quat = _rpy_to_quat(g.rpy)
    col = (f'contype="{ROBOT_CONTYPE}" conaffinity="{ROBOT_CONAFFINITY}"' if g.collide
           else 'contype="0" conaffinity="0"')
    friction = f' friction="{g.friction:.9g} 0.005 0.0001"'
    if g.name.endswith("_pad"):
        friction += f' solref="{_f(PAD_SOLREF)}" solimp="{_f(PAD_SOLIMP)}" condim="4"'
    # Geoms carry no mass: link inertials come from the spec.
    return (f'{indent}<geom name={quoteattr(g.name)} type="{g.kind}" size="{size}" pos="{_f(g.pos)}" '
            f'quat="{_f(quat)}" rgba="{_f(g.rgba)}" {col}{friction} mass="0"/>')


def _rpy_to_quat(rpy: Vec3) -> tuple[float, float, float, float]:
    r, p, y = (v / 2 for v in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return (cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy)


def mjcf(
    worldbody: str = "",
    assets: str = "",
    timestep: float = 0.002,
    description: RobotDescription | None = None,
    model_name: str = "crane_x7",
) -> str:
    """MJCF of the robot with ``base_link`` at the world origin, plus caller-supplied scene XML.

    ``worldbody``/``assets`` are inserted verbatim (tables, objects, lights). Actuators: one position servo
    per arm joint and one for finger_a (ctrl = the 8-dim action); finger_b follows through a joint equality.
    Bodies get ``gravcomp`` in place of the servos' integral term, so position targets are tracked exactly.
    """
    d = description or describe()
    children: dict[str, list[Body]] = {}
    for b in d.bodies:
        children.setdefault(b.parent, []).append(b)
    cams_by_parent: dict[str, list[CameraSpec]] = {}
    for cam in d.cameras:
        cams_by_parent.setdefault(cam.parent, []).append(cam)

    def emit(b: Body, depth: int) -> list[str]:
        ind = "  " * depth
        lines = [f'{ind}<body name={quoteattr(b.name)} pos="{_f(b.xyz)}" quat="{_f(_rpy_to_quat(b.rpy))}" gravcomp="1">']
        if b.inertial is not None:
            lines.append(f'{ind}  <inertial pos="{_f(b.inertial.com)}" mass="{b.inertial.mass:.9g}" '
                         f'fullinertia="{_f(b.inertial.inertia)}"/>')
        if b.joint is not None:
            j = b.joint
            lines.append(
                f'{ind}  <joint name={quoteattr(j.name)} type="hinge" axis="{_f(j.axis)}" range="{j.lower:.9g} {j.upper:.9g}" '
                f'damping="{j.damping:.9g}" frictionloss="{j.friction:.9g}" armature="{ARMATURE:.9g}" '
                f'actuatorfrcrange="-{_effort_limit(j):.9g} {_effort_limit(j):.9g}"/>'
            )
        lines += [_mj_geom(g, ind + "  ") for g in b.geoms]
        for cam in cams_by_parent.get(b.name, []):
            lines.append(_mj_camera(cam, ind + "  "))
        for c in children.get(b.name, []):
            lines += emit(c, depth + 1)
        lines.append(f"{ind}</body>")
        return lines

    root = children[""][0]
    body_xml = "\n".join(emit(root, 2))
    world_cams = "\n".join(_mj_camera(c, "    ") for c in cams_by_parent.get("", []))
    actuated = [b.joint for b in d.bodies if b.joint is not None and b.joint.mimic is None]
    mimics = [b.joint for b in d.bodies if b.joint is not None and b.joint.mimic is not None]
    act_xml = "\n".join(
        f'    <position name="{j.name.removeprefix("crane_x7_").removesuffix("_joint")}" joint={quoteattr(j.name)} '
        f'kp="{d.kp:.9g}" kv="{d.kd:.9g}" ctrlrange="{j.lower:.9g} {j.upper:.9g}" '
        f'forcerange="-{_effort_limit(j):.9g} {_effort_limit(j):.9g}"/>'
        for j in actuated
    )
    eq_xml = "\n".join(
        f'    <joint joint1={quoteattr(j.name)} joint2={quoteattr(j.mimic)} polycoef="0 1 0 0 0" '
        f'solref="0.005 1"/>' for j in mimics if j.mimic is not None
    )
    return f"""<mujoco model={quoteattr(model_name)}>
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep:.9g}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <statistic extent="1.0" center="0.3 0 0.2"/>
  <visual>
    <map znear="0.01" zfar="10"/>
    <quality shadowsize="2048"/>
    <global offwidth="640" offheight="480"/>
  </visual>
  <asset>
{assets}
  </asset>
  <worldbody>
{world_cams}
{body_xml}
{worldbody}
  </worldbody>
  <equality>
{eq_xml}
  </equality>
  <actuator>
{act_xml}
  </actuator>
</mujoco>
"""


def _effort_limit(j: JointSpec) -> float:
    return GRIPPER_FORCE_LIMIT if j.name.startswith("crane_x7_gripper") else SIM_FORCE_LIMIT


def _mj_camera(cam: CameraSpec, indent: str) -> str:
    return (f'{indent}<camera name={quoteattr(cam.name)} pos="{_f(cam.xyz)}" '
            f'xyaxes="{_f(mujoco_camera_xyaxes(cam))}" fovy="{cam.fovy_deg:.9g}"/>')
