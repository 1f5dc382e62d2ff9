"""SFT warm-start: the published label layout, statistics from real MuJoCo expert demos, train/inference
equivalence of the right-padded batch, loss going down, loadable checkpoints (full and LoRA), exact resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crane_x7_vla.models.loading import load_vla
from crane_x7_vla.models.processing import build_prompt, prompt_token_ids, underline_token_id
from crane_x7_vla_rl.sft import trainer as sft_trainer
from crane_x7_vla_rl.sft.dataset import IGNORE_INDEX, DemoFrames, build_example, random_shift, right_pad
from crane_x7_vla_rl.sft.trainer import (
    LATEST,
    METRICS,
    SFTConfig,
    SmallModelSpec,
    forward_hidden,
    resized_frames,
    train,
)

INSTRUCTION = "pick up the object and place it"


@pytest.fixture(scope="session")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real scripted-expert episodes on MuJoCo with 224 px wrist images (~2 s)."""
    from crane_x7_vla.cli import main

    root = tmp_path_factory.mktemp("sft_demos") / "demos"
    assert main(["expert", "--simulator", "mujoco", "--episodes", "3", "--seed", "0", "--record", str(root),
                 "--json"]) == 0
    return root


def _cfg(demos: Path, out: Path, base: Path, **kw: object) -> SFTConfig:
    defaults: dict[str, object] = {"mode": "full", "steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                                   "log_every": 1, "save_every": 100, "device": "cpu"}
    defaults.update(kw)
    return SFTConfig(demos=str(demos), output=str(out), base=str(base), **defaults)  # type: ignore[arg-type]


def _metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


def test_labels_mask_only_action_tokens_and_eos() -> None:
    ex_short = build_example([1, 10, 11, 29871], [31990, 31800], 2)
    ex_long = build_example([1, 10, 11, 12, 13, 29871], [31744, 31999], 2)
    ids, mask, labels = right_pad([ex_short, ex_long], pad_id=32000)
    assert ids.tolist() == [[1, 10, 11, 29871, 31990, 31800, 2, 32000, 32000],
                            [1, 10, 11, 12, 13, 29871, 31744, 31999, 2]]
    assert mask.tolist() == [[1] * 7 + [0, 0], [1] * 9]
    assert labels.tolist() == [[IGNORE_INDEX] * 4 + [31990, 31800, 2] + [IGNORE_INDEX] * 2,
                               [IGNORE_INDEX] * 6 + [31744, 31999, 2]]


def test_dataset_statistics_from_demos(demos: Path) -> None:
    frames = DemoFrames.load(demos)
    assert frames.num_episodes == 3 and len(frames) == frames.actions.shape[0] == len(frames.instructions)
    stats = frames.statistics("crane_x7")["crane_x7"]
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(frames.actions, 0.01, axis=0))
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(frames.actions, 0.99, axis=0))
    assert stats["action"]["mask"] == [True] * 8
    assert stats["num_transitions"] == len(frames) and stats["num_trajectories"] == 3
    # the demo actions really move: the statistics are not a degenerate (constant) range on the arm joints
    assert all(hi > lo for lo, hi in zip(stats["action"]["q01"][:7], stats["action"]["q99"][:7], strict=True))


def test_right_padded_training_logits_equal_runtime_inference(rl_tiny_ckpt: Path, demos: Path) -> None:
    """The training layout (right pad, labels after "▁") scores action tokens exactly like the runtime."""
    model = load_vla(rl_tiny_ckpt)
    frames = DemoFrames.load(demos)
    tok = model.tokenizer
    instructions = [INSTRUCTION, "put it down"]  # different prompt lengths -> padding in the batch
    prompts = [prompt_token_ids(tok, build_prompt(t), underline_token_id(tok)) for t in instructions]
    actions = torch.tensor([[31744 + 7 * i + j for j in range(8)] for i in range(2)])  # [2,8]
    ids, mask, _ = right_pad([build_example(p, a.tolist(), 2) for p, a in zip(prompts, actions, strict=True)], 32000)
    pixel_values = torch.stack([model.image_transform(frames.images[i]) for i in (0, 40)])
    with torch.no_grad():
        hidden = forward_hidden(model, pixel_values, ids, mask)  # [2,T,H]
        runtime = model.action_token_log_probs(model.prepare_inputs([frames.images[0], frames.images[40]],
                                                                    instructions), actions, 1.0)
    first, n = model.action_tokenizer.first_token_id, model.action_tokenizer.n_bins
    p = hidden.shape[1] - ids.shape[1]
    for row, prompt in enumerate(prompts):
        # hidden position (in [BOS, patches, rest]) of the token just before action j is p + len(prompt) - 1 + j
        pos = torch.arange(8) + p + len(prompt) - 1
        logits = model.language_model.lm_head.weight[first:first + n] @ hidden[row, pos].T  # [n_bins, 8]
        lp = torch.log_softmax(logits.T, dim=-1).gather(1, (actions[row] - first)[:, None]).squeeze(1)
        torch.testing.assert_close(lp, runtime.log_probs[row], atol=1e-4, rtol=1e-4)


