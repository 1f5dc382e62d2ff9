"""The ManiSkill3 Lift adapter: :class:`ManiSkillSimulator` wraps :class:`PickPlaceCraneX7Env`.

Design: backend ``cpu`` = ``physx_cpu`` with one env per process (ManiSkill's CPU sim is single-scene);
backend ``gpu`` = ``physx_cuda`` with ``num_envs`` scenes and batched GPU rendering, the same env class. The numpy
API (``reset``/``step``) is the Lift contract; :meth:`ManiSkillSimulator.step_torch` keeps images and joint states
as torch tensors on the simulation device for GPU rollouts (no host round trip of the (N, H, W, 3) frames).
Actions are validated and converted to absolute targets by the shared :func:`~crane_x7_vla.lift.actions.
validate_action` in both control modes, so the env always runs its ``pd_joint_pos`` controller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.lift import backend_common as bc
from crane_x7_vla.lift.actions import validate_action
from crane_x7_vla.lift.errors import SimulatorUnavailableError
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.maniskill.env import PickPlaceCraneX7Env, episodes_to_arrays
from crane_x7_vla.lift.registry import register_simulator
from crane_x7_vla.lift.tasks import PickPlaceTask, TaskState, get_task
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult

log = logging.getLogger(__name__)

VULKAN_HINT = (
    "ManiSkill/SAPIEN needs a Vulkan driver to render: on a GPU machine the NVIDIA driver's Vulkan ICD; on a CPU "
    "machine Mesa >= 25 lavapipe (Debian 12: `scripts/install.sh maniskill` installs mesa-vulkan-drivers from "
    "bookworm-backports). Or pass SimulatorConfig(render_images=False) for state-only rollouts."
)


@dataclass
class TorchStepResult:
    """:class:`StepResult` as torch tensors on the sim device: ``rgb`` (N, H, W, 3) uint8 (None when not
    rendering), ``qpos``/``qvel`` (N, 8) float32, ``reward`` (N,) float32, ``terminated``/``truncated`` (N,) bool."""

    rgb: torch.Tensor | None
    qpos: torch.Tensor
    qvel: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    info: dict[str, Any]


def _cat(values: list[Any]) -> Any:
    """Concatenate per-sub-env results (tensors along dim 0; other values from the first sub-env)."""
    if len(values) == 1:
        return values[0]
    if isinstance(values[0], torch.Tensor):
        return torch.cat([v if v.ndim else v[None] for v in values], dim=0)
    if isinstance(values[0], dict):
        return {k: _cat([v[k] for v in values]) for k in values[0]}
    return values[0]


@register_simulator("maniskill")
class ManiSkillSimulator(Simulator):
    """``create_simulator("maniskill", SimulatorConfig(...))``.

    ``cpu``: ManiSkill's CPU sim holds one scene per env, so N envs are N single-env ``physx_cpu`` instances
    stepped in turn. ``gpu``: one ``physx_cuda`` env with N parallel scenes.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.task: PickPlaceTask = get_task(config.env_id)  # type: ignore[assignment]
        if config.backend == "cpu":
            sim_backend, render_backend, self.device = "physx_cpu", "cpu", torch.device("cpu")
            groups = [[i] for i in range(config.num_envs)]
        elif config.backend == "gpu":
            if not torch.cuda.is_available():
                raise SimulatorUnavailableError("backend='gpu' needs a CUDA GPU (torch.cuda.is_available() is False); use backend='cpu'")
            sim_backend, render_backend, self.device = "physx_cuda", "gpu", torch.device(config.device)
            groups = [list(range(config.num_envs))]
        else:
            raise ValueError(f"backend must be 'cpu' or 'gpu', got {config.backend!r}")
        self._groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self._book = bc.EpisodeBook(self.task, config)
        self.envs: list[PickPlaceCraneX7Env] = []
        try:
            for g in groups:
                self.envs.append(PickPlaceCraneX7Env(
                    num_envs=len(g),
                    obs_mode="rgb" if config.render_images else "none",
                    reward_mode="dense",
                    control_mode="pd_joint_pos",
                    render_mode="rgb_array" if config.render_mode == "rgb_array" else "human",
                    sim_backend=sim_backend,
                    render_backend=render_backend,
                    task=self.task,
                    lift_reward_mode=config.reward_mode,
                    camera=config.camera,
                    image_size=config.image_size,
                    control_freq=config.sim_rate,
                ))
        except RuntimeError as exc:
            self.close()
            text = str(exc).lower()
            if "vulkan" in text or "vk" in text or "render" in text:
                raise SimulatorUnavailableError(f"{exc}. {VULKAN_HINT}") from exc
            raise
        self._raw_obs: list[Any] = [None] * len(self.envs)
        self._infos: list[dict[str, Any]] = [{} for _ in self.envs]

    @property
    def env(self) -> PickPlaceCraneX7Env:
        """The first (on ``gpu`` the only) ManiSkill env."""
        return self.envs[0]

    # ------------------------------------------------------------------ lifecycle
    def reset(
        self, seed: int | None = None, env_idx: NDArray[np.int64] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        idx = bc.resolve_env_idx(env_idx, self.num_envs)
        specs = dict(zip(idx.tolist(), self._book.start(seed, idx), strict=True))
        for k, (env, group) in enumerate(zip(self.envs, self._groups, strict=True)):
            local = np.flatnonzero(np.isin(group, idx))
            if local.size == 0:
                continue
            options: dict[str, Any] = {"episodes": episodes_to_arrays(self.task, [specs[int(group[j])] for j in local])}
            if local.size < len(group):
                options["env_idx"] = torch.as_tensor(local, device=self.device)
            # ManiSkill's own RNGs are unused (episodes come from the task); a fixed seed keeps them deterministic.
            self._raw_obs[k], self._infos[k] = env.reset(seed=0, options=options)
        info = _cat(self._infos)
        return self._observation(info), self._numpy_info(info)

    def step(self, action: ArrayLike) -> StepResult:
        r = self.step_torch(action)
        obs = self._observation(r.info)
        info = self._numpy_info(r.info)
        return bc.make_step_result(obs, r.reward.cpu().numpy().astype(np.float32), info, r.truncated.cpu().numpy())

    def step_torch(self, action: ArrayLike | torch.Tensor) -> TorchStepResult:
        """One step keeping results on the sim device (GPU rollouts). ``action`` (N, 8) numpy or torch."""
        if isinstance(action, torch.Tensor):
            action = action.detach().cpu().numpy()
        qpos = self.get_qpos() if self.config.control_mode == "pd_joint_delta_pos" else None
        targets = validate_action(action, self.num_envs, self.config.control_mode, qpos)  # (N, 8) absolute
        for k, (env, group) in enumerate(zip(self.envs, self._groups, strict=True)):
            a = torch.as_tensor(targets[group], dtype=torch.float32, device=self.device)  # (n_k, 8)
            self._raw_obs[k], _, _, _, self._infos[k] = env.step(a)
        truncated = torch.as_tensor(self._book.tick(), device=self.device)
        info = _cat(self._infos)
        return TorchStepResult(
            rgb=self._rgb_tensor(),
            qpos=self._lift_state("qpos"),
            qvel=self._lift_state("qvel"),
            reward=info["lift_reward"].float(),
            terminated=info["success"].bool(),
            truncated=truncated,
            info=info,
        )

    def get_observation(self) -> Observation:
        for k, env in enumerate(self.envs):
            self._infos[k] = env.get_info()
            self._raw_obs[k] = env.get_obs(self._infos[k])
        return self._observation(_cat(self._infos))

    def get_qpos(self) -> NDArray[np.float32]:
        return self._lift_state("qpos").cpu().numpy()

    def get_qvel(self) -> NDArray[np.float32]:
        return self._lift_state("qvel").cpu().numpy()

    def set_qpos(self, qpos: ArrayLike, env_idx: NDArray[np.int64] | None = None) -> None:
        idx = bc.resolve_env_idx(env_idx, self.num_envs)
        q8 = np.asarray(qpos, dtype=np.float64).reshape(-1, 8)
        if q8.shape[0] != len(idx):
            raise ValueError(f"qpos must have shape ({len(idx)}, 8) for env_idx {idx.tolist()}, got {np.shape(qpos)}")
        by_env = dict(zip(idx.tolist(), q8, strict=True))
        for env, group in zip(self.envs, self._groups, strict=True):
            local = [j for j, g in enumerate(group.tolist()) if g in by_env]
            if not local:
                continue
            robot = env.agent.robot
            full = robot.get_qpos().clone()  # (n_k, 9)
            new = torch.as_tensor(np.stack([by_env[int(group[j])] for j in local]), dtype=torch.float32, device=self.device)
            full[torch.as_tensor(local, device=self.device)] = env.agent.articulation_qpos(new)
            robot.set_qpos(full)
            robot.set_qvel(torch.zeros_like(full))
            env.agent.set_drive_targets(full)
            self._sync_kinematics(env)

    def gripper_pose(self) -> NDArray[np.float64]:
        return _cat([env.gripper_pose_matrix() for env in self.envs]).cpu().numpy().astype(np.float64)

    def render(self, camera: str = "third_person") -> NDArray[np.uint8]:
        if camera not in ("third_person", "wrist"):
            raise ValueError(f"camera must be 'third_person' or 'wrist', got {camera!r}")
        img = _cat([env.render_rgb_array(camera_name=camera) for env in self.envs])  # (N, H, W, 3) uint8
        return np.ascontiguousarray(img.cpu().numpy().astype(np.uint8))

    def close(self) -> None:
        for env in getattr(self, "envs", []):
            env.close()
        self.envs = []

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _sync_kinematics(env: PickPlaceCraneX7Env) -> None:
        """Make link poses follow a teleport at once (GPU PhysX only updates them on request)."""
        scene = env.scene
        if scene.gpu_sim_enabled:
            scene._gpu_apply_all()
            scene.px.gpu_update_articulation_kinematics()
            scene._gpu_fetch_all()

    def _lift_state(self, which: str) -> torch.Tensor:
        """(N, 8) float32 qpos or qvel in Lift joint order."""
        parts = []
        for env in self.envs:
            robot = env.agent.robot
            raw = robot.get_qpos() if which == "qpos" else robot.get_qvel()
            parts.append(env.agent.lift_qpos(raw).float())
        return _cat(parts)

    def _rgb_tensor(self) -> torch.Tensor | None:
        if not self.config.render_images:
            return None
        uid = "wrist" if self.config.camera == "wrist" else "third_person"
        rgb: torch.Tensor = _cat([raw["sensor_data"][uid]["rgb"] for raw in self._raw_obs])  # (N, H, W, 3) uint8
        return rgb

    def _observation(self, info: dict[str, Any]) -> Observation:
        rgb_t = self._rgb_tensor()
        rgb = bc.empty_images(self.num_envs) if rgb_t is None else np.ascontiguousarray(rgb_t.cpu().numpy())
        state = TaskState(
            tcp_pos=info["tcp_pos"].cpu().numpy().astype(np.float64),
            cube_pos=info["cube_pos"].cpu().numpy().astype(np.float64),
            goal_pos=info["goal_pos"].cpu().numpy().astype(np.float64),
            gripper_q=np.zeros(self.num_envs),
            is_grasped=info["is_grasped"].cpu().numpy().astype(bool),
        )
        return bc.make_observation(rgb, self.get_qpos(), self.get_qvel(), state, info["cube_quat"].cpu().numpy())

    @staticmethod
    def _numpy_info(info: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in info.items():
            if isinstance(value, torch.Tensor):
                arr = value.cpu().numpy()
                out[key] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
            elif key != "reconfigure":
                out[key] = value
        out.pop("lift_reward", None)
        return out
