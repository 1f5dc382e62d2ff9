"""OpenVLA ``config.json`` as a frozen dataclass, plus the vision-tower geometry it implies.

Design choice: we parse the *published* schema (``model_type == "openvla"``, the Prismatic keys and a nested Llama
``text_config``) instead of inventing our own, so a downloaded checkpoint loads unchanged. The published config
names its vision towers only by timm model id; :data:`KNOWN_VISION_TOWERS` maps those ids to geometry. Tiny test
checkpoints (and MiniVLA) that use other towers carry an extra, optional ``vision_tower_configs`` list (our
extension; ignored by the published code) with the same fields as :class:`ViTConfig`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
RESIZE_STRATEGIES = ("resize-naive", "letterbox", "resize-crop")


def read_config_json(path: str | Path, hint: str) -> dict[str, Any]:
    """Read a checkpoint's config.json; missing or invalid files raise errors naming the file (and ``hint``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {hint}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


# The engine pads prompts to a multiple of this many tokens (one CUDA graph per bucket). Here, torch-free, so
# the RL memory planner can count the engine's KV cache without importing torch.
ENGINE_TEXT_BUCKET = 16


@dataclass(frozen=True)
class ViTConfig:
    """Geometry of one timm-layout ViT tower (what ``timm.create_model(id)`` would build)."""

    embed_dim: int  # token width D
    depth: int  # number of blocks (features come from block depth-2)
    num_heads: int
    mlp_dim: int  # hidden width of the block MLP
    patch_size: int = 14
    image_size: int = 224
    num_reg_tokens: int = 0  # DINOv2-reg4: 4
    class_token: bool = False  # DINOv2: True; SigLIP: False
    layer_scale: bool = False  # DINOv2: True (stored as ls{1,2}.scale_factor)
    attn_pool: bool = False  # SigLIP: True ("map" head; weights present, never run)
    mean: tuple[float, float, float] = SIGLIP_MEAN  # per-channel normalisation of this tower's input
    std: tuple[float, float, float] = SIGLIP_STD

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_reg_tokens

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViT embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.depth < 2:
            raise ValueError(f"ViT depth must be >= 2 (features come from block depth-2), got {self.depth}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViTConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown vision_tower_configs field(s) {unknown}; allowed: {sorted(known)}")
        kw = dict(d)
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        return cls(**kw)


# timm id -> geometry at 224 px (image_size is overridden from config.image_sizes).
KNOWN_VISION_TOWERS: dict[str, ViTConfig] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": ViTConfig(
        1024, 24, 16, 4096, num_reg_tokens=4, class_token=True, layer_scale=True, mean=DINO_MEAN, std=DINO_STD
    ),
    "vit_base_patch14_reg4_dinov2.lvd142m": ViTConfig(
        768, 12, 12, 3072, num_reg_tokens=4, class_token=True, layer_scale=True, mean=DINO_MEAN, std=DINO_STD
    ),
    "vit_so400m_patch14_siglip_224": ViTConfig(1152, 27, 16, 4304, attn_pool=True),
    "vit_so400m_patch14_siglip_384": ViTConfig(1152, 27, 16, 4304, image_size=384, attn_pool=True),
}

_REQUIRED = (
    "use_fused_vision_backbone",
    "timm_model_ids",
    "image_sizes",
    "text_config",
    "n_action_bins",
    "pad_to_multiple_of",
)


