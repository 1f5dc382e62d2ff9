"""The PPO objective: clipping behaviour, value clipping, KL estimator, GRPO advantages."""

from __future__ import annotations

import pytest
import torch

from crane_x7_vla_rl.algorithms import explained_variance, group_relative_advantages, ppo_loss


def _loss(new_lp: float, adv: float, **kw: object):  # type: ignore[no-untyped-def]
    new = torch.tensor([new_lp], requires_grad=True)
    out = ppo_loss(new, torch.tensor([0.0]), torch.tensor([adv]), torch.tensor([0.0]),
                   clip_coef=0.2, entropy_coef=0.0, normalize_advantages=False, **kw)  # type: ignore[arg-type]
    out.loss.backward()
    assert new.grad is not None
    return out, float(new.grad[0])


def test_identical_policy_ratio_one_no_kl_no_clipping() -> None:
    lp = torch.randn(16)
    out = ppo_loss(lp.clone(), lp, torch.randn(16), torch.rand(16), normalize_advantages=False)
    assert torch.allclose(out.ratio, torch.ones(16))
    assert out.approx_kl.item() == pytest.approx(0.0, abs=1e-7)
    assert out.clip_fraction.item() == 0.0


def test_positive_advantage_clipped_above_1_plus_eps() -> None:
    # ratio = e^0.5 = 1.65 > 1.2 with A > 0: the clipped term is active, no gradient flows.
    out, grad = _loss(0.5, 1.0)
    assert out.policy_loss.item() == pytest.approx(-1.2)
    assert grad == 0.0
    assert out.clip_fraction.item() == 1.0
    # inside the trust region the gradient is -A * ratio
    out, grad = _loss(0.1, 1.0)
    assert grad == pytest.approx(-torch.exp(torch.tensor(0.1)).item(), rel=1e-6)


def test_negative_advantage_clipped_below_1_minus_eps_but_not_above() -> None:
    out, grad = _loss(-0.5, -1.0)  # ratio 0.61 < 0.8 with A < 0: clipped, no gradient
    assert out.policy_loss.item() == pytest.approx(0.8)
    assert grad == 0.0
    out, grad = _loss(0.5, -1.0)  # ratio 1.65 with A < 0: pessimistic bound keeps the gradient
    assert out.policy_loss.item() == pytest.approx(torch.exp(torch.tensor(0.5)).item(), rel=1e-6)
    assert grad > 0


def test_value_loss_clipping_takes_the_pessimistic_branch() -> None:
    kw = dict(clip_coef=0.2, entropy_coef=0.0, value_coef=1.0, normalize_advantages=False)
    zero = torch.zeros(1)
    new_v = torch.tensor([1.0], requires_grad=True)
    out = ppo_loss(zero, zero, zero, zero, new_v, torch.tensor([0.0]), torch.tensor([2.0]),
                   clip_value_loss=True, value_clip_range=0.2, **kw)  # type: ignore[arg-type]
    # unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> max = 3.24
    assert out.value_loss.item() == pytest.approx(0.5 * 3.24)
    out2 = ppo_loss(zero, zero, zero, zero, new_v, torch.tensor([0.0]), torch.tensor([2.0]),
                    clip_value_loss=False, **kw)  # type: ignore[arg-type]
    assert out2.value_loss.item() == pytest.approx(0.5)


def test_entropy_bonus_lowers_the_loss() -> None:
    z = torch.zeros(4)
    a = ppo_loss(z, z, z, torch.full((4,), 2.0), entropy_coef=0.1, normalize_advantages=False)
    assert a.loss.item() == pytest.approx(-0.2)


def test_explained_variance() -> None:
    y = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full((3,), 2.0), y) == pytest.approx(0.0)


def test_group_relative_advantages() -> None:
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    adv = group_relative_advantages(r, g)
    assert adv[0] > 0 > adv[1]
    assert adv[0].item() == pytest.approx(-adv[1].item())
    assert torch.all(adv[2:] == 0)  # no signal inside uniform groups
