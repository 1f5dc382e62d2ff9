"""Our timm-layout ViT against independent references that run here (torch's MultiheadAttention) and its contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crane_x7_vla.models.config import ViTConfig
from crane_x7_vla.models.vision import Attention, VisionBackbone, VisionTransformer, timm_to_openvla_keys

CFG = ViTConfig(16, 3, 2, 32, 14, 56, num_reg_tokens=4, class_token=True, layer_scale=True)


def _randomize(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_attention_matches_torch_multihead_attention() -> None:
    ours, ref = Attention(16, 4), nn.MultiheadAttention(16, 4, batch_first=True)
    _randomize(ours)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_features_come_from_block_depth_minus_2_without_prefix() -> None:
    vit = VisionTransformer(CFG)
    _randomize(vit)
    x = torch.randn(2, 3, 56, 56)
    feats = vit(x)
    assert feats.shape == (2, 16, 16)  # 4x4 patches, prefix (1 cls + 4 registers) stripped
    with torch.no_grad():
        vit.blocks[-1].mlp.fc1.weight.add_(1.0)  # the last block is never run
        vit.norm.weight.add_(1.0)  # nor the final norm
    torch.testing.assert_close(vit(x), feats)
    with torch.no_grad():
        vit.reg_token.add_(torch.randn(vit.reg_token.shape))  # registers do influence the patch tokens through attention
    assert not torch.allclose(vit(x), feats)


def test_fused_backbone_splits_channels() -> None:
    a, b = CFG, ViTConfig(24, 2, 2, 48, 14, 56, attn_pool=True)
    bb = VisionBackbone([a, b])
    _randomize(bb)
    x = torch.randn(1, 6, 56, 56)
    out = bb(x)
    assert out.shape == (1, 16, 40)
    torch.testing.assert_close(out[..., :16], bb.featurizer(x[:, :3]))
    torch.testing.assert_close(out[..., 16:], bb.fused_featurizer(x[:, 3:]))
    with pytest.raises(ValueError, match="expects 6"):
        bb(torch.randn(1, 3, 56, 56))


def test_timm_key_rename() -> None:
    sd = {"blocks.0.ls1.gamma": torch.ones(1), "head.weight": torch.ones(1), "norm.weight": torch.ones(1)}
    assert set(timm_to_openvla_keys(sd)) == {"blocks.0.ls1.scale_factor", "norm.weight"}
