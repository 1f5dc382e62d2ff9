"""MiniVLA's Prismatic ``config.json`` (the ``"vla"`` block) as a frozen dataclass, plus the geometry it implies.

Design choice: the published MiniVLA checkpoints are Prismatic training outputs, whose ``config.json`` names the
model only by registry ids (``base_vlm = "prism-qwen25-extra-dinosiglip-224px+0_5b"``) and never spells out layer
sizes. We resolve those ids through small tables (:data:`KNOWN_BASE_VLMS`, :data:`KNOWN_LLMS`,
:data:`VISION_BACKBONES`) so a downloaded checkpoint loads unchanged, and fail with the list of supported values
for anything else. Tiny test checkpoints use the same schema with two optional extension keys inside ``"vla"``
(``text_config``: Qwen2Config kwargs; ``vision_tower_configs``: :class:`ViTConfig` fields), which the published
code ignores.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crane_x7_vla.models.config import KNOWN_VISION_TOWERS, RESIZE_STRATEGIES, ViTConfig, read_config_json

# base_vlm id -> (vision backbone id, LLM backbone id, arch specifier, image resize strategy).
KNOWN_BASE_VLMS: dict[str, tuple[str, str, str, str]] = {
    "prism-qwen25-extra-dinosiglip-224px+0_5b": (
        "dinosiglip-vit-so-224px",
        "qwen25-0_5b-extra",
        "no-align+fused-gelu-mlp",
        "resize-naive",
    ),
}
# vision backbone id -> timm ids of its towers (fused: DINOv2 first, SigLIP second).
VISION_BACKBONES: dict[str, tuple[str, ...]] = {
    "dinosiglip-vit-so-224px": ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"),
}
# LLM backbone id -> (Hub repo of its tokenizer, Qwen2Config kwargs). Values of Qwen/Qwen2.5-0.5B's config.json.
KNOWN_LLMS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen25-0_5b-extra": (
        "Qwen/Qwen2.5-0.5B",
        {
            "vocab_size": 151936,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            "bos_token_id": 151643,
            "eos_token_id": 151643,
        },
    ),
}
# action_tokenizer id -> kind. "bin": 256 uniform bins, one token per action dim; "vq": residual-VQ codes of a chunk.
ACTION_TOKENIZERS: dict[str, str] = {
    "extra_action_tokenizer": "bin",
    "libero_vq_extra_action_tokenizer": "vq",
    "bridge_vq_extra_action_tokenizer": "vq",
}
# VQ action tokenizer id -> the published VQ weights ("org/repo/subfolder" on the Hub), when one is known.
KNOWN_VQ_SOURCES: dict[str, str] = {
    "libero_vq_extra_action_tokenizer": (
        "Stanford-ILIAD/pretrain_vq/pretrain_vq+mx-libero_90+fach-7+ng-7+nemb-128+nlatent-512"
    ),
}
NUM_EXTRA_TOKENS = 256  # <|extra_0|> .. <|extra_255|> appended to the Qwen tokenizer


def _unsupported(what: str, value: str, known: list[str], source: str) -> ValueError:
    close = difflib.get_close_matches(value, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{source}: unsupported MiniVLA {what} {value!r}.{hint} Supported: {sorted(known)}")


@dataclass(frozen=True)
class MiniVLAConfig:
    """The fields of a Prismatic MiniVLA ``config.json`` that the runtime uses (the raw dict is kept for re-saving)."""

    base_vlm: str  # Prismatic registry id of the VLM (fixes vision/LLM/projector)
    vision_backbone_id: str
    llm_backbone_id: str
    arch_specifier: str  # "no-align+fused-gelu-mlp": the fused 3-layer GELU projector
    image_resize_strategy: str
    action_tokenizer: str  # registry id, kind given by ACTION_TOKENIZERS
    vision_towers: tuple[ViTConfig, ...]  # DINOv2 then SigLIP
    text_config: dict[str, Any]  # Qwen2Config kwargs
    tokenizer_source: str  # Hub repo / dir of the base Qwen tokenizer (when the checkpoint carries none)
    image_sequence_len: int = 1  # frames of history per camera (history2: 2 = [t-1, t])
    use_wrist_image: bool = False  # a second camera (wrist) after the third-person view
    n_action_bins: int = 256
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def action_kind(self) -> str:
        return ACTION_TOKENIZERS[self.action_tokenizer]

    @property
    def num_images(self) -> int:
        """Images per sample, each encoded to its own patch block (in order)."""
        return self.image_sequence_len * (2 if self.use_wrist_image else 1)

    @property
    def llm_hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def vision_dim(self) -> int:
        return sum(t.embed_dim for t in self.vision_towers)

    @property
    def use_fused_vision_backbone(self) -> bool:
        return len(self.vision_towers) == 2

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> MiniVLAConfig:
        vla = d.get("vla")
        if not isinstance(vla, Mapping):
            raise ValueError(
                f"{source}: no 'vla' block; a Prismatic MiniVLA config.json has one (this looks like "
                f"{'an OpenVLA HF config' if d.get('model_type') == 'openvla' else 'another format'})"
            )
        base = str(vla.get("base_vlm", ""))
        if base not in KNOWN_BASE_VLMS:
            raise _unsupported("base_vlm", base, list(KNOWN_BASE_VLMS), source)
        vision_id, llm_id, arch, resize = KNOWN_BASE_VLMS[base]
        resize = str(vla.get("image_resize_strategy", resize))
        if resize not in RESIZE_STRATEGIES:
            raise ValueError(f"{source}: image_resize_strategy {resize!r} is not one of {RESIZE_STRATEGIES}")
        tok = str(vla.get("action_tokenizer", "extra_action_tokenizer"))
        if tok not in ACTION_TOKENIZERS:
            raise _unsupported("action_tokenizer", tok, list(ACTION_TOKENIZERS), source)
        seq = int(vla.get("image_sequence_len", 1) or 1)
        wrist = bool(vla.get("use_wrist_image", False))
        if seq not in (1, 2):
            raise ValueError(f"{source}: image_sequence_len {seq} is not supported (1, or 2 for history2 models)")
        if seq > 1 and wrist:
            raise ValueError(
                f"{source}: image_sequence_len {seq} together with use_wrist_image is not a published MiniVLA "
                "variant and its frame order is undefined; use a history2 or a wrist checkpoint"
            )
        llm_tok, text = KNOWN_LLMS.get(llm_id, ("", {}))
        if "text_config" in vla:
            text = dict(vla["text_config"])  # our extension (tiny checkpoints)
        elif not text:
            raise _unsupported("LLM backbone", llm_id, list(KNOWN_LLMS), source)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if key not in text:
                raise ValueError(f"{source}: the MiniVLA text_config is missing {key!r}")
        towers = _towers(vision_id, vla.get("vision_tower_configs"), source)
        return cls(
            base_vlm=base,
            vision_backbone_id=vision_id,
            llm_backbone_id=llm_id,
            arch_specifier=arch,
            image_resize_strategy=resize,
            action_tokenizer=tok,
            vision_towers=towers,
            text_config=text,
            tokenizer_source=str(vla.get("tokenizer_source", llm_tok)),
            image_sequence_len=seq,
            use_wrist_image=wrist,
            raw=dict(d),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> MiniVLAConfig:
        data = read_config_json(path, "a Prismatic MiniVLA checkpoint directory holds config.json")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict to save: raw keys preserved, ``hf_token`` (a secret's location) dropped."""
        out = {k: v for k, v in self.raw.items() if k != "hf_token"}
        vla = dict(out.get("vla") or {})
        vla.update(
            base_vlm=self.base_vlm,
            action_tokenizer=self.action_tokenizer,
            image_sequence_len=self.image_sequence_len,
            use_wrist_image=self.use_wrist_image,
        )
        out["vla"] = vla
        return out


def _towers(vision_id: str, explicit: Any, source: str) -> tuple[ViTConfig, ...]:
    if explicit is not None:
        if not isinstance(explicit, list) or len(explicit) != 2:
            raise ValueError(f"{source}: vla.vision_tower_configs must list 2 towers (DINOv2, SigLIP)")
        return tuple(ViTConfig.from_dict(e) for e in explicit)
    if vision_id not in VISION_BACKBONES:
        raise _unsupported("vision backbone", vision_id, list(VISION_BACKBONES), source)
    return tuple(KNOWN_VISION_TOWERS[t] for t in VISION_BACKBONES[vision_id])


def tower_dicts(towers: tuple[ViTConfig, ...]) -> list[dict[str, Any]]:
    """``vision_tower_configs`` entries (JSON-ready) for non-published tower geometry."""
    return [{**asdict(t), "mean": list(t.mean), "std": list(t.std)} for t in towers]
