"""Pure bookkeeping shared by the batched backends (ManiSkill3, Genesis): seeding, step counters, packing.

Design: a backend only moves bodies and reads raw state; *which* episode env ``i`` gets (``seed + i`` through
the shared task's ``sample_episode``), when it truncates and how the raw state becomes reward/success/info is
decided here and in :mod:`crane_x7_vla.lift.tasks`, in numpy, so every backend agrees by construction.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla.lift.tasks import EpisodeSpec, PickPlaceTask, TaskState
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult
from crane_x7_vla.robot import REST_QPOS

F64 = NDArray[np.float64]


def cache_dir(*parts: str) -> Path:
    """``$CRANE_X7_CACHE`` (default ``~/.cache/crane-x7-vla``) joined with ``parts``; created on demand."""
    root = Path(os.environ.get("CRANE_X7_CACHE") or Path.home() / ".cache" / "crane-x7-vla")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def urdf_file() -> Path:
    """The generated CRANE-X7 URDF (:func:`crane_x7_vla.robot.model.urdf`) as a file, written once per content."""
    from crane_x7_vla.robot import model as robot_model
    from crane_x7_vla.utils.atomic import write_text_atomic

    text = robot_model.urdf()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = cache_dir("urdf") / f"crane_x7-{digest}.urdf"
    if not path.exists():
        write_text_atomic(path, text)
    return path


def resolve_env_idx(env_idx: NDArray[np.int64] | None, num_envs: int) -> NDArray[np.int64]:
    """Validated, sorted env indices (all envs when ``None``)."""
    if env_idx is None:
        return np.arange(num_envs, dtype=np.int64)
    idx = np.unique(np.asarray(env_idx, dtype=np.int64).reshape(-1))
    if idx.size == 0 or idx.min() < 0 or idx.max() >= num_envs:
        raise ValueError(f"env_idx must hold indices in [0, {num_envs}), got {np.asarray(env_idx).tolist()}")
    return idx


@dataclass
class EpisodeBook:
    """Per-env episode specs and step counters of a batched simulator."""

    task: PickPlaceTask
    config: SimulatorConfig
    # Unseeded resets draw their seeds here; seeded at construction so a whole run is reproducible.
    _seed_rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng())
    episodes: list[EpisodeSpec | None] = field(default_factory=list)
    elapsed: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        n = self.config.num_envs
        self.episodes = [None] * n
        self.elapsed = np.zeros(n, dtype=np.int64)

    def start(self, seed: int | None, env_idx: NDArray[np.int64]) -> list[EpisodeSpec]:
        """Sample the episodes of ``env_idx`` (env i <- ``seed + i``) and zero their step counters."""
        base = int(self._seed_rng.integers(0, 2**31 - 1)) if seed is None else int(seed)
        specs = [
            self.task.sample_episode(np.random.default_rng(base + int(i)), self.config.robot_init_qpos_noise)
            for i in env_idx
        ]
        for i, spec in zip(env_idx, specs, strict=True):
            self.episodes[int(i)] = spec
        self.elapsed[env_idx] = 0
        return specs

    def tick(self) -> NDArray[np.bool_]:
        """Count one step in every env; returns ``truncated`` (N,) bool."""
        self.elapsed += 1
        return self.elapsed >= self.config.max_episode_steps

    def goal_pos(self) -> F64:
        """(N, 3) goal disc centres (z = table top = 0)."""
        out = np.zeros((self.config.num_envs, 3))
        for i, spec in enumerate(self.episodes):
            if spec is not None:
                out[i, :2] = spec.goal_xy
        return out


def rest_qpos8(n: int) -> F64:
    """(n, 8) rest pose (7 arm + finger_a)."""
    return np.tile(np.asarray(REST_QPOS, dtype=np.float64), (n, 1))


def yaw_quat_wxyz(yaw: float) -> tuple[float, float, float, float]:
    return (float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2)))


def empty_images(n: int) -> NDArray[np.uint8]:
    """Placeholder ``rgb_image`` for state-only rollouts: (n, 0, 0, 3) uint8, so nobody mistakes it for a frame."""
    return np.zeros((n, 0, 0, 3), dtype=np.uint8)


def make_observation(
    rgb: NDArray[np.uint8],
    qpos: NDArray[np.floating[Any]],
    qvel: NDArray[np.floating[Any]],
    state: TaskState,
    cube_quat: NDArray[np.floating[Any]],
) -> Observation:
    """Pack raw measurements into the Lift :class:`Observation` (the contract's ``extra`` keys)."""
    return Observation(
        rgb_image=rgb,
        qpos=np.ascontiguousarray(qpos, dtype=np.float32),
        qvel=np.ascontiguousarray(qvel, dtype=np.float32),
        extra={
            "tcp_pos": state.tcp_pos.astype(np.float32),
            "cube_pos": state.cube_pos.astype(np.float32),
            "cube_quat": cube_quat.astype(np.float32),
            "goal_pos": state.goal_pos.astype(np.float32),
            "is_grasped": np.asarray(state.is_grasped, dtype=bool),
        },
    )


def evaluate(task: PickPlaceTask, state: TaskState, config: SimulatorConfig) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Reward (N,) float32 and info (``success`` + task metrics) from the shared task."""
    reward, success, metrics = task.evaluate(state, config.reward_mode)
    info: dict[str, Any] = dict(metrics)
    info["success"] = np.asarray(success, dtype=bool)
    return reward.astype(np.float32), info


def make_step_result(obs: Observation, reward: NDArray[np.float32], info: dict[str, Any],
                     truncated: NDArray[np.bool_]) -> StepResult:
    """``terminated`` is success (the goal state); ``truncated`` the time limit (Gymnasium: both may hold)."""
    terminated = np.asarray(info["success"], dtype=bool)
    return StepResult(obs, reward, terminated, np.asarray(truncated, dtype=bool), info)
