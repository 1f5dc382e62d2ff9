"""The PPO objective (Schulman et al. 2017) for a token-level VLA policy, as one pure function.

The policy's action log-probability is the sum of its action tokens' log-probs (computed by the policy over
the 256 action-bin logits), so here an "action" is one scalar log-prob per transition. Symbols follow the
paper and cleanrl: ratio r = exp(log pi - log pi_old), clipped surrogate with ``clip_coef``, optionally clipped
value loss, entropy bonus, and the k3 approx-KL estimator ((r - 1) - log r) used for early stopping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PPOLoss:
    """The scalar loss to backpropagate and its detached parts (for logging)."""

    loss: torch.Tensor  # scalar, differentiable
    policy_loss: torch.Tensor  # scalar
    value_loss: torch.Tensor  # scalar (0 without a critic)
    entropy: torch.Tensor  # scalar, mean per-transition entropy
    approx_kl: torch.Tensor  # scalar, k3 estimator of KL(pi_old || pi)
    old_approx_kl: torch.Tensor  # scalar, -mean(log r)
    clip_fraction: torch.Tensor  # scalar, share of transitions with |r - 1| > clip_coef
    ratio: torch.Tensor  # [B] detached probability ratios


def ppo_loss(
    new_log_probs: torch.Tensor,  # [B]
    old_log_probs: torch.Tensor,  # [B]
    advantages: torch.Tensor,  # [B]
    entropy: torch.Tensor,  # [B]
    new_values: torch.Tensor | None = None,  # [B] (None: no critic, e.g. GRPO)
    old_values: torch.Tensor | None = None,  # [B]
    returns: torch.Tensor | None = None,  # [B]
    *,
    clip_coef: float = 0.2,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    clip_value_loss: bool = True,
    value_clip_range: float = 0.2,
    normalize_advantages: bool = True,
) -> PPOLoss:
    log_ratio = new_log_probs - old_log_probs  # [B]
    ratio = log_ratio.exp()  # [B]
    with torch.no_grad():
        old_approx_kl = (-log_ratio).mean()
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()

    adv = advantages
    if normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    # Clipped surrogate: maximise min(r A, clip(r) A) == minimise max(-r A, -clip(r) A).
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    policy_loss = torch.max(pg_loss1, pg_loss2).mean()

    if new_values is not None:
        if returns is None:
            raise ValueError("ppo_loss: returns are required with new_values")
        v_loss_unclipped = (new_values - returns) ** 2
        if clip_value_loss:
            if old_values is None:
                raise ValueError("ppo_loss: clip_value_loss needs old_values")
            v_clipped = old_values + torch.clamp(new_values - old_values, -value_clip_range, value_clip_range)
            value_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - returns) ** 2).mean()
        else:
            value_loss = 0.5 * v_loss_unclipped.mean()
    else:
        value_loss = torch.zeros((), dtype=new_log_probs.dtype, device=new_log_probs.device)

    entropy_mean = entropy.mean()
    loss = policy_loss - entropy_coef * entropy_mean + value_coef * value_loss
    return PPOLoss(
        loss=loss,
        policy_loss=policy_loss.detach(),
        value_loss=value_loss.detach(),
        entropy=entropy_mean.detach(),
        approx_kl=approx_kl,
        old_approx_kl=old_approx_kl,
        clip_fraction=clip_fraction,
        ratio=ratio.detach(),
    )


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
    """1 - Var[y - y_pred] / Var[y]: 1 is a perfect critic, 0 no better than a constant (nan if Var[y]==0)."""
    var_y = torch.var(y_true)
    if var_y.item() == 0:
        return float("nan")
    return float(1.0 - torch.var(y_true - y_pred) / var_y)
