"""Tiny, randomly initialised OpenVLA-architecture checkpoints for tests, demos and CI (nothing downloads).

The checkpoint has the exact published file layout, key names and config schema; only the sizes shrink: two
3-block ViTs (DINOv2-reg4-like with LayerScale and 4 registers, SigLIP-like with an attention-pool head), the
fused projector, and a 2-layer Llama. The tokenizer is a locally built Llama-style BPE (``tokenizers`` library,
byte fallback) with the real id layout: 32000 base ids (``<unk>``=0, ``<s>``=1, ``</s>``=2, "▁"=29871, action bins
31744..31999), ``<PAD>``=32000, and ``text_config.vocab_size`` 32064 (pad_to_multiple_of 64). The LM head is biased
towards the action rows so greedy decoding lands on action tokens and actions depend on the image, like a trained
model, instead of decoding a constant clipped bin.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crane_x7_vla.models.config import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD, OpenVLAConfig, ViTConfig
from crane_x7_vla.models.loading import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    STATS_NAME,
    _write_json,
    save_pretrained,
)
from crane_x7_vla.models.openvla import OpenVLA
from crane_x7_vla.models.processing import build_prompt
from crane_x7_vla.robot import ACTION_LOWER, ACTION_UPPER
from crane_x7_vla.utils.atomic import atomic_directory

BASE_VOCAB = 32000
PAD_TOKEN = "<PAD>"
UNDERLINE_ID = 29871
TINY_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32064,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "pad_token_id": 32000,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}


def tiny_vision_towers(image_size: int = 224, fused: bool = True) -> list[ViTConfig]:
    dino = ViTConfig(32, 3, 2, 64, 14, image_size, num_reg_tokens=4, class_token=True, layer_scale=True,
                     mean=DINO_MEAN, std=DINO_STD)
    siglip = ViTConfig(48, 3, 2, 96, 14, image_size, attn_pool=True, mean=SIGLIP_MEAN, std=SIGLIP_STD)
    return [dino, siglip] if fused else [siglip]


def build_llama_style_tokenizer(words: Sequence[str] = ()) -> Any:
    """A Llama-2-shaped fast tokenizer (BPE, byte fallback, "▁" word marker) with the real special-id layout.

    By default a word is one piece per character. ``words`` become single pieces, as common English words are in
    Llama-2's 32k vocabulary; each is written as the tokenizer sees it: "▁word" after a space (or at the start of
    the text), "word" after anything else (a newline, say). A benchmark passes its prompt's words so the prompt
    has the release's token count; one piece per character makes OpenVLA's prompt ~3x longer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    pieces = [chr(c) for c in range(33, 127)] + [f"▁{chr(c)}" for c in range(97, 123)]
    for p in pieces:
        vocab[p] = len(vocab)
    merges = [("▁", chr(c)) for c in range(97, 123)]
    for word in words:
        body = word.removeprefix("▁")
        if not (body.isascii() and body.isalpha()) or len(word) < 2:
            raise ValueError(f"tokenizer words must be ASCII letters, optionally after '▁', got {word!r}")
        # A chain of merges through the word's prefixes, left to right; every prefix is a piece. ("▁" keeps its
        # real id, given below.)
        for i in range(1, len(word)):
            for piece in (word[:i], word[i]):
                if piece != "▁":
                    vocab.setdefault(piece, len(vocab))
            if (word[:i], word[i]) not in merges:
                merges.append((word[:i], word[i]))
        vocab.setdefault(word, len(vocab))
    if len(vocab) >= UNDERLINE_ID:
        raise ValueError(f"too many tokenizer words: {len(vocab)} pieces would reach the id of '▁' ({UNDERLINE_ID})")
    filler = len(vocab)
    while len(vocab) < BASE_VOCAB:
        idx = len(vocab)
        # "▁" sits at its real Llama-2 id; every other slot is an unreachable placeholder piece.
        vocab["▁" if idx == UNDERLINE_ID else f"<tiny_{idx - filler}>"] = idx
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=2048
    )
    fast.add_special_tokens({"pad_token": PAD_TOKEN})
    fast.padding_side = "right"
    if fast.pad_token_id != BASE_VOCAB or fast.convert_tokens_to_ids("▁") != UNDERLINE_ID:
        raise RuntimeError("tiny tokenizer id layout is wrong (PAD must be 32000 and '▁' 29871)")
    return fast


def prompt_tokenizer(instruction: str) -> Any:
    """A Llama-style tokenizer in which OpenVLA's prompt for ``instruction`` has the release's token count (its
    words are single pieces, as in Llama-2's vocabulary): what a benchmark of the full-size model with random
    weights tokenizes with, so that its prefill has the real length."""
    prompt = build_prompt(instruction)
    words = [("▁" if m.start() == 0 or prompt[m.start() - 1] == " " else "") + m.group()
             for m in re.finditer(r"[A-Za-z]+", prompt)]
    return build_llama_style_tokenizer(words)


