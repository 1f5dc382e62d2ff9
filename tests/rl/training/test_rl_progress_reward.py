"""Progress rewards: a staged reward paid as its change per step, so an episode's return is where it ends.

A scripted Lift simulator replays a fixed staged-reward sequence per env (PickPlace's stage values: reach 0.1,
grasp 0.3, lift 0.5, over the goal 0.7, success 1.0 which ends the episode), acted on by a real tiny VLA
policy through the production collector and trainer wiring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.registry import register_simulator
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult

NAME = "rl-test-stages"
# Env 0 succeeds at step 5; env 1 grasps, loses the cube and lingers; env 2 hovers over the goal to the horizon.
SCHEDULE = np.array([
    [0.1, 0.3, 0.5, 0.7, 1.0, 0.0],
    [0.1, 0.3, 0.1, 0.1, 0.1, 0.1],
    [0.1, 0.3, 0.5, 0.7, 0.7, 0.7],
], dtype=np.float32)


@register_simulator(NAME)
class StageSimulator(Simulator):
    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.t = 0

    def _obs(self) -> Observation:
        h, w = self.config.image_size
        img = np.full((self.num_envs, h, w, 3), 40 * self.t, dtype=np.uint8)
        z = np.zeros((self.num_envs, 8), dtype=np.float32)
        return Observation(rgb_image=img, qpos=z, qvel=z.copy())

    def reset(self, seed: int | None = None,
              env_idx: NDArray[np.int64] | None = None) -> tuple[Observation, dict[str, Any]]:
        self.t = 0
        return self._obs(), {}

    def step(self, action: ArrayLike) -> StepResult:
        reward = SCHEDULE[: self.num_envs, self.t]
        self.t += 1
        success = reward == 1.0
        return StepResult(self._obs(), reward.copy(), success, np.zeros(self.num_envs, dtype=bool),
                          {"success": success})

    def get_observation(self) -> Observation:
        return self._obs()

    def render(self, camera: str = "third_person") -> NDArray[np.uint8]:
        return self._obs().rgb_image

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def policy(rl_tiny_ckpt: Path) -> Any:
    from crane_x7_vla.models import load_vla
    from crane_x7_vla_rl.policy import VLAActorCritic

    torch.manual_seed(0)
    return VLAActorCritic(load_vla(rl_tiny_ckpt), lora_rank=4, lora_alpha=8)


def _segment(policy: Any, progress: bool) -> Any:
    from crane_x7_vla_rl.rollout.collector import RolloutCollector

    sim = StageSimulator(SimulatorConfig(num_envs=3, image_size=(56, 56)))
    collector = RolloutCollector(sim, policy, instruction="pick", max_steps=SCHEDULE.shape[1],
                                 temperature=1.0, device=torch.device("cpu"), progress=progress)
    return collector.collect(0, torch.Generator().manual_seed(0), lambda s: 0)


def test_progress_pays_the_change_and_the_return_is_the_final_stage(policy: Any) -> None:
    raw, prog = _segment(policy, False), _segment(policy, True)
    assert torch.equal(raw.valid, prog.valid)
    valid = prog.valid.T  # [N, T]
    assert valid[0].tolist() == [True] * 5 + [False]  # success ends env 0 after step 5
    for i in range(3):
        paid = raw.rewards.T[i][valid[i]].numpy()
        np.testing.assert_allclose(paid, SCHEDULE[i][: len(paid)])
        np.testing.assert_allclose(prog.rewards.T[i][valid[i]].numpy(), np.diff(paid, prepend=0.0), atol=1e-6)
    # Paid per step, hovering over the goal (env 2) out-earns the success of env 0; as progress it cannot,
    # and losing the cube (env 1) is paid back.
    assert raw.episode_returns[2] > raw.episode_returns[0]
    torch.testing.assert_close(prog.episode_returns, torch.tensor([1.0, 0.1, 0.7]))


def test_trainer_uses_progress_for_staged_rewards_only(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    from crane_x7_vla_rl.config import validate
    from crane_x7_vla_rl.training.trainer import Trainer

    def collector_progress(**rollout: Any) -> bool:
        cfg = validate({"device": "cpu", "pretrained_checkpoint": str(rl_tiny_ckpt), "output_dir": str(tmp_path),
                        "lora_rank": 4, "lora_alpha": 8, "use_tensorboard": False,
                        "rollout": {"simulator": NAME, "num_parallel_envs": 3, "num_rollouts_per_update": 3,
                                    "max_steps": 6, "image_size": [56, 56], **rollout}})
        return bool(Trainer(cfg, progress=False).collector.progress)

    assert collector_progress(reward_mode="staged")
    assert collector_progress(reward_mode="dense")
    assert not collector_progress(reward_mode="binary")
    assert not collector_progress(reward_mode="staged", progress_reward=False)
