"""MuJoCo implementation of :class:`~crane_x7_vla.lift.interface.Simulator`.

Batching: N ``MjData`` share one compiled ``MjModel`` (cached per process and physics timestep), stepped in a
loop; MuJoCo steps this small model in tens of microseconds, so Python overhead, not physics, dominates and
threads would not pay off on the 2-core CI machine. Physics runs at ~500 Hz: the control period
``1 / sim_rate`` is split into an integer number of substeps. One offscreen ``mujoco.Renderer`` per image
size serves every env.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import mujoco
import numpy as np
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla import robot
from crane_x7_vla.lift.actions import validate_action
from crane_x7_vla.lift.errors import SimulatorUnavailableError
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.mujoco import gl
from crane_x7_vla.lift.mujoco.scene import CUBE_BODY, CUBE_GEOM, GOAL_BODY, scene_xml
from crane_x7_vla.lift.registry import register_simulator
from crane_x7_vla.lift.tasks import EpisodeSpec, PickPlaceTask, TaskState, get_task
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult

MAX_PHYSICS_DT = 0.002  # s; stable for the stiff PD servos and box contacts
CAMERAS = {"wrist": robot.WRIST_CAMERA.name, "third_person": robot.THIRD_PERSON_CAMERA.name}


@functools.lru_cache(maxsize=8)
def compiled_model(env_id: str, timestep: float) -> mujoco.MjModel:
    """The scene model for ``env_id`` (compiled once per process; MjModel is read-only while stepping)."""
    task = get_task(env_id)
    if not isinstance(task, PickPlaceTask):
        raise ValueError(f"the mujoco backend has no scene for task {env_id!r}")
    return mujoco.MjModel.from_xml_string(scene_xml(task, timestep))


def physics_timing(sim_rate: float) -> tuple[float, int]:
    """(timestep, substeps) so that substeps * timestep == 1 / sim_rate and timestep <= MAX_PHYSICS_DT."""
    if not sim_rate > 0:
        raise ValueError(f"sim_rate must be positive (control ticks per second), got {sim_rate}")
    substeps = max(1, math.ceil(1.0 / (sim_rate * MAX_PHYSICS_DT) - 1e-9))
    return 1.0 / (sim_rate * substeps), substeps


def yaw_quat(yaw: float) -> NDArray[np.float64]:
    """wxyz quaternion of a rotation by ``yaw`` about world z."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


