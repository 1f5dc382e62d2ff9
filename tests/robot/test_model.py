"""The generated URDF and MJCF: well-formed, and consistent with the spec and with each other."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.robot import model


@pytest.fixture(scope="module")
def urdf_root() -> ET.Element:
    return ET.fromstring(model.urdf())


def test_urdf_joints_match_spec(urdf_root: ET.Element) -> None:
    revolute = {j.get("name"): j for j in urdf_root.iter("joint") if j.get("type") == "revolute"}
    assert list(revolute) == list(robot.JOINT_NAMES)
    for spec in robot.ALL_JOINTS:
        j = revolute[spec.name]
        limit = j.find("limit")
        assert limit is not None
        assert float(limit.get("lower", "nan")) == pytest.approx(spec.lower, abs=1e-6)
        assert float(limit.get("upper", "nan")) == pytest.approx(spec.upper, abs=1e-6)
        assert float(limit.get("effort", "nan")) == pytest.approx(spec.effort)
        axis = j.find("axis")
        assert axis is not None and [float(v) for v in axis.get("xyz", "").split()] == list(spec.axis)
        mimic = j.find("mimic")
        assert (mimic is not None) == (spec.mimic is not None)
        if mimic is not None:
            assert mimic.get("joint") == spec.mimic and mimic.get("multiplier") == "1"


def test_urdf_masses_and_cameras(urdf_root: ET.Element) -> None:
    masses = {ln.get("name"): float(m.get("value", "nan")) for ln in urdf_root.iter("link")
              if (m := ln.find("inertial/mass")) is not None}
    for spec in robot.LINKS:
        extra = model.D435_MASS if spec.name == robot.GRIPPER_BASE_LINK else 0.0
        assert masses[spec.name] == pytest.approx(spec.mass + extra, rel=1e-5), spec.name
    assert sum(masses.values()) == pytest.approx(1.8177 + model.D435_MASS, abs=1e-4)  # spec total + camera
    cam_joint = next(j for j in urdf_root.iter("joint") if j.get("name") == f"{robot.WRIST_CAMERA.name}_joint")
    parent = cam_joint.find("parent")
    assert cam_joint.get("type") == "fixed" and parent is not None and parent.get("link") == robot.GRIPPER_BASE_LINK
    # Every link has a unique name and every joint's parent/child exists (a tree rooted at base_link).
    links = [ln.get("name") for ln in urdf_root.iter("link")]
    assert len(links) == len(set(links))
    children = set()
    for j in urdf_root.iter("joint"):
        p, c = j.find("parent"), j.find("child")
        assert p is not None and c is not None
        assert p.get("link") in links and c.get("link") in links
        children.add(c.get("link"))
    assert set(links) - children == {robot.BASE_LINK}


def test_inertia_rotation_preserves_eigenvalues() -> None:
    spec = robot.link("crane_x7_wrist_link")
    ixx, ixy, ixz, iyy, iyz, izz = spec.inertia
    orig = np.linalg.eigvalsh(np.array([[ixx, ixy, ixz], [ixy, iyy, iyz], [ixz, iyz, izz]]))
    body = model.describe().body(spec.name)
    assert body.inertial is not None
    jxx, jyy, jzz, jxy, jxz, jyz = body.inertial.inertia
    rot = np.linalg.eigvalsh(np.array([[jxx, jxy, jxz], [jxy, jyy, jyz], [jxz, jyz, jzz]]))
    np.testing.assert_allclose(rot, orig, rtol=1e-9)
    assert (jyy, jzz) == pytest.approx((izz, iyy), rel=1e-4)  # rpy (pi/2, 0, 0) swaps y and z


mujoco_missing = importlib.util.find_spec("mujoco") is None


@pytest.mark.skipif(mujoco_missing, reason="mujoco not installed")
def test_mjcf_compiles_and_matches_spec_and_fk() -> None:
    from crane_x7_vla.lift.mujoco import gl

    gl.select_gl()
    import mujoco

    m = mujoco.MjModel.from_xml_string(model.mjcf())
    assert m.njnt == len(robot.JOINT_NAMES) and m.nu == robot.ACTION_DIM and m.neq == 1
    for spec in robot.ALL_JOINTS:
        jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, spec.name)
        np.testing.assert_allclose(m.jnt_range[jid], (spec.lower, spec.upper), atol=1e-6)
    np.testing.assert_allclose(m.actuator_ctrlrange, np.stack([robot.ACTION_LOWER, robot.ACTION_UPPER], -1), atol=1e-6)
    assert m.body_mass.sum() == pytest.approx(1.8177 + model.D435_MASS, abs=1e-4)
    # Forward kinematics of the compiled model agree with the numpy FK, and finger_b mirrors finger_a.
    d = mujoco.MjData(m)
    q = np.array(robot.REST_QPOS)
    d.qpos[:8] = q
    d.ctrl[:] = q
    for _ in range(200):
        mujoco.mj_step(m, d)
    gid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, robot.GRIPPER_BASE_LINK)
    np.testing.assert_allclose(d.xpos[gid], robot.gripper_pose(d.qpos[:8])[:3, 3], atol=1e-6)
    np.testing.assert_allclose(d.qpos[:8], q, atol=1e-2)  # servo friction leaves mrad offsets
    assert d.qpos[8] == pytest.approx(d.qpos[7], abs=5e-3)


def test_camera_axes_follow_the_spec_convention() -> None:
    # The wrist camera's body x (view) is gripper +z: the MuJoCo camera's -z must be gripper +z.
    xy = np.array(model.mujoco_camera_xyaxes(robot.WRIST_CAMERA)).reshape(2, 3)
    z = np.cross(xy[0], xy[1])
    np.testing.assert_allclose(-z, [0.0, 0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(xy[1], [0.0, 1.0, 0.0], atol=1e-5)  # image up = body z = gripper +y
