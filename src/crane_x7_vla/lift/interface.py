"""The abstract simulator every Lift backend implements (MuJoCo, ManiSkill3, Genesis)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult
from crane_x7_vla.robot import ARM_JOINT_NAMES, GRIPPER_JOINT_NAMES


class Simulator(ABC):
    """A batched CRANE-X7 task simulator.

    ``reset(seed)`` is deterministic: the same seed gives the same initial state and images.
    ``step(action)`` takes (N, 8) (or (8,) when N == 1): 7 arm joint targets + gripper finger_a target (rad)
    in ``pd_joint_pos`` mode, or deltas in ``pd_joint_delta_pos`` mode. Bad actions raise
    :class:`~crane_x7_vla.lift.errors.ActionError` before touching the simulation.
    """

    arm_joint_names: tuple[str, ...] = ARM_JOINT_NAMES
    gripper_joint_names: tuple[str, ...] = GRIPPER_JOINT_NAMES

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config

    @property
    def num_envs(self) -> int:
        return self.config.num_envs

    @abstractmethod
    def reset(
        self, seed: int | None = None, env_idx: NDArray[np.int64] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Reset all envs (or only ``env_idx``); env i is seeded with ``seed + i``."""

    @abstractmethod
    def step(self, action: ArrayLike) -> StepResult: ...

    @abstractmethod
    def get_observation(self) -> Observation: ...

    def get_qpos(self) -> NDArray[np.float32]:
        return self.get_observation().qpos

    def get_qvel(self) -> NDArray[np.float32]:
        return self.get_observation().qvel

    def set_qpos(self, qpos: ArrayLike, env_idx: NDArray[np.int64] | None = None) -> None:
        """Teleport the robot to ``qpos`` (N, 8) (or (8,)): 7 arm joints + finger_a (finger_b mirrors it).

        Velocities become zero and the position targets become ``qpos`` so the robot holds still there;
        forward kinematics are updated at once (the conformance suite compares poses with
        :func:`crane_x7_vla.robot.gripper_pose`).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement set_qpos")

    def gripper_pose(self) -> NDArray[np.float64]:
        """(N, 4, 4) pose of ``crane_x7_gripper_base_link`` in the world (= ``base_link``) frame."""
        raise NotImplementedError(f"{type(self).__name__} does not implement gripper_pose")

    def render(self, camera: str = "third_person") -> NDArray[np.uint8]:
        """(N, H, W, 3) uint8 image of the named camera (for videos)."""
        raise NotImplementedError(f"{type(self).__name__} does not render camera {camera!r}")

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
