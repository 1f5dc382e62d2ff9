"""Rollouts through the static-cache engine act exactly like the eager LoRA policy, also after the adapters train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crane_x7_vla.models.loading import load_vla
from crane_x7_vla_rl.policy import VLAActorCritic

INSTRUCTIONS = ["pick up the red cube", "place it", "pick up the red cube and place it on the green target"]


def _eager_log_prob(policy: VLAActorCritic, images: list[np.ndarray], tokens: torch.Tensor) -> torch.Tensor:
    inputs = policy.prepare(images, INSTRUCTIONS)
    with torch.no_grad():
        out = policy.vla.action_token_log_probs(inputs, tokens, 0.0)  # type: ignore[operator]
    return out.log_probs.sum(-1)


def test_engine_policy_follows_lora_updates(rl_tiny_ckpt: Path) -> None:
    torch.manual_seed(0)
    policy = VLAActorCritic(load_vla(rl_tiny_ckpt), lora_rank=4, lora_alpha=8)
    with torch.no_grad():  # non-trivial adapters (B starts at zero)
        for name, p in policy.vla.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in INSTRUCTIONS]
    want = policy.act(images, INSTRUCTIONS, 0.0)  # eager
    policy.enable_engine(4)
    assert policy.engine_enabled
    got = policy.act(images, INSTRUCTIONS, 0.0)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.log_prob, want.log_prob, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.value, want.value, atol=1e-4, rtol=1e-4)

    # A training step writes the adapters in place; the engine must re-merge before it acts again.
    with torch.no_grad():
        for p in policy.lora_parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    stale = policy._engine.sample(policy.prepare(images, INSTRUCTIONS), 0.0)
    fresh = policy.act(images, INSTRUCTIONS, 0.0)
    expected = _eager_log_prob(policy, images, fresh.tokens)
    torch.testing.assert_close(fresh.log_prob, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(stale.log_probs.sum(-1), _eager_log_prob(policy, images, stale.tokens), atol=1e-3)

    # Sampling: the stored log-prob is the teacher-forced one PPO recomputes at the same temperature.
    sampled = policy.act(images, INSTRUCTIONS, 1.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = policy.evaluate_actions(images, INSTRUCTIONS, sampled.tokens, 1.0)
    torch.testing.assert_close(sampled.log_prob, ref.log_prob, atol=1e-4, rtol=1e-4)
