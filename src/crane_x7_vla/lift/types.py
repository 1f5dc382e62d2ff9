"""Data types of the Lift simulator interface (pure, no simulator imports).

Every array is batched: the leading dimension is ``num_envs`` (1 for a single CPU env).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Backend = Literal["cpu", "gpu"]
ControlMode = Literal["pd_joint_pos", "pd_joint_delta_pos"]
RewardMode = Literal["binary", "staged", "dense"]
CameraName = Literal["wrist", "third_person"]


@dataclass(frozen=True)
class SimulatorConfig:
    """How to build a simulator. Field names and defaults follow the seed's documented ``SimulatorConfig``."""

    env_id: str = "PickPlace-CRANE-X7"  # registered task id
    backend: Backend = "cpu"  # "cpu" or "gpu" (batched GPU physics/rendering where the backend has it)
    render_mode: str = "rgb_array"  # "rgb_array" (offscreen) or "human" (a viewer window, where supported)
    control_mode: ControlMode = "pd_joint_pos"  # 8 absolute targets, or 8 deltas added to the current qpos
    sim_rate: float = 30.0  # control ticks per second (physics substeps are the backend's business)
    max_episode_steps: int = 200  # truncation horizon
    robot_init_qpos_noise: float = 0.02  # uniform noise (rad) added to the rest pose at reset
    num_envs: int = 1  # parallel envs (leading batch dim)
    reward_mode: RewardMode = "binary"  # binary success, staged (reach/grasp/lift/place) or dense
    camera: CameraName = "wrist"  # which camera fills Observation.rgb_image
    image_size: tuple[int, int] = (224, 224)  # (height, width) of rendered images
    render_images: bool = True  # False skips rendering (state-only rollouts, benchmarks)
    device: str = "cuda"  # torch device for GPU backends


@dataclass
class Observation:
    """One batched observation. ``rgb_image`` (N,H,W,3) uint8; ``qpos``/``qvel`` (N,8) = 7 arm + finger_a."""

    rgb_image: NDArray[np.uint8]
    qpos: NDArray[np.float32]
    qvel: NDArray[np.float32]
    depth_image: NDArray[np.float32] | None = None
    extra: dict[str, NDArray[Any]] = field(default_factory=dict)  # e.g. tcp_pose, cube_pos, goal_pos


@dataclass
class StepResult:
    """Result of one batched step. ``reward`` (N,) float32; ``terminated``/``truncated`` (N,) bool."""

    observation: Observation
    reward: NDArray[np.float32]
    terminated: NDArray[np.bool_]
    truncated: NDArray[np.bool_]
    info: dict[str, Any]  # at least "success" (N,) bool and the task metrics
