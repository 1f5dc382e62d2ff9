"""MiniVLA runtime: token ids, prompt/patch layout, multi-image inputs, VQ decoding, sampling vs teacher forcing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crane_x7_vla.models import MiniVLA, MiniVLAConfig, load_vla, make_tiny_minivla_checkpoint
from crane_x7_vla.models.minivla_processing import FrameHistory, build_qwen_prompt
from crane_x7_vla.models.minivla_tiny import build_qwen_style_tokenizer
from crane_x7_vla.models.vq import VQActionTokenizer

LEN_TOK = 151921  # real Qwen2.5 + 256 extras


@pytest.fixture(scope="module")
def bin_model(tmp_path_factory: pytest.TempPathFactory) -> MiniVLA:
    path = make_tiny_minivla_checkpoint(tmp_path_factory.mktemp("mv") / "bin", action_dim=8, seed=0)
    model = load_vla(path)
    assert isinstance(model, MiniVLA)
    return model


@pytest.fixture(scope="module")
def vq_model(tmp_path_factory: pytest.TempPathFactory) -> MiniVLA:
    path = make_tiny_minivla_checkpoint(tmp_path_factory.mktemp("mv") / "vq", vq=True, action_dim=8, seed=1)
    model = load_vla(path)
    assert isinstance(model, MiniVLA)
    return model


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, size=(200 + 16 * i, 300, 3), dtype=np.uint8) for i in range(3)]


def test_tokenizer_and_binning_ids_follow_len_tokenizer(bin_model: MiniVLA) -> None:
    tok = bin_model.tokenizer
    assert len(tok) == LEN_TOK and tok.pad_token_id == 151643
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644 and tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert [tok.convert_tokens_to_ids(f"<|extra_{k}|>") for k in (0, 17, 255)] == [151665, 151682, 151920]
    at = bin_model.action_tokenizer
    ids = bin_model.action_token_ids().tolist()
    assert ids == list(range(151665, 151921))  # never counted from 32000
    assert at.encode([-1.0, 1.0, 0.0]).tolist() == [151920, 151665, LEN_TOK - int(np.digitize(0.0, at.bins))]
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    t = np.array([[151665, 151700, 151920, 151921, 151000, 151800, 151666, 151667]])
    expect = centers[np.clip(LEN_TOK - t - 1, 0, 254)]
    stats = bin_model.action_stats()
    np.testing.assert_allclose(bin_model.decode_actions(t), 0.5 * (expect + 1) * (stats.q99 - stats.q01) + stats.q01,
                               rtol=1e-6, atol=1e-6)


def test_prompt_layout_patches_after_first_token(bin_model: MiniVLA, frames: list[np.ndarray]) -> None:
    instr = ["Pick up the RED block", "go"]
    inputs = bin_model.prepare_inputs(frames[:2], instr)
    ids, am = inputs.input_ids, inputs.attention_mask
    # no BOS: each row starts (after left padding) with <|im_start|>, and the text is the Qwen chat prompt
    first = am.argmax(dim=1)
    assert ids[0, first[0]].item() == 151644 and ids[1, first[1]].item() == 151644
    assert int(first[0]) == 0 and int(first[1]) > 0
    row0 = bin_model.tokenizer.decode(ids[0].tolist())
    assert row0 == build_qwen_prompt(instr[0]) and "pick up the red block?" in row0
    embeds, mask, pos = bin_model.embed_multimodal(inputs)
    p = 256
    assert embeds.shape[1] == ids.shape[1] + p
    emb = bin_model.language_model.model.embed_tokens
    patches = bin_model.embed_images(inputs.pixel_values)  # [B,256,H]
    for b in range(2):
        f = int(first[b])
        torch.testing.assert_close(embeds[b, f], emb(ids[b, f]))
        torch.testing.assert_close(embeds[b, f + 1 : f + 1 + p], patches[b])
        torch.testing.assert_close(embeds[b, f + 1 + p :], emb(ids[b, f + 1 :]))
        assert mask[b, :f].sum() == 0 and bool(mask[b, f:].all())
        assert pos[b, f:].tolist() == list(range(embeds.shape[1] - f))  # contiguous from the first real token


def test_batched_equals_single(bin_model: MiniVLA, frames: list[np.ndarray]) -> None:
    instr = ["pick up the red block", "go", "place the blue cube on the plate"]
    batched = bin_model.predict_action(frames, instr)
    assert batched.shape == (3, 8) and batched.dtype == np.float32
    single = np.concatenate([bin_model.predict_action([im], [t]) for im, t in zip(frames, instr, strict=True)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    chunk = bin_model.predict_action_chunk(frames, instr)
    assert chunk.shape == (3, 1, 8)
    np.testing.assert_array_equal(chunk[:, 0], batched)
    assert len({tuple(r) for r in batched}) > 1  # actions depend on the input


@pytest.mark.parametrize("kind", ["bin", "vq"])
def test_sampled_log_prob_equals_teacher_forced(kind: str, bin_model: MiniVLA, vq_model: MiniVLA,
                                                frames: list[np.ndarray]) -> None:
    model = bin_model if kind == "bin" else vq_model
    inputs = model.prepare_inputs(frames, ["pick", "place the cube", "go"])
    gen = torch.Generator().manual_seed(0)
    out = model.sample_action_tokens(inputs, temperature=1.3, generator=gen)
    n_tok = 8 if kind == "bin" else 7
    assert out.tokens.shape == (3, n_tok) and out.log_probs.shape == (3, n_tok)
    ids = model.action_token_ids()
    assert bool(torch.isin(out.tokens, ids).all())
    if kind == "vq":
        assert ids.tolist() == list(range(LEN_TOK - 128, LEN_TOK))  # codes 0..127 = <|extra_128..255|>
    tf = model.action_token_log_probs(inputs, out.tokens, temperature=1.3)
    torch.testing.assert_close(tf.log_probs, out.log_probs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tf.entropy, out.entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tf.hidden, out.hidden, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="action-token ids"):
        model.action_token_log_probs(inputs, torch.zeros_like(out.tokens), 1.0)
    decoded = model.decode_actions(out.tokens)
    assert decoded.shape == (3, 8)


def test_vq_decode_matches_hand_computation(vq_model: MiniVLA) -> None:
    vq = vq_model.action_vq
    assert vq is not None and vq_model.num_action_tokens == 7 and vq_model.chunk_size == 8
    codes = np.array([[0, 5, 127, 64, 1, 2, 3], [127, 126, 0, 0, 9, 100, 50]])
    ids = VQActionTokenizer(LEN_TOK, 128).codes_to_ids(codes)
    assert ids[0, 0] == 151920 and ids[0, 2] == 151920 - 127  # id = 151920 - code
    # hand computation from the raw weights: latent = sum_q E_q[c_q]; 2 ReLU layers; fc; reshape time-major (8, 8)
    sd = {k: v.double().numpy() for k, v in vq.state_dict().items()}
    latent = sum(sd["codebooks"][q][codes[:, q]] for q in range(7))
    h = np.maximum(latent @ sd["decoder.encoder.0.weight"].T + sd["decoder.encoder.0.bias"], 0)
    h = np.maximum(h @ sd["decoder.encoder.2.weight"].T + sd["decoder.encoder.2.bias"], 0)
    flat = h @ sd["decoder.fc.weight"].T + sd["decoder.fc.bias"]  # [B, 64]
    chunk_norm = flat.reshape(2, 8, 8)  # [B, T, A]: step-major, as "N (T A) -> N T A"
    stats = vq_model.action_stats()
    expect = 0.5 * (chunk_norm + 1) * (stats.q99 - stats.q01) + stats.q01
    got = vq_model.decode_action_chunk(ids)
    assert got.shape == (2, 8, 8)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vq_model.decode_actions(ids), expect[:, 0], rtol=1e-5, atol=1e-5)


def test_vq_predict_chunk(vq_model: MiniVLA, frames: list[np.ndarray]) -> None:
    chunk = vq_model.predict_action_chunk(frames[:2], ["pick", "go"])
    assert chunk.shape == (2, 8, 8)
    np.testing.assert_array_equal(vq_model.predict_action(frames[:2], ["pick", "go"]), chunk[:, 0])
    assert not np.allclose(chunk[:, 0], chunk[:, -1])  # a real chunk, not one action repeated


@pytest.mark.parametrize("variant", ["history2", "wrist"])
def test_multi_image_token_counts(variant: str, tmp_path: Path, frames: list[np.ndarray]) -> None:
    path = make_tiny_minivla_checkpoint(tmp_path / variant, image_sequence_len=2 if variant == "history2" else 1,
                                        use_wrist_image=variant == "wrist", seed=2)
    model = load_vla(path)
    assert isinstance(model, MiniVLA) and model.config.num_images == 2
    a, b = frames[0], frames[1]
    inputs = model.prepare_inputs([[a, b]], ["pick"])
    assert inputs.pixel_values.shape == (1, 12, 224, 224)
    embeds, _, pos = model.embed_multimodal(inputs)
    assert embeds.shape[1] == inputs.input_ids.shape[1] + 2 * 256  # 256 patches per frame, concatenated
    assert pos[0].tolist() == list(range(embeds.shape[1]))
    # frames are encoded separately, in order
    patches = model.embed_images(inputs.pixel_values)
    one = model.embed_images(model.prepare_inputs([[b, a]], ["pick"]).pixel_values)
    torch.testing.assert_close(patches[:, :256], one[:, 256:])
    torch.testing.assert_close(patches[:, 256:], one[:, :256])
    if variant == "history2":
        # a single image = episode start: the first frame is repeated
        np.testing.assert_array_equal(model.predict_action([a], ["pick"]), model.predict_action([[a, a]], ["pick"]))
    else:
        with pytest.raises(ValueError, match=r"\[third_person, wrist\]"):
            model.prepare_inputs([a], ["pick"])
    with pytest.raises(ValueError, match="got 3 image"):
        model.prepare_inputs([[a, a, a]], ["pick"])


def test_frame_history() -> None:
    h = FrameHistory(2)
    a, b, c = (np.full((2, 2, 3), v, np.uint8) for v in (1, 2, 3))
    assert [int(f[0, 0, 0]) for f in h.push(a)] == [1, 1]
    assert [int(f[0, 0, 0]) for f in h.push(b)] == [1, 2]
    assert [int(f[0, 0, 0]) for f in h.push(c)] == [2, 3]
    h.reset()
    assert [int(f[0, 0, 0]) for f in h.push(c)] == [3, 3]


def test_published_config_geometry() -> None:
    """A published-style config resolves to DINOv2-L + SigLIP-So400m, a 2176->8704->896->896 projector, Qwen2.5-0.5B."""
    cfg = MiniVLAConfig.from_dict({
        "hf_token": ".hf_token",
        "vla": {"base_vlm": "prism-qwen25-extra-dinosiglip-224px+0_5b", "action_tokenizer": "extra_action_tokenizer",
                "image_sequence_len": 2, "use_wrist_image": False},
    })
    assert cfg.num_images == 2 and cfg.vision_dim == 2176 and cfg.llm_hidden_size == 896
    assert "hf_token" not in cfg.to_dict()
    with torch.device("meta"):
        model = MiniVLA(cfg, build_qwen_style_tokenizer())
    assert tuple(model.projector.fc1.weight.shape) == (8704, 2176)
    assert tuple(model.projector.fc2.weight.shape) == (896, 8704)
    assert tuple(model.projector.fc3.weight.shape) == (896, 896)
    lm = model.language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight and tuple(lm.lm_head.weight.shape) == (151936, 896)
    attn = lm.model.layers[0].self_attn
    assert len(lm.model.layers) == 24 and attn.q_proj.bias is not None and tuple(attn.k_proj.weight.shape) == (128, 896)
    assert lm.config.rope_parameters["rope_theta"] == 1e6
    n = sum(p.numel() for p in model.parameters())
    assert 1.1e9 < n < 1.4e9  # "~1B"
    assert lm.config.hidden_act == "silu"
