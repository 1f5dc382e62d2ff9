"""Checkpoint I/O: published layout, round trips, shards, LoRA, norm stats and the errors that name the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crane_x7_vla.models import OpenVLA, load_vla, make_tiny_checkpoint, save_pretrained
from crane_x7_vla.models.loading import resolve_checkpoint
from crane_x7_vla.robot import ACTION_LOWER, ACTION_UPPER


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_published_layout(tiny_ckpt: Path) -> None:
    names = {p.name for p in tiny_ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "preprocessor_config.json", "dataset_statistics.json"} <= names
    keys = load_file(str(tiny_ckpt / "model.safetensors")).keys()
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in keys
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in keys
    assert "projector.fc3.weight" in keys and "language_model.lm_head.weight" in keys
    stats = json.loads((tiny_ckpt / "dataset_statistics.json").read_text())["crane_x7"]["action"]
    assert stats["q01"] == pytest.approx(list(ACTION_LOWER)) and stats["q99"] == pytest.approx(list(ACTION_UPPER))
    pre = json.loads((tiny_ckpt / "preprocessor_config.json").read_text())
    assert pre["means"][0] == pytest.approx([0.485, 0.456, 0.406]) and pre["image_resize_strategy"] == "resize-naive"


def test_tokenizer_id_layout(tiny_model: OpenVLA) -> None:
    tok = tiny_model.tokenizer
    assert tok.pad_token_id == 32000 and tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert tok.convert_tokens_to_ids("▁") == 29871 and len(tok) == 32001
    assert tiny_model.config.text_config["vocab_size"] == 32064


def test_dataset_statistics_override_config_norm_stats(tiny_ckpt: Path, tiny_model: OpenVLA) -> None:
    in_config = json.loads((tiny_ckpt / "config.json").read_text())["norm_stats"]["crane_x7"]["action"]["q99"]
    assert in_config == [1.0] * 8  # the config's stale stats ...
    assert tiny_model.action_stats().q99 == pytest.approx(list(ACTION_UPPER))  # ... lose to the file's


def test_save_load_round_trip_and_sharded(
    tiny_model: OpenVLA, models_tmp: Path, images: list[np.ndarray], instructions: list[str]
) -> None:
    ref = tiny_model.predict_action(images, instructions)
    save_pretrained(tiny_model, models_tmp / "resaved")
    np.testing.assert_array_equal(load_vla(models_tmp / "resaved").predict_action(images, instructions), ref)
    sharded = save_pretrained(tiny_model, models_tmp / "sharded", max_shard_size="2MB")
    shards = sorted(p.name for p in sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").is_file()
    assert not (sharded / "model.safetensors").exists()
    np.testing.assert_array_equal(load_vla(sharded).predict_action(images, instructions), ref)
    # a missing shard is named
    (sharded / shards[-1]).unlink()
    with pytest.raises(FileNotFoundError, match=shards[-1]):
        load_vla(sharded)


def test_lora_merge_equals_manual_formula(lora_ckpt: Path) -> None:
    cfg = json.loads((lora_ckpt / "adapter_config.json").read_text())
    base_dir = Path(cfg["base_model_name_or_path"])
    base = load_file(str(base_dir / "model.safetensors"))
    lora = load_file(str(lora_ckpt / "adapter_model.safetensors"))
    merged = load_vla(lora_ckpt).state_dict()
    scale = cfg["lora_alpha"] / cfg["r"]
    mods = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in lora}
    assert "language_model.model.layers.0.self_attn.q_proj" in mods and "projector.fc1" in mods
    assert not any("lm_head" in m for m in mods)
    for m in ["language_model.model.layers.1.mlp.down_proj", "projector.fc2",
              "vision_backbone.featurizer.blocks.0.attn.qkv"]:
        a, b = lora[f"base_model.model.{m}.lora_A.weight"], lora[f"base_model.model.{m}.lora_B.weight"]
        torch.testing.assert_close(merged[f"{m}.weight"], base[f"{m}.weight"] + scale * (b @ a))
    untouched = "language_model.lm_head.weight"
    torch.testing.assert_close(merged[untouched], base[untouched])


def test_lora_unmerged_matches_merged_and_saves_merged(
    lora_ckpt: Path, models_tmp: Path, images: list[np.ndarray], instructions: list[str]
) -> None:
    merged = load_vla(lora_ckpt)
    unmerged = load_vla(lora_ckpt, merge_lora=False)
    assert any(".lora_A." in k for k in unmerged.state_dict())
    inputs = merged.prepare_inputs(images, instructions)
    toks = merged.sample_action_tokens(inputs, 0.0).tokens
    lp_m = merged.action_token_log_probs(inputs, toks, 1.0).log_probs
    lp_u = unmerged.action_token_log_probs(inputs, toks, 1.0).log_probs
    torch.testing.assert_close(lp_m, lp_u, atol=1e-4, rtol=1e-4)
    # export: saving the unmerged model writes plain merged weights in the published layout
    out = save_pretrained(unmerged, models_tmp / "exported")
    keys = load_file(str(out / "model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)
    np.testing.assert_array_equal(
        load_vla(out).predict_action(images, instructions), merged.predict_action(images, instructions)
    )


def test_lora_adapters_subdir(lora_ckpt: Path, models_tmp: Path, images: list[np.ndarray]) -> None:
    base_dir = Path(json.loads((lora_ckpt / "adapter_config.json").read_text())["base_model_name_or_path"])
    ckpt = _copy(base_dir, models_tmp / "with_subdir")
    shutil.copytree(lora_ckpt, ckpt / "lora_adapters")
    a = load_vla(ckpt).predict_action(images[:1], ["go"])
    np.testing.assert_array_equal(a, load_vla(lora_ckpt).predict_action(images[:1], ["go"]))


def test_unnorm_key_errors(tiny_ckpt: Path, models_tmp: Path) -> None:
    with pytest.raises(ValueError, match=r"'bridge'.*Available: \['crane_x7'\]"):
        load_vla(tiny_ckpt, unnorm_key="bridge")
    two = _copy(tiny_ckpt, models_tmp / "two_datasets")
    stats = json.loads((two / "dataset_statistics.json").read_text())
    stats["bridge_orig"] = {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}
    (two / "dataset_statistics.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"several datasets.*\['bridge_orig', 'crane_x7'\]"):
        load_vla(two)
    model = load_vla(two, unnorm_key="bridge_orig")
    assert model.action_dim == 7 and model.unnorm_key == "bridge_orig"


def test_missing_files_are_named(tiny_ckpt: Path, models_tmp: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such local directory"):
        load_vla(models_tmp / "does-not-exist")
    with pytest.raises(NotADirectoryError, match="DIRECTORY"):
        load_vla(tiny_ckpt / "config.json")
    no_cfg = _copy(tiny_ckpt, models_tmp / "no_config")
    (no_cfg / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_vla(no_cfg)
    no_w = _copy(tiny_ckpt, models_tmp / "no_weights")
    (no_w / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_vla(no_w)
    wrong = _copy(tiny_ckpt, models_tmp / "wrong_type")
    cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps(cfg | {"model_type": "llava"}))
    with pytest.raises(ValueError, match="model_type is 'llava'"):
        load_vla(wrong)
    mismatch = _copy(tiny_ckpt, models_tmp / "mismatch")
    cfg["text_config"] = cfg["text_config"] | {"num_hidden_layers": 3}
    (mismatch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing"):
        load_vla(mismatch)


def test_lora_without_base_is_named(lora_ckpt: Path, models_tmp: Path) -> None:
    orphan = _copy(lora_ckpt, models_tmp / "orphan")
    cfg = json.loads((orphan / "adapter_config.json").read_text())
    (orphan / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        load_vla(orphan)


def test_bad_hub_id_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # empty cache
    monkeypatch.setenv("HF_TOKEN", "hf_secret_do_not_print")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE") as info:
        resolve_checkpoint("someone/not-a-real-openvla")
    assert "hf_secret" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        resolve_checkpoint("not a/valid id/at all")


def test_non_fused_and_7_dim(models_tmp: Path, images: list[np.ndarray]) -> None:
    path = make_tiny_checkpoint(models_tmp / "nonfused", fused=False, action_dim=7, seed=2)
    model = load_vla(path)
    inputs = model.prepare_inputs(images[:1], ["go"])
    assert inputs.pixel_values.shape[1] == 3 and "projector.fc3.weight" not in model.state_dict()
    assert model.predict_action(images[:1], ["go"]).shape == (1, 7)