@register_simulator("mujoco")
class MujocoSimulator(Simulator):
    """PickPlace on MuJoCo, CPU, ``num_envs`` independent envs. See the module docstring."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        if config.backend != "cpu":
            raise SimulatorUnavailableError(
                "the mujoco simulator runs on CPU only; use --backend cpu, or maniskill/genesis for GPU batches"
            )
        if config.render_mode not in ("rgb_array",):
            raise ValueError(f"mujoco supports render_mode 'rgb_array' (offscreen) only, got {config.render_mode!r}; "
                             "record a video with render('third_person') instead")
        if config.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {config.num_envs}")
        if config.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {config.max_episode_steps}")
        task = get_task(config.env_id)
        assert isinstance(task, PickPlaceTask)
        self.task = task
        timestep, self.substeps = physics_timing(config.sim_rate)
        self.model = compiled_model(config.env_id, round(timestep, 12))
        m = self.model
        self.data = [mujoco.MjData(m) for _ in range(config.num_envs)]

        def jid(name: str) -> int:
            return int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name))

        def bid(name: str) -> int:
            return int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name))

        # qpos/qvel addresses: 7 arm joints + finger_a (the observation) and finger_b (the mimic).
        self._qadr = np.array([m.jnt_qposadr[jid(n)] for n in robot.JOINT_NAMES[:8]])
        self._vadr = np.array([m.jnt_dofadr[jid(n)] for n in robot.JOINT_NAMES[:8]])
        self._mimic_qadr = int(m.jnt_qposadr[jid(robot.JOINT_NAMES[8])])
        self._mimic_vadr = int(m.jnt_dofadr[jid(robot.JOINT_NAMES[8])])
        cube_joint = m.body_jntadr[bid(CUBE_BODY)]
        self._cube_qadr = int(m.jnt_qposadr[cube_joint])
        self._cube_body = bid(CUBE_BODY)
        self._gripper_body = bid(robot.GRIPPER_BASE_LINK)
        self._goal_mocap = int(m.body_mocapid[bid(GOAL_BODY)])
        self._cube_geom = int(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, CUBE_GEOM))
        finger_bodies = {bid(n.child): k for k, n in enumerate(robot.GRIPPER_JOINTS)}
        # geom id -> finger index (0 = a, 1 = b) for the grasp test.
        self._finger_of_geom = {g: finger_bodies[int(m.geom_bodyid[g])] for g in range(m.ngeom)
                                if int(m.geom_bodyid[g]) in finger_bodies}
        self._tcp_offset = np.asarray(robot.TCP_OFFSET, dtype=np.float64)
        self._goal = np.zeros((config.num_envs, 3))
        self._elapsed = np.zeros(config.num_envs, dtype=np.int64)
        self._episodes: list[EpisodeSpec | None] = [None] * config.num_envs
        self._seed_rng = np.random.default_rng()
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._closed = False

    # ------------------------------------------------------------------------------------------
    # Reset / step
    # ------------------------------------------------------------------------------------------
    def reset(
        self, seed: int | None = None, env_idx: NDArray[np.int64] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        idx = self._env_indices(env_idx)
        if seed is None:
            seed = int(self._seed_rng.integers(0, 2**31 - 1))
        for i in idx:
            # Env i gets seed + i, so a partial reset of env i matches a full reset with the same seed.
            rng = np.random.default_rng(seed + int(i))
            spec = self.task.sample_episode(rng, self.config.robot_init_qpos_noise)
            self._apply_episode(int(i), spec)
        obs = self.get_observation()
        _, success, metrics = self.task.evaluate(self._task_state(), self.config.reward_mode)
        return obs, {"success": success, **metrics, "instruction": self.task.instruction}

    def _apply_episode(self, i: int, spec: EpisodeSpec) -> None:
        m, d = self.model, self.data[i]
        mujoco.mj_resetData(m, d)
        q = np.asarray(spec.init_qpos, dtype=np.float64)
        d.qpos[self._qadr] = q
        d.qpos[self._mimic_qadr] = q[7]
        d.ctrl[:] = q
        h = self.task.cube_half_size
        d.qpos[self._cube_qadr:self._cube_qadr + 3] = (*spec.cube_xy, h)
        d.qpos[self._cube_qadr + 3:self._cube_qadr + 7] = yaw_quat(spec.cube_yaw)
        self._goal[i] = (*spec.goal_xy, 0.0)
        d.mocap_pos[self._goal_mocap] = (*spec.goal_xy, 0.0005)
        mujoco.mj_forward(m, d)
        self._episodes[i] = spec
        self._elapsed[i] = 0

    def step(self, action: ArrayLike) -> StepResult:
        self._check_open()
        targets = validate_action(action, self.num_envs, self.config.control_mode, self._raw_qpos())
        for i, d in enumerate(self.data):
            d.ctrl[:] = targets[i]
            mujoco.mj_step(self.model, d, nstep=self.substeps)
        self._elapsed += 1
        obs = self.get_observation()
        reward, success, metrics = self.task.evaluate(self._task_state(), self.config.reward_mode)
        truncated = self._elapsed >= self.config.max_episode_steps
        info: dict[str, Any] = {"success": success, **metrics, "elapsed_steps": self._elapsed.copy()}
        return StepResult(obs, reward, success.copy(), truncated, info)

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------
    def _raw_qpos(self) -> NDArray[np.float64]:
        return np.stack([d.qpos[self._qadr] for d in self.data])

    def gripper_pose(self) -> NDArray[np.float64]:
        out = np.zeros((self.num_envs, 4, 4))
        out[:, 3, 3] = 1.0
        for i, d in enumerate(self.data):
            out[i, :3, :3] = d.xmat[self._gripper_body].reshape(3, 3)
            out[i, :3, 3] = d.xpos[self._gripper_body]
        return out

    def _is_grasped(self, d: mujoco.MjData) -> bool:
        touching = [False, False]
        for k in range(d.ncon):
            c = d.contact[k]
            g1, g2 = int(c.geom1), int(c.geom2)
            other = g2 if g1 == self._cube_geom else g1 if g2 == self._cube_geom else -1
            finger = self._finger_of_geom.get(other)
            if finger is not None:
                touching[finger] = True
        return touching[0] and touching[1]

    def _task_state(self) -> TaskState:
        pose = self.gripper_pose()
        tcp = pose[:, :3, 3] + pose[:, :3, :3] @ self._tcp_offset
        cube = np.stack([d.xpos[self._cube_body] for d in self.data])
        return TaskState(
            tcp_pos=tcp,
            cube_pos=cube,
            goal_pos=self._goal.copy(),
            gripper_q=np.array([d.qpos[self._qadr[7]] for d in self.data]),
            is_grasped=np.array([self._is_grasped(d) for d in self.data], dtype=bool),
        )

    def get_observation(self) -> Observation:
        self._check_open()
        state = self._task_state()
        qpos = self._raw_qpos().astype(np.float32)
        qvel = np.stack([d.qvel[self._vadr] for d in self.data]).astype(np.float32)
        if self.config.render_images:
            image = self._render(self.config.camera, *self.config.image_size)
        else:
            image = np.zeros((self.num_envs, 0, 0, 3), dtype=np.uint8)
        extra = {
            "tcp_pos": state.tcp_pos,
            "cube_pos": state.cube_pos,
            "cube_quat": np.stack([d.xquat[self._cube_body] for d in self.data]),
            "goal_pos": state.goal_pos,
            "is_grasped": state.is_grasped,
            "elapsed_steps": self._elapsed.copy(),
        }
        return Observation(rgb_image=image, qpos=qpos, qvel=qvel, extra=extra)

    def set_qpos(self, qpos: ArrayLike, env_idx: NDArray[np.int64] | None = None) -> None:
        self._check_open()
        idx = self._env_indices(env_idx)
        q = np.asarray(qpos, dtype=np.float64)
        if q.ndim == 1:
            q = np.broadcast_to(q, (len(idx), q.shape[0]))
        if q.shape != (len(idx), 8) or not np.isfinite(q).all():
            raise ValueError(f"set_qpos needs finite ({len(idx)}, 8) joint positions, got shape {q.shape}")
        for row, i in enumerate(idx):
            d = self.data[int(i)]
            d.qpos[self._qadr] = q[row]
            d.qpos[self._mimic_qadr] = q[row, 7]
            d.qvel[self._vadr] = 0.0
            d.qvel[self._mimic_vadr] = 0.0
            d.ctrl[:] = q[row]
            mujoco.mj_forward(self.model, d)

    # ------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------
    def _renderer(self, height: int, width: int) -> mujoco.Renderer:
        gl.require_gl()
        key = (height, width)
        if key not in self._renderers:
            if height > self.model.vis.global_.offheight or width > self.model.vis.global_.offwidth:
                raise ValueError(f"image size {key} exceeds the offscreen buffer "
                                 f"({self.model.vis.global_.offheight}, {self.model.vis.global_.offwidth})")
            try:
                self._renderers[key] = mujoco.Renderer(self.model, height, width)
            except Exception as exc:  # GL errors come as several exception types
                raise SimulatorUnavailableError(f"{gl.INSTALL_HINT} ({type(exc).__name__}: {exc})") from exc
        return self._renderers[key]

    def _render(self, camera: str, height: int, width: int) -> NDArray[np.uint8]:
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; choose one of {sorted(CAMERAS)}")
        r = self._renderer(height, width)
        out = np.empty((self.num_envs, height, width, 3), dtype=np.uint8)
        for i, d in enumerate(self.data):
            r.update_scene(d, camera=CAMERAS[camera])
            r.render(out=out[i])
        return out

    def render(self, camera: str = "third_person", height: int | None = None,
               width: int | None = None) -> NDArray[np.uint8]:
        """(N, H, W, 3) uint8 image of ``camera`` ("wrist" or "third_person"); size defaults to image_size."""
        self._check_open()
        h, w = self.config.image_size
        return self._render(camera, height or h, width or w)

    # ------------------------------------------------------------------------------------------
    def _env_indices(self, env_idx: NDArray[np.int64] | None) -> NDArray[np.int64]:
        if env_idx is None:
            return np.arange(self.num_envs)
        idx = np.atleast_1d(np.asarray(env_idx, dtype=np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_envs):
            raise ValueError(f"env_idx {idx.tolist()} out of range for num_envs={self.num_envs}")
        return idx

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the simulator is closed")

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        self._closed = True
