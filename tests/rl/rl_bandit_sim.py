"""A contextual-bandit Lift simulator for the learning test.

Each env shows a solid red or blue image and one of two instructions; the rewarded action is "joint 1 target
above its mid-range" when (colour XOR instruction) is 1 and "below" otherwise, so neither the image nor the
instruction alone beats chance (50%). Episodes are one step long (terminated after it). Everything else is the
ordinary Lift interface, so training on it runs the exact production path (policy, collector, PPO, trainer).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.registry import register_simulator
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult
from crane_x7_vla.robot import ACTION_LOWER, ACTION_UPPER

NAME = "rl-test-bandit"
INSTRUCTIONS = ("choose by the colour", "choose against the colour")
COLOURS = np.array([[220, 30, 30], [30, 30, 220]], dtype=np.uint8)
MID = (ACTION_LOWER[0] + ACTION_UPPER[0]) / 2


class ScriptedSimulator(Simulator):
    """A test simulator whose whole observation comes from ``_obs()`` (subclasses define it, reset and step)."""

    def _obs(self) -> Observation:
        raise NotImplementedError

    def get_observation(self) -> Observation:
        return self._obs()

    def render(self, camera: str = "third_person") -> NDArray[np.uint8]:
        return self._obs().rgb_image

    def close(self) -> None:
        pass


@register_simulator(NAME)
class BanditSimulator(ScriptedSimulator):
    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        n = config.num_envs
        self.colour = np.zeros(n, dtype=np.int64)
        self.instr = np.zeros(n, dtype=np.int64)

    def _obs(self) -> Observation:
        h, w = self.config.image_size
        img = np.broadcast_to(COLOURS[self.colour][:, None, None, :], (self.num_envs, h, w, 3)).copy()
        z = np.zeros((self.num_envs, 8), dtype=np.float32)
        return Observation(rgb_image=img, qpos=z, qvel=z.copy())

    def reset(self, seed: int | None = None,
              env_idx: NDArray[np.int64] | None = None) -> tuple[Observation, dict[str, Any]]:
        idx = np.arange(self.num_envs) if env_idx is None else np.asarray(env_idx)
        for i in idx:
            rng = np.random.default_rng(None if seed is None else seed + int(i))
            self.colour[i], self.instr[i] = rng.integers(0, 2, size=2)
        return self._obs(), {"instruction": [INSTRUCTIONS[k] for k in self.instr]}

    def target_high(self) -> NDArray[np.bool_]:
        return (self.colour ^ self.instr).astype(bool)

    def step(self, action: ArrayLike) -> StepResult:
        a = np.asarray(action, dtype=np.float64).reshape(self.num_envs, 8)
        success = (a[:, 0] > MID) == self.target_high()
        n = self.num_envs
        return StepResult(self._obs(), success.astype(np.float32), np.ones(n, dtype=bool), np.zeros(n, dtype=bool),
                          {"success": success})
