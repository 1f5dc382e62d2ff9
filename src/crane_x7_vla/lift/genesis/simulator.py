"""The Genesis Lift adapter: one Genesis scene with ``n_envs`` parallel copies of PickPlace-CRANE-X7.

Design: like the ManiSkill backend, Genesis only builds the scene and measures raw state; episodes are sampled by
the shared task (env i <- ``seed + i``) and reward/success come from :meth:`PickPlaceTask.evaluate` through
:mod:`crane_x7_vla.lift.backend_common`. The robot is the same generated URDF, with the physics choices of
:mod:`crane_x7_vla.robot.model` (PD gains, force limits, armature, gravity compensation, finger friction) so the
scripted expert needs no per-backend tuning. Cameras: one rasterizer camera per env (``env_idx=i``), since a
Genesis rasterizer camera renders one env; the GPU batch renderer would replace this on a GPU machine.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.lift import backend_common as bc
from crane_x7_vla.lift.actions import validate_action
from crane_x7_vla.lift.errors import SimulatorUnavailableError
from crane_x7_vla.lift.genesis.cache import configure_kernel_cache
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.registry import register_simulator
from crane_x7_vla.lift.tasks import PickPlaceTask, TaskState, get_task
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult
from crane_x7_vla.robot import (
    ARM_JOINT_NAMES,
    GRIPPER_BASE_LINK,
    GRIPPER_JOINT_NAMES,
    TCP_OFFSET,
    THIRD_PERSON_CAMERA,
    WRIST_CAMERA,
    CameraSpec,
    rpy_to_matrix,
)
from crane_x7_vla.robot import model as robot_model

log = logging.getLogger(__name__)

# Physics substeps per control tick: 30 Hz x 20 = 600 Hz, as the ManiSkill backend (MuJoCo reference: ~500 Hz).
SUBSTEPS = 20
SCENE_FRICTION = 1.0  # table and cube (MuJoCo reference scene)
GRASP_FORCE = 0.5  # N: a finger "touches" the cube above this contact force
ENV_SPACING = 2.0  # m between env copies in the rendered world (cameras of env i see only env i)
# Genesis cameras follow OpenGL (look along -z, y up); CameraSpec bodies look along +x with z up.
_BODY_TO_GL = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
_FINGER_LINKS = ("crane_x7_gripper_finger_a_link", "crane_x7_gripper_finger_b_link")


def camera_offset(spec: CameraSpec) -> NDArray[np.float64]:
    """(4, 4) OpenGL camera pose in its parent frame for a :class:`CameraSpec` mount."""
    t = np.eye(4)
    t[:3, :3] = rpy_to_matrix(spec.rpy) @ _BODY_TO_GL
    t[:3, 3] = spec.xyz
    return t


def _init_genesis(backend: str) -> Any:
    configure_kernel_cache()
    import genesis as gs

    want = gs.cpu if backend == "cpu" else gs.gpu
    if not getattr(gs, "_initialized", False):
        if backend == "gpu" and not torch.cuda.is_available():
            raise SimulatorUnavailableError("backend='gpu' needs a CUDA GPU (torch.cuda.is_available() is False); use backend='cpu'")
        gs.init(backend=want, logging_level="warning", precision="32")
    elif gs.backend != want:
        raise ValueError(
            f"Genesis is already initialised with backend {gs.backend} in this process; it cannot switch to "
            f"{backend!r}. Use one backend per process."
        )
    return gs


@register_simulator("genesis")
class GenesisSimulator(Simulator):
    """``create_simulator("genesis", SimulatorConfig(...))``; tensors live on Genesis' device (``gs.device``)."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        if config.backend not in ("cpu", "gpu"):
            raise ValueError(f"backend must be 'cpu' or 'gpu', got {config.backend!r}")
        self.task: PickPlaceTask = get_task(config.env_id)  # type: ignore[assignment]
        self._book = bc.EpisodeBook(self.task, config)
        gs = _init_genesis(config.backend)
        self.gs = gs
        t, n = self.task, config.num_envs
        self.scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=1.0 / config.sim_rate, substeps=SUBSTEPS),
            rigid_options=gs.options.RigidOptions(enable_self_collision=False),
            vis_options=gs.options.VisOptions(show_world_frame=False),
            show_viewer=config.render_mode == "human",
            renderer=gs.renderers.Rasterizer(),
        )
        scene_mat = gs.materials.Rigid(friction=SCENE_FRICTION)
        self.scene.add_entity(
            gs.morphs.Box(pos=t.table_centre, size=tuple(2 * v for v in t.table_half), fixed=True),
            material=scene_mat, surface=gs.surfaces.Default(color=t.table_rgba),
        )
        h = t.cube_half_size
        self.cube = self.scene.add_entity(
            gs.morphs.Box(pos=(0.3, 0.0, h), size=(2 * h,) * 3),
            material=gs.materials.Rigid(friction=SCENE_FRICTION, rho=t.cube_mass / (2 * h) ** 3),
            surface=gs.surfaces.Default(color=t.cube_rgba),
        )
        self.goal = self.scene.add_entity(
            gs.morphs.Cylinder(pos=(0.3, 0.1, 0.0005), radius=t.goal_radius, height=0.001, fixed=True, collision=False),
            surface=gs.surfaces.Default(color=t.goal_rgba),
        )
        # Gravity compensation as MuJoCo's gravcomp; the pads' friction on the whole robot (only fingers touch).
        self.robot = self.scene.add_entity(
            gs.morphs.URDF(file=str(bc.urdf_file()), fixed=True),
            material=gs.materials.Rigid(friction=robot_model.FINGER_PAD_FRICTION, gravity_compensation=1.0),
        )
        h_img, w_img = config.image_size
        self._cams: dict[str, list[Any]] = {"wrist": [], "third_person": []}
        for i in range(n):
            for name, spec in (("wrist", WRIST_CAMERA), ("third_person", THIRD_PERSON_CAMERA)):
                self._cams[name].append(self.scene.add_camera(
                    res=(w_img, h_img), pos=(1.0, 0.0, 1.0), lookat=(0.0, 0.0, 0.0), fov=spec.fovy_deg,
                    near=spec.near, far=spec.far, GUI=False, env_idx=i,
                ))
        self.scene.build(n_envs=n, env_spacing=(ENV_SPACING, ENV_SPACING))

        joint_names = (*ARM_JOINT_NAMES, *GRIPPER_JOINT_NAMES)
        self._dofs = [self.robot.get_joint(j).dofs_idx_local[0] for j in joint_names]  # 7 arm, finger_a, finger_b
        kp = np.full(9, robot_model.SIM_KP)
        kv = np.full(9, robot_model.SIM_KD)
        force = np.array([robot_model.SIM_FORCE_LIMIT] * 7 + [robot_model.GRIPPER_FORCE_LIMIT] * 2)
        self.robot.set_dofs_kp(kp, self._dofs)
        self.robot.set_dofs_kv(kv, self._dofs)
        self.robot.set_dofs_force_range(-force, force, self._dofs)
        self.robot.set_dofs_armature(np.full(9, robot_model.ARMATURE), self._dofs)
        self._gripper_link = self.robot.get_link(GRIPPER_BASE_LINK)
        self._finger_idx = [self.robot.get_link(name).idx for name in _FINGER_LINKS]
        self._goal_pos = np.zeros((n, 3))
        for cam in self._cams["third_person"]:
            cam.set_pose(transform=camera_offset(THIRD_PERSON_CAMERA))
        wrist_offset = camera_offset(WRIST_CAMERA)
        for cam in self._cams["wrist"]:
            cam.attach(self._gripper_link, wrist_offset)
        self._grasped = np.zeros(n, dtype=bool)

    # ------------------------------------------------------------------ lifecycle
    def reset(
        self, seed: int | None = None, env_idx: NDArray[np.int64] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        idx = bc.resolve_env_idx(env_idx, self.num_envs)
        specs = self._book.start(seed, idx)
        q8 = np.asarray([s.init_qpos for s in specs])  # (b, 8)
        self._set_robot(q8, idx)
        h = self.task.cube_half_size
        cube_pos = np.asarray([(*s.cube_xy, h) for s in specs])
        cube_quat = np.asarray([bc.yaw_quat_wxyz(s.cube_yaw) for s in specs])
        self.cube.set_pos(self._t(cube_pos), envs_idx=self._t(idx, torch.int32), zero_velocity=True)
        self.cube.set_quat(self._t(cube_quat), envs_idx=self._t(idx, torch.int32), zero_velocity=True)
        self._goal_pos[idx] = np.asarray([(*s.goal_xy, 0.0) for s in specs])
        goal = self._goal_pos[idx] + (0.0, 0.0, 0.0005)
        self.goal.set_pos(self._t(goal), envs_idx=self._t(idx, torch.int32))
        self._grasped[idx] = False
        obs = self.get_observation()
        _, info = bc.evaluate(self.task, self._task_state(), self.config)
        return obs, info

    def step(self, action: ArrayLike) -> StepResult:
        qpos = self.get_qpos() if self.config.control_mode == "pd_joint_delta_pos" else None
        targets = validate_action(action, self.num_envs, self.config.control_mode, qpos)  # (N, 8) absolute
        self.robot.control_dofs_position(self._t(self._q9(targets)), self._dofs)
        self.scene.step()
        self._grasped = self._measure_grasp()
        truncated = self._book.tick()
        state = self._task_state()
        reward, info = bc.evaluate(self.task, state, self.config)
        return bc.make_step_result(self.get_observation(), reward, info, truncated)

    def get_observation(self) -> Observation:
        rgb = self._render(self.config.camera) if self.config.render_images else bc.empty_images(self.num_envs)
        state = self._task_state()
        quat = self.cube.get_quat().cpu().numpy().reshape(self.num_envs, 4)
        return bc.make_observation(rgb, self.get_qpos(), self.get_qvel(), state, quat)

    def get_qpos(self) -> NDArray[np.float32]:
        return self.robot.get_dofs_position(self._dofs).cpu().numpy().reshape(self.num_envs, 9)[:, :8].astype(np.float32)

    def get_qvel(self) -> NDArray[np.float32]:
        return self.robot.get_dofs_velocity(self._dofs).cpu().numpy().reshape(self.num_envs, 9)[:, :8].astype(np.float32)

    def set_qpos(self, qpos: ArrayLike, env_idx: NDArray[np.int64] | None = None) -> None:
        idx = bc.resolve_env_idx(env_idx, self.num_envs)
        q8 = np.asarray(qpos, dtype=np.float64).reshape(-1, 8)
        if q8.shape[0] != len(idx):
            raise ValueError(f"qpos must have shape ({len(idx)}, 8) for env_idx {idx.tolist()}, got {np.shape(qpos)}")
        self._set_robot(q8, idx)

    def gripper_pose(self) -> NDArray[np.float64]:
        pos = self._gripper_link.get_pos().cpu().numpy().reshape(self.num_envs, 3)
        quat = self._gripper_link.get_quat().cpu().numpy().reshape(self.num_envs, 4)
        out = np.tile(np.eye(4), (self.num_envs, 1, 1))
        out[:, :3, :3] = _quat_to_matrix(quat)
        out[:, :3, 3] = pos
        return out

    def render(self, camera: str = "third_person") -> NDArray[np.uint8]:
        if camera not in self._cams:
            raise ValueError(f"camera must be one of {sorted(self._cams)}, got {camera!r}")
        return self._render(camera)

    def close(self) -> None:
        scene = getattr(self, "scene", None)
        if scene is not None:
            try:
                scene.destroy()
            except Exception as exc:  # best effort: Genesis versions differ in teardown support
                log.debug("genesis scene destroy failed: %s", exc)
            self.scene = None

    # ------------------------------------------------------------------ helpers
    def _t(self, value: ArrayLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(value), dtype=dtype, device=self.gs.device)

    @staticmethod
    def _q9(q8: NDArray[np.float64]) -> NDArray[np.float64]:
        """(b, 8) Lift joints -> (b, 9) Genesis dofs (finger_b mirrors finger_a, as the URDF's mimic)."""
        return np.concatenate([q8, q8[:, 7:8]], axis=1)

    def _set_robot(self, q8: NDArray[np.float64], idx: NDArray[np.int64]) -> None:
        q9 = self._t(self._q9(q8))
        envs = self._t(idx, torch.int32)
        self.robot.set_dofs_position(q9, self._dofs, envs_idx=envs, zero_velocity=True)
        self.robot.control_dofs_position(q9, self._dofs, envs_idx=envs)

    def _tcp_pos(self) -> NDArray[np.float64]:
        pose = self.gripper_pose()
        return pose[:, :3, 3] + pose[:, :3, :3] @ np.asarray(TCP_OFFSET)

    def _measure_grasp(self) -> NDArray[np.bool_]:
        """(N,) both finger links push on the cube with at least ``GRASP_FORCE``."""
        c = self.robot.get_contacts(with_entity=self.cube)
        link_a = torch.as_tensor(c["link_a"]).reshape(self.num_envs, -1)
        link_b = torch.as_tensor(c["link_b"]).reshape(self.num_envs, -1)
        force = torch.linalg.norm(torch.as_tensor(c["force_a"]).reshape(self.num_envs, -1, 3), dim=-1)
        valid = torch.as_tensor(c["valid_mask"]).reshape(self.num_envs, -1) if "valid_mask" in c else torch.ones_like(force, dtype=torch.bool)
        touching = []
        for link in self._finger_idx:
            hit = ((link_a == link) | (link_b == link)) & valid & (force >= GRASP_FORCE)
            touching.append(hit.any(dim=1))
        return (touching[0] & touching[1]).cpu().numpy()

    def _task_state(self) -> TaskState:
        q = self.get_qpos()
        return TaskState(
            tcp_pos=self._tcp_pos(),
            cube_pos=self.cube.get_pos().cpu().numpy().reshape(self.num_envs, 3).astype(np.float64),
            goal_pos=self._goal_pos.copy(),
            gripper_q=q[:, 7].astype(np.float64),
            is_grasped=self._grasped.copy(),
        )

    def _render(self, camera: str) -> NDArray[np.uint8]:
        frames = []
        for cam in self._cams[camera]:
            if camera == "wrist":
                cam.move_to_attach()
            rgb = cam.render(rgb=True)[0]
            frames.append(np.asarray(rgb.cpu() if isinstance(rgb, torch.Tensor) else rgb, dtype=np.uint8).reshape(
                cam.res[1], cam.res[0], 3))
        return np.stack(frames)  # (N, H, W, 3)


def _quat_to_matrix(q: NDArray[np.float64]) -> NDArray[np.float64]:
    """(N, 4) wxyz -> (N, 3, 3)."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)

