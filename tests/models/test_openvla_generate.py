"""Inference on the tiny checkpoint: batching, KV cache, sampling vs teacher forcing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crane_x7_vla.models import ModelInputs, OpenVLA


def test_predict_shape_dtype_and_range(tiny_model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> None:
    a = tiny_model.predict_action(images[:1], instructions[:1])
    assert a.shape == (1, 8) and a.dtype == np.float32
    stats = tiny_model.action_stats()
    assert np.all(a >= stats.q01 - 1e-5) and np.all(a <= stats.q99 + 1e-5)


def test_batched_equals_per_sample(tiny_model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> None:
    inputs = tiny_model.prepare_inputs(images, instructions)
    assert len(set(inputs.attention_mask.sum(1).tolist())) == 3  # three different prompt lengths
    batched = tiny_model.predict_action(images, instructions)
    single = np.concatenate([tiny_model.predict_action([im], [s]) for im, s in zip(images, instructions, strict=True)])
    np.testing.assert_array_equal(batched, single)
    assert not np.array_equal(batched[0], batched[2])  # the inputs matter
    # the log-prob path is batch-invariant too
    toks = tiny_model.sample_action_tokens(inputs, 0.0).tokens
    lp_b = tiny_model.action_token_log_probs(inputs, toks, 1.0).log_probs
    for i in range(3):
        one = tiny_model.prepare_inputs(images[i : i + 1], instructions[i : i + 1])
        lp_1 = tiny_model.action_token_log_probs(one, toks[i : i + 1], 1.0).log_probs
        torch.testing.assert_close(lp_b[i : i + 1], lp_1, atol=1e-5, rtol=1e-5)


def _greedy_without_cache(model: OpenVLA, inputs: ModelInputs, steps: int) -> list[int]:
    ids, mask = inputs.input_ids, inputs.attention_mask
    out = []
    for _ in range(steps):
        embeds, mm, pos = model.embed_multimodal(ModelInputs(inputs.pixel_values, ids, mask))
        logits = model.language_model.lm_head(model.llm_hidden(embeds, mm, pos)[:, -1])
        tok = int(logits.argmax(-1))
        out.append(tok)
        ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
        mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
    return out


@torch.no_grad()
def test_greedy_with_kv_cache_equals_recompute(tiny_model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> None:
    inputs = tiny_model.prepare_inputs(images[2:], instructions[2:])
    ref = _greedy_without_cache(tiny_model, inputs, 8)
    got = tiny_model.predict_action(images[2:], instructions[2:])
    np.testing.assert_array_equal(got, tiny_model.decode_actions(torch.tensor([ref])))
    assert all(31744 <= t < 32000 for t in ref)  # the tiny LM head favours action bins, like a trained model


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampled_log_probs_equal_teacher_forced(
    tiny_model: OpenVLA, images: list[np.ndarray], instructions: list[str], temperature: float
) -> None:
    inputs = tiny_model.prepare_inputs(images, instructions)
    gen = torch.Generator().manual_seed(3)
    s = tiny_model.sample_action_tokens(inputs, temperature, generator=gen)
    assert s.tokens.shape == (3, 8) and s.hidden.shape == (3, 64)
    ids = tiny_model.action_token_ids()
    assert bool(((s.tokens >= ids[0]) & (s.tokens <= ids[-1])).all())
    t = tiny_model.action_token_log_probs(inputs, s.tokens, temperature)
    torch.testing.assert_close(s.log_probs, t.log_probs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.entropy, t.entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.hidden, t.hidden, atol=1e-4, rtol=1e-4)
    assert bool((s.log_probs < 0).all()) and bool((s.entropy > 0).all())


def test_sampling_is_seeded_and_temperature_zero_is_greedy(tiny_model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> None:
    inputs = tiny_model.prepare_inputs(images, instructions)
    a = tiny_model.sample_action_tokens(inputs, 1.0, torch.Generator().manual_seed(5)).tokens
    b = tiny_model.sample_action_tokens(inputs, 1.0, torch.Generator().manual_seed(5)).tokens
    assert torch.equal(a, b)
    greedy = tiny_model.sample_action_tokens(inputs, 0.0).tokens
    np.testing.assert_array_equal(tiny_model.decode_actions(greedy), tiny_model.predict_action(images, instructions))


def test_teacher_forced_log_probs_are_differentiable(tiny_model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> None:
    inputs = tiny_model.prepare_inputs(images[:2], instructions[:2])
    tokens = tiny_model.sample_action_tokens(inputs, 1.0, torch.Generator().manual_seed(0)).tokens
    out = tiny_model.action_token_log_probs(inputs, tokens, 1.0)
    out.log_probs.sum().backward()
    grad = tiny_model.language_model.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and bool(grad.abs().sum() > 0)
    tiny_model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="action-token ids"):
        tiny_model.action_token_log_probs(inputs, torch.ones_like(tokens), 1.0)


def test_right_padded_inputs_are_rejected(tiny_model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> None:
    inputs = tiny_model.prepare_inputs(images[:2], instructions[:2])
    flipped = ModelInputs(inputs.pixel_values, inputs.input_ids.flip(1), inputs.attention_mask.flip(1))
    with pytest.raises(ValueError, match="left-padded"):
        tiny_model.sample_action_tokens(flipped, 1.0)
