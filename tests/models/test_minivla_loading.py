"""MiniVLA checkpoint I/O: the Prismatic layout, round trips, family detection, and errors that name the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crane_x7_vla.cli import main as cli_main
from crane_x7_vla.models import MiniVLA, OpenVLA, load_vla, make_tiny_checkpoint, make_tiny_minivla_checkpoint
from crane_x7_vla.models.loading import save_pretrained
from crane_x7_vla.models.vq import load_action_vq


@pytest.fixture(scope="module")
def vq_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_minivla_checkpoint(tmp_path_factory.mktemp("mvl") / "vq", vq=True, action_dim=8, seed=5)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8) for _ in range(2)]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_prismatic_layout(vq_ckpt: Path) -> None:
    files = {str(p.relative_to(vq_ckpt)) for p in vq_ckpt.rglob("*") if p.is_file()}
    assert {"config.json", "dataset_statistics.json", "checkpoints/step-000000-epoch-00-loss=0.0000.pt",
            "vq/config.json", "vq/checkpoints/model.pt", "tokenizer.json"} <= files
    vla = json.loads((vq_ckpt / "config.json").read_text())["vla"]
    assert vla["base_vlm"] == "prism-qwen25-extra-dinosiglip-224px+0_5b"
    assert vla["action_tokenizer"] == "libero_vq_extra_action_tokenizer"
    pt = torch.load(next((vq_ckpt / "checkpoints").glob("step-*.pt")), weights_only=True)["model"]
    assert set(pt) == {"vision_backbone", "projector", "llm_backbone"}
    assert "dino_featurizer.blocks.0.ls1.gamma" in pt["vision_backbone"]  # timm's LayerScale name, as published
    assert "siglip_featurizer.attn_pool.latent" in pt["vision_backbone"]
    assert sorted(pt["projector"]) == [f"projector.{i}.{w}" for i in (0, 2, 4) for w in ("bias", "weight")]
    llm = pt["llm_backbone"]
    assert tuple(llm["llm.model.embed_tokens.weight"].shape) == (151936, 32)
    assert torch.equal(llm["llm.lm_head.weight"], llm["llm.model.embed_tokens.weight"])  # tied
    assert "llm.model.layers.1.self_attn.q_proj.bias" in llm
    vq = torch.load(vq_ckpt / "vq" / "checkpoints" / "model.pt", weights_only=True)
    assert sorted(vq["encoder"]) == ["encoder.0.bias", "encoder.0.weight", "encoder.2.bias", "encoder.2.weight",
                                     "fc.bias", "fc.weight"]
    assert tuple(vq["vq_embedding"]["layers.6._codebook.embed"].shape) == (1, 128, 16)
    vq_cfg = json.loads((vq_ckpt / "vq" / "config.json").read_text())
    assert (vq_cfg["input_dim_h"], vq_cfg["input_dim_w"], vq_cfg["vqvae_groups"], vq_cfg["vqvae_n_embed"]) == (8, 8, 7, 128)


def test_round_trip_and_family_detection(vq_ckpt: Path, tmp_path: Path, images: list[np.ndarray]) -> None:
    model = load_vla(vq_ckpt)
    assert isinstance(model, MiniVLA)
    ref = model.predict_action_chunk(images, ["pick", "go"])
    out = save_pretrained(model, tmp_path / "resaved")  # dispatches to the Prismatic layout
    again = load_vla(out)
    np.testing.assert_array_equal(again.predict_action_chunk(images, ["pick", "go"]), ref)
    # the VQ dir can live anywhere: explicit vq_path
    moved = tmp_path / "pretrain_vq"
    shutil.move(str(out / "vq"), moved)
    np.testing.assert_array_equal(load_vla(out, vq_path=moved).predict_action_chunk(images, ["pick", "go"]), ref)
    vq = load_action_vq(moved)
    assert vq.config.chunk == 8 and vq.config.groups == 7
    # the same entry point still loads OpenVLA's HF layout
    assert isinstance(load_vla(make_tiny_checkpoint(tmp_path / "ovla", action_dim=8)), OpenVLA)


def test_cli_make_tiny_minivla(tmp_path: Path, images: list[np.ndarray]) -> None:
    out = tmp_path / "cli"
    assert cli_main(["make-tiny-checkpoint", str(out), "--family", "minivla", "--history2", "--seed", "3"]) == 0
    model = load_vla(out)
    assert isinstance(model, MiniVLA) and model.config.image_sequence_len == 2 and model.action_vq is None
    assert model.predict_action(images[:1], ["pick"]).shape == (1, 7)
    with pytest.raises(SystemExit, match="--vq"):
        cli_main(["make-tiny-checkpoint", str(tmp_path / "x"), "--vq"])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"base_vlm": "prism-qwen25-extra-dinosiglip-224px+3b"}, r"unsupported MiniVLA base_vlm .*Did you mean"),
        ({"action_tokenizer": "libero_vq_extra_action_tokeniser"}, r"action_tokenizer .*libero_vq_extra_action_tokenizer"),
        ({"image_sequence_len": 2, "use_wrist_image": True}, "not a published MiniVLA variant"),
    ],
)
def test_unsupported_variant(vq_ckpt: Path, tmp_path: Path, edit: dict[str, object], match: str) -> None:
    ckpt = _copy(vq_ckpt, tmp_path / "bad")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vla"].update(edit)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        load_vla(ckpt)


def test_missing_vq_dir_and_step_checkpoint(vq_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the published VQ location is tried, and cannot be reached
    ckpt = _copy(vq_ckpt, tmp_path / "novq")
    shutil.rmtree(ckpt / "vq")
    with pytest.raises(FileNotFoundError, match=r"VQ weights for 'libero_vq_extra_action_tokenizer'.*vq_path="):
        load_vla(ckpt)
    with pytest.raises(FileNotFoundError, match="not a VQ action-tokenizer directory"):
        load_vla(ckpt, vq_path=tmp_path)
    for p in (ckpt / "checkpoints").glob("step-*.pt"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/step-\*\.pt"):
        load_vla(ckpt)


def test_vq_action_dim_must_match_stats(vq_ckpt: Path, tmp_path: Path) -> None:
    ckpt = _copy(vq_ckpt, tmp_path / "dims")
    stats = json.loads((ckpt / "dataset_statistics.json").read_text())
    for k in ("q01", "q99", "mask"):
        stats["crane_x7"]["action"][k] = stats["crane_x7"]["action"][k][:7]
    (ckpt / "dataset_statistics.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match="VQ decodes 8-dim actions but dataset 'crane_x7' has 7"):
        load_vla(ckpt)
