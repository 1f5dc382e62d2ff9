"""The static-cache engine reproduces the eager greedy path (CPU: same function, no CUDA graphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crane_x7_vla.models import OpenVLA
from crane_x7_vla.models.engine import OpenVLAEngine

INSTRUCTIONS = ["pick up the red block", "go", "Place the blue cube on the green plate, then open the gripper"]


@pytest.fixture(scope="module")
def engine(tiny_model: OpenVLA) -> OpenVLAEngine:
    return OpenVLAEngine(tiny_model, max_batch=4, text_bucket=8)


def _eager_tokens(model: OpenVLA, images: list[np.ndarray], instructions: list[str]) -> torch.Tensor:
    """The eager loop's greedy tokens over the full vocabulary (what predict_action decodes)."""
    from crane_x7_vla.models.generate import _decode_loop

    lm_head = model.language_model.lm_head
    with torch.inference_mode():
        toks, _ = _decode_loop(model, model.prepare_inputs(images, instructions), model.action_dim,
                               lambda h: lm_head(h).argmax(dim=-1))
    return torch.stack(toks, dim=1)


def test_engine_matches_eager_single_and_batched(engine: OpenVLAEngine, tiny_model: OpenVLA,
                                                 images: list[np.ndarray]) -> None:
    for i in range(len(INSTRUCTIONS)):  # batch 1, different prompt lengths -> different buckets
        want = _eager_tokens(tiny_model, images[i : i + 1], INSTRUCTIONS[i : i + 1])
        got = engine.generate(tiny_model.prepare_inputs(images[i : i + 1], INSTRUCTIONS[i : i + 1]), 8)
        assert torch.equal(got, want), i
    want = _eager_tokens(tiny_model, images, INSTRUCTIONS)  # batch 3 -> padded to 4
    got = engine.generate(tiny_model.prepare_inputs(images, INSTRUCTIONS), 8)
    assert torch.equal(got, want)


def test_engine_predict_equals_predict_action(engine: OpenVLAEngine, tiny_model: OpenVLA,
                                              images: list[np.ndarray]) -> None:
    np.testing.assert_array_equal(engine.predict(images, INSTRUCTIONS), tiny_model.predict_action(images, INSTRUCTIONS))


def test_oversize_batch_is_split(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    small = OpenVLAEngine(tiny_model, max_batch=2, text_bucket=8)
    np.testing.assert_array_equal(small.predict(images, INSTRUCTIONS), tiny_model.predict_action(images, INSTRUCTIONS))


def test_cuda_graphs_need_cuda(tiny_model: OpenVLA) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        OpenVLAEngine(tiny_model, use_cuda_graphs=True)


def test_service_policy_interface(engine: OpenVLAEngine, tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    """The inference service may call prepare_inputs + predict_from_inputs (timed separately) or predict_action."""
    want = tiny_model.predict_action(images, INSTRUCTIONS)
    inputs = engine.prepare_inputs(images, INSTRUCTIONS)
    np.testing.assert_array_equal(engine.predict_from_inputs(inputs), want)
    np.testing.assert_array_equal(engine.predict_action(images, INSTRUCTIONS), want)
    np.testing.assert_array_equal(tiny_model.predict_from_inputs(tiny_model.prepare_inputs(images, INSTRUCTIONS)), want)


def test_sample_greedy_equals_eager_sampler(engine: OpenVLAEngine, tiny_model: OpenVLA,
                                            images: list[np.ndarray]) -> None:
    """Temperature 0: argmax over the action ids, log-probs and entropies at T = 1, the first hidden state."""
    from crane_x7_vla.models.generate import sample_action_tokens

    inputs = tiny_model.prepare_inputs(images, INSTRUCTIONS)
    with torch.inference_mode():
        want = sample_action_tokens(tiny_model, inputs, 0.0)
    got = engine.sample(inputs, 0.0)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.log_probs, want.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.entropy, want.entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.hidden, want.hidden, atol=1e-5, rtol=1e-5)
    assert not got.tokens.is_inference()  # usable as indices under autograd (the PPO update)


def test_sampled_tokens_carry_their_teacher_forced_log_probs(engine: OpenVLAEngine, tiny_model: OpenVLA,
                                                             images: list[np.ndarray]) -> None:
    from crane_x7_vla.models.generate import action_token_log_probs

    inputs = tiny_model.prepare_inputs(images, INSTRUCTIONS)
    a = engine.sample(inputs, 1.0, torch.Generator().manual_seed(1))
    b = engine.sample(inputs, 1.0, torch.Generator().manual_seed(1))
    c = engine.sample(inputs, 1.0, torch.Generator().manual_seed(2))
    assert torch.equal(a.tokens, b.tokens)  # the generator alone decides the draw
    assert not torch.equal(a.tokens, c.tokens)
    first, n_bins = tiny_model.action_tokenizer.first_token_id, tiny_model.action_tokenizer.n_bins
    assert bool(((a.tokens >= first) & (a.tokens < first + n_bins)).all())
    with torch.no_grad():
        ref = action_token_log_probs(tiny_model, inputs, a.tokens, 1.0)
    torch.testing.assert_close(a.log_probs, ref.log_probs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.entropy, ref.entropy, atol=1e-4, rtol=1e-4)


def test_gumbel_sampling_follows_the_policy_distribution(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    """The mean log-prob of sampled tokens estimates -entropy; a biased sampler (e.g. a flipped noise sign,
    which prefers unlikely bins) misses it by many standard errors."""
    eng = OpenVLAEngine(tiny_model, max_batch=64, text_bucket=8)
    inputs = tiny_model.prepare_inputs(images[:1] * 64, INSTRUCTIONS[:1] * 64)
    gen = torch.Generator().manual_seed(0)
    outs = [eng.sample(inputs, 1.0, gen) for _ in range(6)]
    logp = torch.cat([o.log_probs[:, 0] for o in outs])  # [384]: the first token (later ones are conditional)
    entropy = float(outs[0].entropy[0, 0])  # the same for every row and draw
    mean, se = float(logp.mean()), float(logp.std()) / logp.shape[0] ** 0.5
    assert abs(mean + entropy) < 4 * se, (mean, -entropy, se)


def test_prefill_layout_puts_padding_last() -> None:
    """[BOS, patches, rest of the prompt, pads]: whatever side the input was padded on."""
    from crane_x7_vla.models.engine import last_real, prefill_layout

    am = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    gather, valid, positions = prefill_layout(am, num_patches=2, text_len=5)
    # text columns index 0..4, patches 5..6 in cat(text, patches)
    assert gather[0, :5].tolist() == [2, 5, 6, 3, 4] and valid[0].tolist() == [True] * 5 + [False] * 2
    assert gather[1].tolist() == [0, 5, 6, 1, 2, 3, 4] and bool(valid[1].all())
    assert gather[2, :4].tolist() == [0, 5, 6, 1] and valid[2].tolist() == [True] * 4 + [False] * 3
    assert positions.tolist() == [[0, 1, 2, 3, 4, 4, 4], [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 3, 3, 3]]
    h = torch.arange(3 * 7, dtype=torch.float32).view(3, 7, 1)
    assert last_real(h, positions)[:, 0].tolist() == [4.0, 13.0, 17.0]
