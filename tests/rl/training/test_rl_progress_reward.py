"""Progress rewards: a staged reward paid as potential-based shaping, gamma * r_t - r_{t-1}.

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
from rl_bandit_sim import ScriptedSimulator

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
class StageSimulator(ScriptedSimulator):
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


@pytest.fixture(scope="module")
def policy(rl_tiny_ckpt: Path) -> Any:
    from crane_x7_vla.models import load_vla
    from crane_x7_vla_rl.policy import VLAActorCritic

    torch.manual_seed(0)
    return VLAActorCritic(load_vla(rl_tiny_ckpt), lora_rank=4, lora_alpha=8)


def _segment(policy: Any, gamma: float | None) -> Any:
    from crane_x7_vla_rl.rollout.collector import RolloutCollector

    sim = StageSimulator(SimulatorConfig(num_envs=3, image_size=(56, 56)))
    collector = RolloutCollector(sim, policy, instruction="pick", max_steps=SCHEDULE.shape[1],
                                 temperature=1.0, device=torch.device("cpu"), progress_gamma=gamma)
    return collector.collect(0, torch.Generator().manual_seed(0), lambda s: 0)


def test_progress_pays_discounted_potential_changes(policy: Any) -> None:
    gamma = 0.9
    raw, prog, flat = _segment(policy, None), _segment(policy, gamma), _segment(policy, 1.0)
    assert torch.equal(raw.valid, prog.valid)
    valid = prog.valid.T  # [N, T]
    assert valid[0].tolist() == [True] * 5 + [False]  # success ends env 0 after step 5
    for i in range(3):
        paid = raw.rewards.T[i][valid[i]].numpy()
        np.testing.assert_allclose(paid, SCHEDULE[i][: len(paid)])
        previous = np.concatenate([[0.0], paid[:-1]])
        terminal = paid == 1.0
        expected = np.where(terminal, paid, gamma * paid) - previous
        np.testing.assert_allclose(prog.rewards.T[i][valid[i]].numpy(), expected, atol=1e-6)
    # Paid per step, hovering over the goal (env 2) out-earns the success of env 0.
    assert raw.episode_returns[2] > raw.episode_returns[0]
    # Undiscounted changes bank the stage an episode ends in (the trap: holding beats a risky attempt) ...
    torch.testing.assert_close(flat.episode_returns, torch.tensor([1.0, 0.1, 0.7]))
    # ... discounted ones make every step spent lingering cost reward: hovering is paid (gamma - 1) * 0.7.
    hover = prog.rewards.T[2][valid[2]]
    torch.testing.assert_close(hover[-2:], torch.full((2,), (gamma - 1) * 0.7))
    assert prog.episode_returns[0] > prog.episode_returns[2]


def test_trainer_uses_progress_for_staged_rewards_only(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    from crane_x7_vla_rl.config import validate
    from crane_x7_vla_rl.training.trainer import Trainer

    def collector_progress(**rollout: Any) -> float | None:
        cfg = validate({"device": "cpu", "pretrained_checkpoint": str(rl_tiny_ckpt), "output_dir": str(tmp_path),
                        "lora_rank": 4, "lora_alpha": 8, "use_tensorboard": False,
                        "rollout": {"simulator": NAME, "num_parallel_envs": 3, "num_rollouts_per_update": 3,
                                    "max_steps": 6, "image_size": [56, 56], **rollout}})
        return Trainer(cfg, progress=False).collector.progress_gamma

    assert collector_progress(reward_mode="staged") == 0.99  # ppo.gamma
    assert collector_progress(reward_mode="dense") == 0.99
    assert collector_progress(reward_mode="binary") is None
    assert collector_progress(reward_mode="staged", progress_reward=False) is None