def test_sft_loss_is_hf_token_mean_cross_entropy_over_all_positions(rl_tiny_ckpt: Path, demos: Path) -> None:
    """The loss on labelled positions only equals HF's shifted CrossEntropyLoss(ignore_index=-100) over the full
    sequence and vocabulary, with CPU labels and a padded batch; the accuracy counts action tokens only."""
    model = load_vla(rl_tiny_ckpt)
    frames = DemoFrames.load(demos)
    tok = model.tokenizer
    prompts = [prompt_token_ids(tok, build_prompt(t), underline_token_id(tok)) for t in (INSTRUCTION, "put it down")]
    actions = [[31744 + 7 * i + j for j in range(8)] for i in range(2)]
    ids, mask, labels = right_pad([build_example(p, a, 2) for p, a in zip(prompts, actions, strict=True)], 32000)
    pixel_values = torch.stack([model.image_transform(frames.images[i]) for i in (0, 40)])
    with torch.no_grad():
        out = sft_trainer.sft_loss(model, pixel_values, ids, mask, labels)
        hidden = forward_hidden(model, pixel_values, ids, mask)
        full = sft_trainer.multimodal_labels(labels, hidden.shape[1] - labels.shape[1])
        logits = model.language_model.lm_head(hidden).float()  # [B,T,V]
        ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), full[:, 1:].reshape(-1),
                                                ignore_index=IGNORE_INDEX)
        target = full[:, 1:]
        keep = target >= model.action_tokenizer.first_token_id
        hits = int(((logits[:, :-1].argmax(-1) == target) & keep).sum())
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-5)
    assert out.num_tokens == 2 * 9 and out.num_action_tokens == int(keep.sum()) == 16
    assert out.action_accuracy == pytest.approx(hits / 16)
    bad = mask.clone()
    bad[0, 0] = 0
    with pytest.raises(ValueError, match="right-padded"):
        sft_trainer.sft_loss(model, pixel_values, ids, bad, labels)


