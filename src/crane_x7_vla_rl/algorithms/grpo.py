"""GRPO-style group-relative advantages (Shao et al. 2024): no critic.

Episodes that start from the same initial state (and instruction) form a group; each episode's advantage is
its return standardised within the group, and every step of the episode gets that advantage. The policy step
is then the same clipped surrogate as PPO (``ppo_loss`` with ``new_values=None``).
"""

from __future__ import annotations

import torch


def group_relative_advantages(
    episode_returns: torch.Tensor,  # [E]
    group_ids: torch.Tensor,  # [E] int, episodes with equal ids share an initial state
    eps: float = 1e-6,
) -> torch.Tensor:
    """Return [E] advantages (R_i - mean_g) / (std_g + eps); a group of identical returns gets zeros."""
    if episode_returns.shape != group_ids.shape or episode_returns.dim() != 1:
        raise ValueError(f"group_relative_advantages: need two [E] tensors, got "
                         f"{tuple(episode_returns.shape)} and {tuple(group_ids.shape)}")
    out = torch.zeros_like(episode_returns)
    for gid in torch.unique(group_ids):
        members = group_ids == gid
        r = episode_returns[members]
        std = r.std(unbiased=False) if r.numel() > 1 else torch.zeros((), dtype=r.dtype, device=r.device)
        out[members] = (r - r.mean()) / (std + eps)
    return out