@dataclass(frozen=True)
class OpenVLAConfig:
    """The fields of an OpenVLA ``config.json`` that the runtime uses (the raw dict is kept for re-saving)."""

    use_fused_vision_backbone: bool  # two towers (DINOv2 + SigLIP, 6-channel input) or one
    timm_model_ids: tuple[str, ...]
    image_sizes: tuple[int, ...]
    text_config: dict[str, Any]  # LlamaConfig kwargs
    vision_towers: tuple[ViTConfig, ...]  # resolved geometry, one per tower
    n_action_bins: int = 256
    pad_to_multiple_of: int = 64
    pad_token_id: int = 32000
    image_resize_strategy: str = "resize-naive"
    vision_backbone_id: str = ""
    llm_backbone_id: str = ""
    arch_specifier: str = ""
    llm_max_length: int = 2048
    norm_stats: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def llm_hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def vocab_size_without_pad(self) -> int:
        """``V`` of the action tokenizer: ``text_config.vocab_size - pad_to_multiple_of`` (32000 for Llama-2)."""
        return int(self.text_config["vocab_size"]) - self.pad_to_multiple_of

    @property
    def vision_dim(self) -> int:
        return sum(t.embed_dim for t in self.vision_towers)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> OpenVLAConfig:
        model_type = d.get("model_type")
        if model_type != "openvla":
            raise ValueError(
                f"{source}: model_type is {model_type!r}, expected 'openvla'. This loader reads OpenVLA-format "
                "checkpoints (config.json from openvla/openvla-7b or a fine-tune saved in that layout); "
                "Prismatic .pt checkpoints (MiniVLA) need the MiniVLA loader."
            )
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {missing} in an OpenVLA config")
        fused = bool(d["use_fused_vision_backbone"])
        ids = tuple(str(x) for x in d["timm_model_ids"])
        sizes = tuple(int(x) for x in d["image_sizes"])
        n_towers = 2 if fused else 1
        if len(ids) != n_towers or len(sizes) != n_towers:
            raise ValueError(
                f"{source}: use_fused_vision_backbone={fused} needs {n_towers} timm_model_ids and image_sizes, "
                f"got {len(ids)} and {len(sizes)}"
            )
        towers = _resolve_towers(ids, sizes, d.get("vision_tower_configs"), source)
        text = dict(d["text_config"])
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if key not in text:
                raise ValueError(f"{source}: text_config is missing {key!r}")
        strategy = str(d.get("image_resize_strategy", "resize-naive"))
        if strategy not in RESIZE_STRATEGIES:
            raise ValueError(f"{source}: image_resize_strategy {strategy!r} is not one of {RESIZE_STRATEGIES}")
        return cls(
            use_fused_vision_backbone=fused,
            timm_model_ids=ids,
            image_sizes=sizes,
            text_config=text,
            vision_towers=towers,
            n_action_bins=int(d["n_action_bins"]),
            pad_to_multiple_of=int(d["pad_to_multiple_of"]),
            pad_token_id=int(d.get("pad_token_id", 32000)),
            image_resize_strategy=strategy,
            vision_backbone_id=str(d.get("vision_backbone_id", "")),
            llm_backbone_id=str(d.get("llm_backbone_id", "")),
            arch_specifier=str(d.get("arch_specifier", "")),
            llm_max_length=int(d.get("llm_max_length", 2048)),
            norm_stats=dict(d.get("norm_stats") or {}),
            raw=dict(d),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> OpenVLAConfig:
        data = read_config_json(path, "an OpenVLA checkpoint directory must contain config.json")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict to save (raw keys preserved, runtime fields written back)."""
        out = dict(self.raw)
        out.update(
            model_type="openvla",
            use_fused_vision_backbone=self.use_fused_vision_backbone,
            timm_model_ids=list(self.timm_model_ids),
            image_sizes=list(self.image_sizes),
            text_config=dict(self.text_config),
            n_action_bins=self.n_action_bins,
            pad_to_multiple_of=self.pad_to_multiple_of,
            pad_token_id=self.pad_token_id,
            image_resize_strategy=self.image_resize_strategy,
            norm_stats=self.norm_stats,
        )
        if any(i not in KNOWN_VISION_TOWERS for i in self.timm_model_ids):
            out["vision_tower_configs"] = [_tower_dict(t) for t in self.vision_towers]
        return out


def _tower_dict(t: ViTConfig) -> dict[str, Any]:
    d = asdict(t)
    d["mean"], d["std"] = list(t.mean), list(t.std)
    return d


def _resolve_towers(
    ids: tuple[str, ...], sizes: tuple[int, ...], explicit: Any, source: str
) -> tuple[ViTConfig, ...]:
    if explicit is not None:
        if not isinstance(explicit, list) or len(explicit) != len(ids):
            raise ValueError(f"{source}: vision_tower_configs must be a list with one entry per timm_model_id")
        return tuple(ViTConfig.from_dict(e) for e in explicit)
    towers = []
    for tid, size in zip(ids, sizes, strict=True):
        if tid not in KNOWN_VISION_TOWERS:
            close = difflib.get_close_matches(tid, list(KNOWN_VISION_TOWERS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{source}: unknown vision tower {tid!r}.{hint} Known: {sorted(KNOWN_VISION_TOWERS)}; "
                "or describe it with a 'vision_tower_configs' list in config.json."
            )
        base = KNOWN_VISION_TOWERS[tid]
        towers.append(ViTConfig(**{**asdict(base), "image_size": size}))
    return tuple(towers)
