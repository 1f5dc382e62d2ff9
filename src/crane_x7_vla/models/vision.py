"""timm-layout ViT towers (DINOv2-reg4, SigLIP) and the OpenVLA vision backbone / projectors, in plain PyTorch.

Design choice (a documented deviation from the published code): OpenVLA builds its towers with
``timm.create_model``. timm imports torchvision at import time, and torchvision has no build for the CPU-only
torch we run CI with, so timm cannot even be imported there. We therefore re-implement the small part of timm's
``VisionTransformer`` that OpenVLA uses, keeping its ``state_dict`` keys and shapes *exactly* (``patch_embed.proj``,
``cls_token``, ``reg_token``, ``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1,norm2,mlp.fc1,mlp.fc2,ls2}``,
``norm``, SigLIP ``attn_pool.*``) with OpenVLA's rename of LayerScale ``gamma`` to ``scale_factor``. Numerics follow
timm: LayerNorm eps 1e-6, exact-erf GELU, fused SDPA attention, learned positional embedding added to patch tokens
only, prefix tokens ``[cls, reg...]`` prepended after it. ``tests/models/test_vision_timm_parity.py`` checks the
equality against timm wherever timm imports.

OpenVLA reads features from the second-to-last block (timm ``get_intermediate_layers(n={depth-2})``) without the
final norm and with prefix tokens stripped, so :meth:`VisionTransformer.forward` stops there; the last block,
``norm`` and ``attn_pool`` keep their weights (for checkpoint compatibility) but are never run.

Everything here is configured by :class:`~crane_x7_vla.models.config.ViTConfig` and plain dims so MiniVLA reuses the
same towers and projector (different LLM width, its own key prefixes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crane_x7_vla.models.config import ViTConfig

LN_EPS = 1e-6  # timm ViT default (partial(nn.LayerNorm, eps=1e-6))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # [B,3,H,W] -> [B,N,D]
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # [B,N,D] -> [B,N,D]
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B,H,N,hd]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    """timm's LayerScale with OpenVLA's parameter name (``scale_factor`` instead of ``gamma``)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale_factor


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf, as timm's default act_layer
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1: nn.Module = LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        self.mlp = Mlp(d, cfg.mlp_dim)
        self.ls2: nn.Module = LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """Parameter layout of timm's MAP head (SigLIP). Present so checkpoints load strictly; OpenVLA never runs it."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.mlp = Mlp(d, cfg.mlp_dim)


class VisionTransformer(nn.Module):
    """One tower. ``forward`` returns patch features of block depth-2: [B,3,H,W] -> [B, num_patches, D]."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.num_reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_reg_tokens, d))
        # no_embed_class: the positional embedding covers patch tokens only (DINOv2-reg4, SigLIP).
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        if cfg.attn_pool:
            self.attn_pool = AttentionPoolLatent(cfg)

    @property
    def feature_block(self) -> int:
        return self.cfg.depth - 2

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.patch_embed(pixel_values) + self.pos_embed  # [B,N,D]
        prefix = []
        if self.cfg.class_token:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.cfg.num_reg_tokens:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        if prefix:
            x = torch.cat([*prefix, x], dim=1)  # [B, P+N, D], order cls, registers, patches
        for block in self.blocks[: self.feature_block + 1]:
            x = block(x)
        return x[:, self.cfg.num_prefix_tokens :]


class VisionBackbone(nn.Module):
    """One or two towers; fused input is [B, 3*T, H, W] split per tower, features concatenated on the last dim."""

    def __init__(self, towers: Sequence[ViTConfig]) -> None:
        super().__init__()
        if len(towers) not in (1, 2):
            raise ValueError(f"a vision backbone has 1 or 2 towers, got {len(towers)}")
        if len({t.num_patches for t in towers}) != 1:
            raise ValueError("fused towers must produce the same number of patches")
        self.featurizer = VisionTransformer(towers[0])
        if len(towers) == 2:
            self.fused_featurizer = VisionTransformer(towers[1])
        self.towers = tuple(towers)

    @property
    def embed_dim(self) -> int:
        return sum(t.embed_dim for t in self.towers)

    @property
    def num_patches(self) -> int:
        return self.towers[0].num_patches

    def forward(self, pixel_values: Tensor) -> Tensor:  # [B, 3*T, H, W] -> [B, N, sum(D)]
        if pixel_values.shape[1] != 3 * len(self.towers):
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels, this backbone expects {3 * len(self.towers)}"
            )
        if len(self.towers) == 1:
            return self.featurizer(pixel_values)  # type: ignore[no-any-return]
        a, b = torch.split(pixel_values, 3, dim=1)
        return torch.cat([self.featurizer(a), self.fused_featurizer(b)], dim=2)


class FusedMLPProjector(nn.Module):
    """``fused-gelu-mlp``: vision_dim -> 4*vision_dim -> llm_dim -> llm_dim, exact GELU after fc1 and fc2."""

    def __init__(self, vision_dim: int, llm_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, hidden_dim or 4 * vision_dim)
        self.fc2 = nn.Linear(hidden_dim or 4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:  # [B,N,Dv] -> [B,N,Dl]
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class MLPProjector(nn.Module):
    """``gelu-mlp`` (non-fused backbones): vision_dim -> llm_dim -> llm_dim."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:  # [B,N,Dv] -> [B,N,Dl]
        return self.fc2(self.act(self.fc1(x)))


def make_projector(vision_dim: int, llm_dim: int, fused: bool) -> nn.Module:
    return FusedMLPProjector(vision_dim, llm_dim) if fused else MLPProjector(vision_dim, llm_dim)


def timm_to_openvla_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a timm ViT state_dict to our layout (LayerScale ``gamma`` -> ``scale_factor``; heads dropped)."""
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith(("head.", "fc_norm.")):
            continue
        out[k.replace(".gamma", ".scale_factor")] = v
    return out
