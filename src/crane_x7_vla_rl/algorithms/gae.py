"""Generalised Advantage Estimation (Schulman et al. 2016) over a [T, N] rollout.

Design: the caller passes ``next_values`` = V(s_{t+1}) for every step, where s_{t+1} is the observation the
step actually produced (before any reset). That single convention handles both kinds of episode end:
``terminated`` (a true end: no bootstrap, delta_t = r_t - V(s_t)) and ``truncated`` (a time limit: bootstrap
from V(s_{t+1})); either one stops the advantage recursion, so steps of the next episode never leak back.
"""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,  # [T, N]
    values: torch.Tensor,  # [T, N]  V(s_t)
    next_values: torch.Tensor,  # [T, N]  V(s_{t+1}) of the observation the step produced
    terminated: torch.Tensor,  # [T, N] bool
    truncated: torch.Tensor,  # [T, N] bool
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (advantages [T, N], returns [T, N]) with returns = advantages + values (the value targets)."""
    if not (rewards.shape == values.shape == next_values.shape == terminated.shape == truncated.shape):
        raise ValueError(
            "compute_gae: rewards, values, next_values, terminated and truncated must share one [T, N] shape, "
            f"got {[tuple(x.shape) for x in (rewards, values, next_values, terminated, truncated)]}"
        )
    not_terminal = 1.0 - terminated.to(values.dtype)  # [T, N]
    not_done = 1.0 - (terminated | truncated).to(values.dtype)  # [T, N]
    delta = rewards + gamma * next_values * not_terminal - values  # [T, N]  TD residual
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[0])  # [N]
    for t in reversed(range(values.shape[0])):
        last = delta[t] + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values
