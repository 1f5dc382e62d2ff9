"""Pure tensor math of the RL algorithms (GAE, PPO, GRPO): no environment, model or I/O imports."""

from crane_x7_vla_rl.algorithms.gae import compute_gae
from crane_x7_vla_rl.algorithms.grpo import group_relative_advantages
from crane_x7_vla_rl.algorithms.ppo import PPOLoss, explained_variance, ppo_loss

__all__ = ["PPOLoss", "compute_gae", "explained_variance", "group_relative_advantages", "ppo_loss"]