def test_full_sft_lowers_loss_and_writes_loadable_checkpoint(rl_tiny_ckpt: Path, demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(_cfg(demos, out, rl_tiny_ckpt, steps=12, batch_size=4, lr=3e-3))
    assert summary["done"] and summary["step"] == 12
    losses = [r["loss"] for r in _metrics(out)]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 2.0, losses  # from ~ln(32064) = 10.4
    ckpt = out / LATEST
    written = json.loads((ckpt / "dataset_statistics.json").read_text())
    assert written == DemoFrames.load(demos).statistics("crane_x7")
    model = load_vla(ckpt)  # no unnorm_key needed: the demo dataset is the checkpoint's only one
    frame = DemoFrames.load(demos)
    pred = model.predict_action([frame.images[10]], [INSTRUCTION])
    assert pred.shape == (1, 8) and np.isfinite(pred).all()
    q01, q99 = np.array(written["crane_x7"]["action"]["q01"]), np.array(written["crane_x7"]["action"]["q99"])
    assert ((pred[0] >= q01 - 1e-5) & (pred[0] <= q99 + 1e-5)).all()


@pytest.mark.slow
def test_compiled_sft_follows_the_eager_run(rl_tiny_ckpt: Path, demos: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile changes the kernels, not the math: the same batches give the same losses (to float tolerance),
    and the checkpoint keeps the plain state-dict keys (it loads as an ordinary OpenVLA checkpoint)."""
    from torch._dynamo.utils import counters

    # Inductor's CPU backend imports setuptools, whose distutils shim asserts when an earlier test has already
    # imported the standard library's distutils (Python 3.11 still ships it): keep the one that is loaded.
    monkeypatch.setenv("SETUPTOOLS_USE_DISTUTILS", "stdlib")

    eager = train(_cfg(demos, tmp_path / "eager", rl_tiny_ckpt, steps=3, batch_size=2))
    counters.clear()
    compiled = train(_cfg(demos, tmp_path / "compiled", rl_tiny_ckpt, steps=3, batch_size=2, compile=True))
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did compile the towers and layers
    a, b = (np.array([r["loss"] for r in _metrics(tmp_path / run)]) for run in ("eager", "compiled"))
    np.testing.assert_allclose(b, a, rtol=1e-3)
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    model = load_vla(tmp_path / "compiled" / LATEST)
    assert not any("_orig_mod" in k for k in model.state_dict())


def test_lora_sft_trains_only_adapters_and_saves_merged_checkpoint(rl_tiny_ckpt: Path, demos: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "lora"
    summary = train(_cfg(demos, out, rl_tiny_ckpt, mode="lora", lora_rank=8, lora_alpha=16, steps=8,
                         batch_size=4, lr=5e-3))
    assert 0 < summary["trainable_parameters"] < summary["parameters"] // 2
    losses = [r["loss"] for r in _metrics(out)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    base, tuned = load_vla(rl_tiny_ckpt), load_vla(out / LATEST)
    bs, ts = base.state_dict(), tuned.state_dict()
    assert set(bs) == set(ts)  # a plain (merged) checkpoint in the published key layout
    assert torch.equal(bs["language_model.lm_head.weight"], ts["language_model.lm_head.weight"])  # not a target
    assert not torch.equal(bs["projector.fc1.weight"], ts["projector.fc1.weight"])  # LoRA was folded in


def test_resume_continues_exactly(rl_tiny_ckpt: Path, demos: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(_cfg(demos, straight, rl_tiny_ckpt, steps=3))
    first = train(_cfg(demos, split, rl_tiny_ckpt, steps=3, max_seconds=0.0))  # stops (and saves) after 1 step
    assert not first["done"] and first["step"] == 1
    resumed = train(sft_trainer.resume_config(split), resume=True)
    assert resumed["done"] and resumed["step"] == 3
    a, b = load_vla(straight / LATEST).state_dict(), load_vla(split / LATEST).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    np.testing.assert_allclose([r["loss"] for r in _metrics(split)], [r["loss"] for r in _metrics(straight)],
                               rtol=1e-5)


def test_init_small_builds_openvla_family_model_that_trains(demos: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A test-sized preset through the same builder path (the real presets are too slow for CI steps).
    spec = SmallModelSpec(fused=False, patch_size=14, vision_width=32, vision_depth=3, vision_heads=2,
                          llm_hidden=96, llm_layers=2, llm_heads=4, llm_intermediate=128, image_size=56)
    monkeypatch.setitem(sft_trainer.SMALL_PRESETS, "test", spec)
    out = tmp_path / "small"
    cfg = dataclasses.replace(_cfg(demos, out, Path("unused"), steps=10, batch_size=4, lr=3e-3),
                              base=None, init_small="test")
    train(cfg)
    losses = [r["loss"] for r in _metrics(out)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses
    model = load_vla(out / LATEST)
    assert not model.config.use_fused_vision_backbone and model.config.vision_towers[0].image_size == 56
    assert model.config.text_config["hidden_size"] == 96  # the preset's geometry, not the tiny test model's
    assert model.predict_action([DemoFrames.load(demos).images[0]], [INSTRUCTION]).shape == (1, 8)


def test_cli_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crane_x7_vla.cli import main

    assert main(["sft", "--demos", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "--base CKPT or --init-small" in capsys.readouterr().err
    assert main(["sft", "--demos", str(tmp_path), "--output", str(tmp_path / "o"), "--init-small", "huge"]) == 2
    assert "unknown --init-small preset 'huge'" in capsys.readouterr().err
    assert main(["sft", "--demos", str(tmp_path), "--output", str(tmp_path / "o"), "--init-small"]) == 2
    assert "not a demo dataset" in capsys.readouterr().err
    assert main(["sft", "--resume", str(tmp_path / "nothing")]) == 2
    assert "--resume takes the --output directory" in capsys.readouterr().err


def test_random_shift_is_an_edge_padded_translation_and_resume_exact() -> None:
    x = torch.arange(2 * 6 * 5 * 1, dtype=torch.uint8).reshape(2, 6, 5, 1)
    out = random_shift(x, pad=2, seed=3, step=7)
    assert torch.equal(out, random_shift(x, pad=2, seed=3, step=7))  # a function of (seed, step) only
    assert torch.equal(random_shift(x, pad=0, seed=3, step=7), x)
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 7)
    off = torch.randint(0, 5, (2, 2), generator=gen) - 2
    for b in range(2):  # by hand: out[b, i, j] = x[b, clamp(i + dy), clamp(j + dx)]
        dy, dx = int(off[b, 0]), int(off[b, 1])
        for i in range(6):
            for j in range(5):
                assert out[b, i, j, 0] == x[b, min(max(i + dy, 0), 5), min(max(j + dx, 0), 4), 0]
    shifts = {tuple(random_shift(x, 2, 0, s)[0, :, :, 0].flatten().tolist()) for s in range(20)}
    assert len(shifts) > 5  # offsets really vary per step


def test_sft_pixels_equal_the_runtime_preprocessing(rl_tiny_ckpt: Path) -> None:
    model = load_vla(rl_tiny_ckpt, device="cpu")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 50, 70, 3), dtype=np.uint8)  # not the towers' size: resized once
    pixels = resized_frames(model, frames, torch.device("cpu"))
    assert torch.allclose(model.image_transform.normalize([pixels]), model.image_transform.batch(list(frames), "cpu"))


def test_lr_warms_up_then_decays_by_cosine_to_the_floor(tmp_path: Path) -> None:
    cfg = SFTConfig(demos="d", output=str(tmp_path), init_small="small-cpu", steps=1050, warmup_steps=50, lr=1e-3)
    assert sft_trainer.lr_factor(0, cfg) == pytest.approx(1 / 50)
    assert sft_trainer.lr_factor(50, cfg) == pytest.approx(1.0)
    assert sft_trainer.lr_factor(550, cfg) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert sft_trainer.lr_factor(1050, cfg) == pytest.approx(0.1)
    flat = dataclasses.replace(cfg, lr_schedule="constant")
    assert sft_trainer.lr_factor(1000, flat) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        dataclasses.replace(cfg, lr_schedule="linear")
