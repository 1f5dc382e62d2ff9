"""The full openvla-7b module tree, built on the meta device, has exactly the published keys and shapes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from crane_x7_vla.models.config import OpenVLAConfig
from crane_x7_vla.models.loading import build_on_meta
from crane_x7_vla.models.presets import OPENVLA_7B


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, ...]]:
    model = build_on_meta(OpenVLAConfig.from_dict(OPENVLA_7B))
    assert all(p.device.type == "meta" for p in model.parameters())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _numel(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    return sum(int(torch.Size(s).numel()) for k, s in shapes.items() if k.startswith(prefix))


def test_key_families_and_shapes(shapes: dict[str, tuple[int, ...]]) -> None:
    dino, sig, llm = "vision_backbone.featurizer.", "vision_backbone.fused_featurizer.", "language_model."
    expect = {
        dino + "cls_token": (1, 1, 1024),
        dino + "reg_token": (1, 4, 1024),
        dino + "pos_embed": (1, 256, 1024),
        dino + "patch_embed.proj.weight": (1024, 3, 14, 14),
        dino + "blocks.0.attn.qkv.weight": (3072, 1024),
        dino + "blocks.0.attn.proj.weight": (1024, 1024),
        dino + "blocks.23.ls1.scale_factor": (1024,),
        dino + "blocks.23.ls2.scale_factor": (1024,),
        dino + "blocks.0.mlp.fc1.weight": (4096, 1024),
        dino + "blocks.0.mlp.fc2.weight": (1024, 4096),
        dino + "blocks.0.norm1.weight": (1024,),
        dino + "norm.weight": (1024,),
        sig + "pos_embed": (1, 256, 1152),
        sig + "patch_embed.proj.weight": (1152, 3, 14, 14),
        sig + "blocks.26.attn.qkv.weight": (3456, 1152),
        sig + "blocks.0.mlp.fc1.weight": (4304, 1152),
        sig + "attn_pool.latent": (1, 1, 1152),
        sig + "attn_pool.kv.weight": (2304, 1152),
        sig + "norm.bias": (1152,),
        "projector.fc1.weight": (8704, 2176),
        "projector.fc2.weight": (4096, 8704),
        "projector.fc3.weight": (4096, 4096),
        llm + "model.embed_tokens.weight": (32064, 4096),
        llm + "model.layers.31.self_attn.q_proj.weight": (4096, 4096),
        llm + "model.layers.0.self_attn.k_proj.weight": (4096, 4096),
        llm + "model.layers.0.mlp.gate_proj.weight": (11008, 4096),
        llm + "model.layers.0.mlp.down_proj.weight": (4096, 11008),
        llm + "model.layers.0.input_layernorm.weight": (4096,),
        llm + "model.layers.0.post_attention_layernorm.weight": (4096,),
        llm + "model.norm.weight": (4096,),
        llm + "lm_head.weight": (32064, 4096),
    }
    for k, s in expect.items():
        assert shapes.get(k) == s, k
    assert not any(k.endswith(".gamma") for k in shapes)
    assert not any(k.startswith(sig) and ("cls_token" in k or "reg_token" in k or ".ls1." in k) for k in shapes)
    assert "vision_backbone.featurizer.attn_pool.latent" not in shapes
    # no stray buffers (RoPE inv_freq is non-persistent) and only the three top-level families
    assert {k.split(".")[0] for k in shapes} == {"vision_backbone", "projector", "language_model"}


def test_block_counts(shapes: dict[str, tuple[int, ...]]) -> None:
    def count(pattern: str) -> int:
        return len({m.group(1) for k in shapes if (m := re.match(pattern, k))})

    assert count(r"vision_backbone\.featurizer\.blocks\.(\d+)\.") == 24
    assert count(r"vision_backbone\.fused_featurizer\.blocks\.(\d+)\.") == 27
    assert count(r"language_model\.model\.layers\.(\d+)\.") == 32


def test_parameter_counts_match_the_spec(shapes: dict[str, tuple[int, ...]]) -> None:
    # spec: DINOv2 303M, SigLIP 428M, projector 71M, Llama-2 6.739B, total 7.541B
    assert _numel(shapes, "vision_backbone.featurizer.") == pytest.approx(303e6, rel=0.01)
    assert _numel(shapes, "vision_backbone.fused_featurizer.") == pytest.approx(428e6, rel=0.01)
    assert _numel(shapes, "projector.") == pytest.approx(71e6, rel=0.01)
    assert _numel(shapes, "language_model.") == pytest.approx(6.739e9, rel=0.002)
    assert _numel(shapes, "") == pytest.approx(7.541e9, rel=0.002)


def test_random_openvla_builds_the_benchmark_model_without_touching_the_preset() -> None:
    """The benchmarks' full-size model with random weights, here at the tiny config's sizes."""
    from crane_x7_vla.models.tiny import crane_x7_dataset_statistics, random_openvla, tiny_config_dict

    stats = crane_x7_dataset_statistics(7)
    config = tiny_config_dict(True, 224, stats)
    before = repr(config)
    model = random_openvla(config, stats, "pick up the red cube", device="cpu", dtype=torch.bfloat16)
    assert repr(config) == before and torch.get_default_dtype() == torch.float32
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    qkv = params["language_model.model.layers.0.self_attn.q_proj.weight"].float()
    assert abs(qkv.std().item() - 0.02) < 0.002
    assert all(bool((p == 1).all()) for n, p in params.items() if p.ndim == 1 and "norm" in n)
    assert all(bool((p == 0).all()) for n, p in params.items() if n.endswith(".bias") and "norm" not in n)
    # The prompt has the release's length: its words are single tokenizer pieces (+ BOS, + the appended "▁").
    inputs = model.prepare_inputs([np.zeros((224, 224, 3), dtype=np.uint8)], ["pick up the red cube"])
    assert inputs.input_ids.shape[1] == 20
