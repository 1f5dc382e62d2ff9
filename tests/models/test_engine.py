"""The static-cache engine reproduces the eager greedy path (CPU: same function, no CUDA graphs)."""

from __future__ import annotations

from pathlib import Path

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


def _drafts(want: torch.Tensor, vocab: int) -> dict[str, tuple[torch.Tensor, int]]:
    """Drafts for the exact tokens ``want`` [D] -> (draft, how many leading tokens it gets right)."""
    d = want.numel()
    wrong = (want + 1) % vocab  # differs everywhere
    out = {"exact": (want.clone(), d), "all wrong": (wrong, 0)}
    for j in (1, 3, d - 1):
        out[f"right up to {j}"] = (torch.cat([want[:j], wrong[j:]]), j)
    mixed = want.clone()
    mixed[[0, 2]] = wrong[[0, 2]]  # wrong early, right after: only a Jacobi pass can reuse the later guesses
    out["wrong at 0 and 2"] = (mixed, 0)
    return out


@pytest.mark.parametrize("verify_rows", [16, 1])  # 16: Jacobi passes over all unknown tokens; 1: decode steps
def test_any_draft_gives_the_greedy_tokens(tiny_model: OpenVLA, images: list[np.ndarray], verify_rows: int) -> None:
    """A draft is verified, never trusted: right, wrong or mixed, the tokens are the eager loop's; a right
    prefix saves one pass per token (a draft right on its first D - 1 tokens needs the prefill only)."""
    engine = OpenVLAEngine(tiny_model, max_batch=2, text_bucket=8, verify_rows=verify_rows)
    vocab = tiny_model.language_model.config.vocab_size
    for i in (0, 2):  # two prompt lengths: the draft moves the prompt into another text bucket or not
        inputs = tiny_model.prepare_inputs(images[i : i + 1], INSTRUCTIONS[i : i + 1])
        want = _eager_tokens(tiny_model, images[i : i + 1], INSTRUCTIONS[i : i + 1])
        d = want.shape[1]
        for name, (draft, right) in _drafts(want[0], vocab).items():
            got = engine.generate(inputs, d, draft=draft)
            assert torch.equal(got, want), (i, name)
            passes = engine.last_passes
            if right >= d - 1:
                assert passes == 1, name
            elif verify_rows == 1:
                assert passes == d - right, name  # one token per decode step after the prefill's 1 + right
            else:
                assert passes <= d - right, name  # a Jacobi pass fixes at least one token
    assert engine.generate(inputs, d) is not None and engine.last_passes == d  # no draft: prefill + D - 1 steps