def random_openvla(config: dict[str, Any], norm_stats: dict[str, Any], instruction: str, *,
                   device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> OpenVLA:
    """An OpenVLA of ``config`` (a config.json dict, such as ``presets.OPENVLA_7B``) built directly on ``device``
    in ``dtype`` with small random weights: N(0, 0.02) matrices, unit norm weights and LayerScale factors, other
    vectors zero, which keep activations finite through 32 layers. Its tokenizer is :func:`prompt_tokenizer`'s
    for ``instruction``. For benchmarks of the full-size architecture: nothing is downloaded."""
    cfg = copy.deepcopy(config)  # the preset stays as it is
    cfg["norm_stats"] = norm_stats
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = OpenVLA(OpenVLAConfig.from_dict(cfg), tokenizer=prompt_tokenizer(instruction),
                            norm_stats=norm_stats)
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
            elif "norm" in name or "scale_factor" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    return model


def crane_x7_dataset_statistics(action_dim: int = 8, key: str = "crane_x7") -> dict[str, Any]:
    """Stats whose q01/q99 span the CRANE-X7 joint ranges (7 arm joints, + gripper when action_dim is 8)."""
    if action_dim not in (7, 8):
        raise ValueError(f"CRANE-X7 actions are 7 (arm) or 8 (arm + gripper) dims, got {action_dim}")
    lo, hi = np.asarray(ACTION_LOWER[:action_dim]), np.asarray(ACTION_UPPER[:action_dim])
    block = {
        "mean": ((lo + hi) / 2).tolist(),
        "std": ((hi - lo) / 4).tolist(),
        "max": hi.tolist(),
        "min": lo.tolist(),
        "q01": lo.tolist(),
        "q99": hi.tolist(),
    }
    return {
        key: {
            "action": {**block, "mask": [True] * action_dim},
            "proprio": block,
            "num_transitions": 1000,
            "num_trajectories": 10,
        }
    }


def tiny_config_dict(fused: bool, image_size: int, norm_stats: dict[str, Any]) -> dict[str, Any]:
    towers = tiny_vision_towers(image_size, fused)
    ids = ["tiny_vit_patch14_reg4_dinov2", "tiny_vit_patch14_siglip"] if fused else ["tiny_vit_patch14_siglip"]
    cfg = OpenVLAConfig.from_dict(
        {
            "architectures": ["OpenVLAForActionPrediction"],
            "model_type": "openvla",
            "vision_backbone_id": "dinosiglip-vit-so-224px" if fused else "siglip-vit-so400m",
            "llm_backbone_id": "llama2-7b-pure",
            "arch_specifier": "no-align+fused-gelu-mlp" if fused else "no-align+gelu-mlp",
            "use_fused_vision_backbone": fused,
            "image_resize_strategy": "resize-naive",
            "timm_model_ids": ids,
            "timm_override_act_layers": [None] * len(ids),
            "image_sizes": [image_size] * len(ids),
            "llm_max_length": 2048,
            "pad_token_id": 32000,
            "pad_to_multiple_of": 64,
            "n_action_bins": 256,
            "output_projector_states": False,
            "norm_stats": norm_stats,
            "text_config": dict(TINY_TEXT_CONFIG),
            "vision_tower_configs": [
                {**t.__dict__, "mean": list(t.mean), "std": list(t.std)} for t in towers
            ],
        }
    )
    return cfg.to_dict()


def _randomize(model: OpenVLA, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("scale_factor"):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                std = 0.5 if ("pos_embed" in name or "token" in name) else 0.2
                p.copy_(std * torch.randn(p.shape, generator=gen))
        # Make the action rows of the LM head dominate so greedy decoding picks action bins (as trained weights do).
        head = model.language_model.lm_head.weight
        first = model.action_tokenizer.first_token_id
        head.mul_(0.05)
        head[first : first + model.action_tokenizer.n_bins] *= 40.0


def _write_lora(model: OpenVLA, adapter_dir: Path, base_dir: Path, gen: torch.Generator, stats: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    r, alpha = 4, 8
    tensors: dict[str, torch.Tensor] = {}
    leaf_names: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            leaf_names.add(name.rsplit(".", 1)[-1])
            tensors[f"base_model.model.{name}.lora_A.weight"] = 0.1 * torch.randn(r, mod.in_features, generator=gen)
            tensors[f"base_model.model.{name}.lora_B.weight"] = 0.1 * torch.randn(mod.out_features, r, generator=gen)
    with atomic_directory(adapter_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        _write_json(
            tmp / ADAPTER_CONFIG,
            {
                "peft_type": "LORA",
                "base_model_name_or_path": str(base_dir.resolve()),
                "r": r,
                "lora_alpha": alpha,
                "lora_dropout": 0.0,
                "target_modules": sorted(leaf_names),
                "bias": "none",
                "fan_in_fan_out": False,
                "use_rslora": False,
                "use_dora": False,
                "init_lora_weights": "gaussian",
                "modules_to_save": None,
                "task_type": None,
                "inference_mode": True,
            },
        )
        _write_json(tmp / STATS_NAME, stats)


def make_tiny_checkpoint(
    out_dir: str | os.PathLike[str],
    *,
    fused: bool = True,
    lora: bool = False,
    action_dim: int = 7,
    seed: int = 0,
    unnorm_key: str = "crane_x7",
    image_size: int = 224,
) -> Path:
    """Write a tiny random checkpoint and return the directory to pass to ``load_vla``.

    With ``lora=True`` ``out_dir`` is a PEFT adapter directory and its base checkpoint is written next to it
    (``<out_dir>-base``), referenced by ``base_model_name_or_path``.
    """
    out = Path(out_dir)
    stats = crane_x7_dataset_statistics(action_dim, unnorm_key)
    # config.norm_stats holds a deliberately different (unit) range: dataset_statistics.json must win over it.
    config_stats = {unnorm_key: {"action": {"q01": [-1.0] * action_dim, "q99": [1.0] * action_dim}}}
    config = OpenVLAConfig.from_dict(tiny_config_dict(fused, image_size, config_stats))
    gen = torch.Generator().manual_seed(seed)
    model = OpenVLA(config, tokenizer=build_llama_style_tokenizer(), norm_stats=stats, unnorm_key=unnorm_key)
    _randomize(model, gen)
    base_dir = out.with_name(out.name + "-base") if lora else out
    save_pretrained(model, base_dir)
    if lora:
        _write_lora(model, out, base_dir, gen, stats)
    return out
