from __future__ import annotations

import json
from pathlib import Path

import pytest

from crane_x7_vla.models.config import OpenVLAConfig
from crane_x7_vla.models.openvla import llama_config


def _cfg(tiny_ckpt: Path) -> dict:
    return json.loads((tiny_ckpt / "config.json").read_text())


def test_tiny_config_parses_with_published_keys(tiny_ckpt: Path) -> None:
    d = _cfg(tiny_ckpt)
    for key in ("model_type", "use_fused_vision_backbone", "timm_model_ids", "image_sizes", "text_config",
                "n_action_bins", "pad_to_multiple_of", "pad_token_id", "norm_stats", "image_resize_strategy"):
        assert key in d
    cfg = OpenVLAConfig.from_dict(d)
    assert cfg.vocab_size_without_pad == 32000
    assert cfg.text_config["vocab_size"] == 32064
    assert cfg.vision_dim == sum(t.embed_dim for t in cfg.vision_towers)


def test_wrong_model_type_is_named(tiny_ckpt: Path) -> None:
    d = _cfg(tiny_ckpt) | {"model_type": "llama"}
    with pytest.raises(ValueError, match="model_type is 'llama', expected 'openvla'"):
        OpenVLAConfig.from_dict(d)


def test_missing_key_is_named(tiny_ckpt: Path) -> None:
    d = _cfg(tiny_ckpt)
    del d["timm_model_ids"]
    with pytest.raises(ValueError, match="timm_model_ids"):
        OpenVLAConfig.from_dict(d)


def test_unknown_tower_suggests_closest(tiny_ckpt: Path) -> None:
    d = _cfg(tiny_ckpt)
    del d["vision_tower_configs"]
    d["timm_model_ids"] = ["vit_large_patch14_reg4_dinov2", "vit_so400m_patch14_siglip_224"]
    with pytest.raises(ValueError, match=r"Did you mean 'vit_large_patch14_reg4_dinov2\.lvd142m'"):
        OpenVLAConfig.from_dict(d)


def test_rms_norm_eps_read_from_config_and_defaults_to_1e6() -> None:
    base = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "vocab_size": 128}
    assert llama_config(base).rms_norm_eps == pytest.approx(1e-6)
    assert llama_config(base | {"rms_norm_eps": 1e-5}).rms_norm_eps == pytest.approx(1e-5)
    assert llama_config(base).tie_word_embeddings is False