def test_predict_drafts_with_the_previous_action(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    """One robot's predict_from_inputs drafts with its previous action for the same prompt: the same frame
    again is a right draft (one pass); a new prompt starts without one; draft_previous=False never drafts."""
    engine = OpenVLAEngine(tiny_model, max_batch=2, text_bucket=8)
    d = tiny_model.action_dim
    inputs = [tiny_model.prepare_inputs(images[i : i + 1], INSTRUCTIONS[i : i + 1]) for i in range(2)]
    want = [tiny_model.predict_action(images[i : i + 1], INSTRUCTIONS[i : i + 1]) for i in range(2)]
    np.testing.assert_array_equal(engine.predict_from_inputs(inputs[0]), want[0])
    assert engine.last_passes == d
    np.testing.assert_array_equal(engine.predict_from_inputs(inputs[0]), want[0])
    assert engine.last_passes == 1
    np.testing.assert_array_equal(engine.predict_from_inputs(inputs[1]), want[1])  # another prompt: no draft
    assert engine.last_passes == d
    other = tiny_model.prepare_inputs(images[1:2], INSTRUCTIONS[:1])  # prompt 0's draft, another frame
    np.testing.assert_array_equal(engine.predict_from_inputs(other),
                                  tiny_model.predict_action(images[1:2], INSTRUCTIONS[:1]))
    plain = OpenVLAEngine(tiny_model, max_batch=2, text_bucket=8, draft_previous=False)
    plain.predict_from_inputs(inputs[0])
    plain.predict_from_inputs(inputs[0])
    assert plain.last_passes == d


def test_warmup_leaves_no_draft_behind(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    """warmup runs one robot's passes (on CUDA: captures them) without a draft for the first request."""
    engine = OpenVLAEngine(tiny_model, max_batch=1, text_bucket=8)
    engine.warmup(INSTRUCTIONS[0])
    assert any(g.guess is not None for g in engine._graphs.values()) and not engine._drafts
    inputs = tiny_model.prepare_inputs(images[:1], INSTRUCTIONS[:1])
    np.testing.assert_array_equal(engine.predict_from_inputs(inputs),
                                  tiny_model.predict_action(images[:1], INSTRUCTIONS[:1]))
    assert engine.last_passes == tiny_model.action_dim


def test_bad_drafts_are_refused(engine: OpenVLAEngine, tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    one = tiny_model.prepare_inputs(images[:1], INSTRUCTIONS[:1])
    with pytest.raises(ValueError, match="batch 1"):
        engine.generate(tiny_model.prepare_inputs(images[:2], INSTRUCTIONS[:2]), 8, draft=torch.zeros(8))
    with pytest.raises(ValueError, match="action_dim = 8"):
        engine.generate(one, 8, draft=torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must be in"):
        engine.generate(one, 8, draft=torch.full((8,), tiny_model.language_model.config.vocab_size))
    with pytest.raises(ValueError, match="verify_rows"):
        OpenVLAEngine(tiny_model, verify_rows=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_drafted_passes_as_cuda_graphs(tiny_ckpt: Path, images: list[np.ndarray],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the draft prefill and every verify pass are graphs of their own (replayed between host reads of
    the exact count), with the Triton decode layers in one-row passes: still the eager tokens (float32)."""
    from crane_x7_vla.models import load_vla

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = load_vla(tiny_ckpt, device="cuda", dtype=torch.float32)
    for rows in (16, 1):
        engine = OpenVLAEngine(model, text_bucket=8, verify_rows=rows)
        engine.warmup(INSTRUCTIONS[2])  # captures every pass a request of this prompt length can reach
        captured = {key: set(g.steps) for key, g in engine._graphs.items()}
        d = model.action_dim
        assert sum(len(v) for v in captured.values()) == d and all(g.graph for g in engine._graphs.values()
                                                                    if g.guess is None)
        inputs = model.prepare_inputs(images[2:3], INSTRUCTIONS[2:3])
        want = _eager_tokens(model, images[2:3], INSTRUCTIONS[2:3])
        for name, (draft, _) in _drafts(want[0], model.language_model.config.vocab_size).items():
            for _ in range(2):
                assert torch.equal(engine.generate(inputs, d, draft=draft), want), (rows, name)
        # The service's path: host prompt ids, the previous action kept on the host and sent through pinned
        # memory; the same frame again is a right draft.
        host = engine.prepare_inputs(images[2:3], INSTRUCTIONS[2:3])
        assert host.input_ids.device.type == "cpu"
        for passes in (d, 1):
            np.testing.assert_array_equal(engine.predict_from_inputs(host), model.decode_actions(want))
            assert engine.last_passes == passes
        assert {key: set(g.steps) for key, g in engine._graphs.items()} == captured  # nothing captured late


def test_host_prompts_are_laid_out_once_per_prompt(tiny_model: OpenVLA, images: list[np.ndarray],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """engine.prepare_inputs keeps the prompt ids on the host: a request that repeats the bucket's last prompt
    writes no text at all, another prompt of the same bucket is laid out again, and every action is the eager
    one (a stale layout would give the other prompt's tokens)."""
    import crane_x7_vla.models.engine as engine_module

    layouts: list[int] = []
    real = engine_module.prefill_layout

    def counted(*args: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layouts.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module, "prefill_layout", counted)
    engine = OpenVLAEngine(tiny_model, max_batch=1, text_bucket=64, draft_previous=False)
    a, b = "pick up the red block", "put down the red block"  # one text bucket
    assert engine.prepare_inputs(images[:1], [a]).input_ids.device.type == "cpu"
    for image, instruction, laid_out in ((0, a, 1), (1, a, 1), (1, b, 2), (0, b, 2), (0, a, 3)):
        got = engine.predict(images[image : image + 1], [instruction])
        np.testing.assert_array_equal(got, tiny_model.predict_action(images[image : image + 1], [instruction]))
        assert len(layouts) == laid_out, (image, instruction)
