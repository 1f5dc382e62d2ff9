"""Under autocast the LoRA layers skip peft's fp32 cast of their input: same numbers, fewer copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from crane_x7_vla.models.loading import load_vla
from crane_x7_vla_rl.policy import VLAActorCritic

INSTRUCTIONS = ["pick up the red cube", "pick up the red cube and place it on the green target"]


def _bf16_policy(ckpt: Path) -> VLAActorCritic:
    torch.manual_seed(0)
    policy = VLAActorCritic(load_vla(ckpt, dtype=torch.bfloat16), lora_rank=4, lora_alpha=8)
    with torch.no_grad():  # non-trivial adapters (B starts at zero)
        for name, p in policy.vla.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return policy


def _step(policy: VLAActorCritic, images: list[np.ndarray], tokens: torch.Tensor,
          force_cast: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """log-prob, LoRA grads and the number of dtype copies of one forward + backward under CPU bf16 autocast."""
    policy.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), profile(activities=[ProfilerActivity.CPU]) as prof:
        inputs = policy.prepare(images, INSTRUCTIONS)
        if force_cast:  # peft's own behaviour: every adapter input is cast to the fp32 adapter dtype
            for m in policy._lora_layers:
                m.cast_input_dtype_enabled = True
        out = policy.vla.action_token_log_probs(inputs, tokens, 1.0)  # type: ignore[operator]
        log_prob = out.log_probs.float().sum(-1)
        log_prob.sum().backward()
    copies = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
    # (adapters off the action tokens' path, e.g. of a pooling head, get no gradient)
    grads = [p.grad.clone() for p in policy.lora_parameters() if p.grad is not None]
    return log_prob.detach(), grads, copies


def test_autocast_skips_the_lora_input_cast_with_identical_numbers(rl_tiny_ckpt: Path) -> None:
    policy = _bf16_policy(rl_tiny_ckpt)
    assert len(policy._lora_layers) > 0  # peft exposes the switch
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in INSTRUCTIONS]
    first = policy.vla.action_tokenizer.first_token_id  # type: ignore[union-attr]
    tokens = torch.tensor(rng.integers(first, first + 256, (len(INSTRUCTIONS), 8)))

    fast_lp, fast_grads, fast_copies = _step(policy, images, tokens, force_cast=False)
    assert not any(m.cast_input_dtype_enabled for m in policy._lora_layers)
    cast_lp, cast_grads, cast_copies = _step(policy, images, tokens, force_cast=True)

    assert torch.equal(fast_lp, cast_lp)
    assert len(fast_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, cast_grads, strict=True))
    # at least one input cast per adapted layer is gone (its backward twin too)
    assert cast_copies - fast_copies >= len(policy._lora_layers)


def test_the_cast_comes_back_outside_autocast(rl_tiny_ckpt: Path) -> None:
    """A bf16 model run without autocast needs the cast (bf16 input, fp32 adapter weights)."""
    policy = _bf16_policy(rl_tiny_ckpt)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in INSTRUCTIONS]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = policy.value(images, INSTRUCTIONS)
    assert not any(m.cast_input_dtype_enabled for m in policy._lora_layers)
    outside = policy.value(images, INSTRUCTIONS)
    assert all(m.cast_input_dtype_enabled for m in policy._lora_layers)
    assert torch.isfinite(outside).all() and inside.shape == outside.shape
    for m in policy._lora_layers:  # why: without the cast a bf16 input meets the fp32 adapter outside autocast
        m.cast_input_dtype_enabled = False
    inputs = policy.vla.prepare_inputs(images, INSTRUCTIONS)  # type: ignore[operator]
    with pytest.raises(RuntimeError, match="dtype"):
        policy.vla.embed_multimodal(inputs)  # type: ignore[operator]


def test_fp32_policy_is_unchanged(rl_tiny_ckpt: Path) -> None:
    """CPU training (fp32, no autocast) keeps peft's default."""
    policy = VLAActorCritic(load_vla(rl_tiny_ckpt), lora_rank=4, lora_alpha=8)
    images = [np.zeros((56, 56, 3), np.uint8)] * len(INSTRUCTIONS)
    policy.value(images, INSTRUCTIONS)
    assert all(m.cast_input_dtype_enabled for m in policy._lora_layers)
