"""Tiny, randomly initialised MiniVLA checkpoints in the Prismatic layout, for tests, demos and CI (no downloads).

Same file layout, key names and config schema as the published ``Stanford-ILIAD/minivla-*-prismatic`` runs; only
the sizes shrink (OpenVLA's tiny 3-block towers, a 2-layer Qwen2 of width 32 with GQA, QKV bias and tied
embeddings, a VQ with latent 16). The tokenizer is a locally built byte-level BPE (``tokenizers`` library) with
the *real* Qwen2.5 id layout, so tests check the real numbers: 151643 base ids, ``<|endoftext|>`` = 151643,
``<|im_start|>`` = 151644, ``<|im_end|>`` = 151645, 22 specials (len 151665), then ``<|extra_k|>`` = 151665 + k
(len 151921), embedding rows 151936. The action rows of the (tied) LM head are scaled up so greedy decoding lands
on action tokens and actions depend on the image, like a trained model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from crane_x7_vla.models.minivla import MiniVLA
from crane_x7_vla.models.minivla_config import (
    KNOWN_BASE_VLMS,
    KNOWN_LLMS,
    NUM_EXTRA_TOKENS,
    MiniVLAConfig,
    tower_dicts,
)
from crane_x7_vla.models.minivla_loading import add_extra_tokens, save_minivla
from crane_x7_vla.models.tiny import crane_x7_dataset_statistics, tiny_vision_towers
from crane_x7_vla.models.vq import ActionVQ, VQConfig

QWEN_BASE_VOCAB = 151643
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
# The published Qwen2.5-0.5B geometry with tiny widths and depth (ids, RoPE, ties and norms unchanged).
TINY_QWEN_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    **KNOWN_LLMS["qwen25-0_5b-extra"][1],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
VQ_TOKENIZER = "libero_vq_extra_action_tokenizer"
BIN_TOKENIZER = "extra_action_tokenizer"


def build_qwen_style_tokenizer() -> Any:
    """A Qwen2.5-shaped fast tokenizer (byte-level BPE, no BOS) with the real special/extra id layout."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte-level symbols
    vocab: dict[str, int] = {ch: i for i, ch in enumerate(alphabet)}
    merges = [("Ġ", chr(c)) for c in range(97, 123)]  # " a".." z" as single tokens
    for a, b in merges:
        vocab[a + b] = len(vocab)
    while len(vocab) < QWEN_BASE_VOCAB:
        vocab[f"<tiny_{len(vocab)}>"] = len(vocab)  # unreachable placeholders up to the real base size
    for s in QWEN_SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=32768
    )
    fast = add_extra_tokens(fast)
    expected = QWEN_BASE_VOCAB + len(QWEN_SPECIALS) + NUM_EXTRA_TOKENS
    if len(fast) != expected or fast.pad_token_id != QWEN_BASE_VOCAB:
        raise RuntimeError(f"tiny Qwen tokenizer layout is wrong: len {len(fast)} (want {expected}), pad {fast.pad_token_id}")
    return fast


def tiny_minivla_config_dict(
    vq: bool, image_sequence_len: int = 1, use_wrist_image: bool = False, data_mix: str = "crane_x7"
) -> dict[str, Any]:
    return {
        "run_id": "tiny-minivla",
        "seed": 7,
        "vla": {
            "type": "tiny-minivla",
            "vla_id": "tiny-minivla",
            "base_vlm": next(iter(KNOWN_BASE_VLMS)),
            "data_mix": data_mix,
            "action_tokenizer": VQ_TOKENIZER if vq else BIN_TOKENIZER,
            "image_sequence_len": image_sequence_len,
            "use_wrist_image": use_wrist_image,
            # our extension: tiny geometry (published configs name the sizes by registry id only)
            "text_config": dict(TINY_QWEN_TEXT_CONFIG),
            "vision_tower_configs": tower_dicts(tuple(tiny_vision_towers(224, fused=True))),
        },
    }


def _randomize(model: MiniVLA, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("scale_factor"):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                std = 0.5 if ("pos_embed" in name or name.endswith("_token")) else 0.2
                if name.endswith("embed_tokens.weight"):
                    # Small (as a real init) so the layers' outputs outweigh the input embedding: with a tied
                    # head a dominant embedding makes greedy decoding repeat its last token.
                    std = 0.02
                elif name.endswith(("q_proj.weight", "k_proj.weight")):
                    std = 1.0  # peaky attention: a near-uniform average over ~400 positions is input-independent
                p.copy_(std * torch.randn(p.shape, generator=gen))
        # Tied head: make the action-id rows dominate so greedy decoding lands on action ids (256 bins, or the
        # 128 VQ codes). The other rows are left alone: they are also the prompt's input embeddings.
        head = model.language_model.lm_head.weight
        first, n = model.action_tokenizer.first_token_id, model.action_tokenizer.n_bins
        head[first : first + n] *= 20.0


def tiny_action_vq(action_dim: int, gen: torch.Generator, chunk: int = 8) -> ActionVQ:
    """A random VQ (7 codebooks x 128, latent 16) whose decoded chunks stay within [-0.9, 0.9]."""
    vq = ActionVQ(VQConfig(chunk=chunk, action_dim=action_dim, latent_dim=16, n_embed=128, groups=7, hidden_dim=32))
    with torch.no_grad():
        for p in vq.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        probe = torch.randint(0, 128, (512, 7), generator=gen)
        peak = vq.decode_codes(probe).abs().max()
        vq.decoder.fc.weight.mul_(0.9 / peak)
        vq.decoder.fc.bias.mul_(0.9 / peak)
    return vq.eval()


def make_tiny_minivla_checkpoint(
    out_dir: str | os.PathLike[str],
    *,
    vq: bool = False,
    action_dim: int = 7,
    image_sequence_len: int = 1,
    use_wrist_image: bool = False,
    seed: int = 0,
    unnorm_key: str = "crane_x7",
) -> Path:
    """Write a tiny random MiniVLA (Prismatic layout; with ``vq``, its VQ weights in ``<out>/vq/``)."""
    cfg = MiniVLAConfig.from_dict(tiny_minivla_config_dict(vq, image_sequence_len, use_wrist_image, unnorm_key))
    gen = torch.Generator().manual_seed(seed)
    stats = crane_x7_dataset_statistics(action_dim, unnorm_key)
    model = MiniVLA(cfg, build_qwen_style_tokenizer(), norm_stats=stats, unnorm_key=unnorm_key,
                    action_vq=tiny_action_vq(action_dim, gen) if vq else None)
    _randomize(model, gen)
    return save_minivla(model, out_dir)
