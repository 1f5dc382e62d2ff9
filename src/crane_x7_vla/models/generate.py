"""Action generation for every VLA module (OpenVLA, MiniVLA): greedy predict, sampling, teacher forcing.

One prefill over the model's multimodal sequence (OpenVLA ``[BOS, patches, prompt]``, MiniVLA
``[<|im_start|>, patches, prompt]``; left-padded batch, contiguous per-row positions) then
``num_action_tokens - 1`` KV-cached single-token steps (transformers' ``DynamicCache``). The model supplies
``embed_multimodal``, ``llm_hidden``, ``action_tokenizer`` (first id, number of ids) and ``num_action_tokens``
(action dims for binning tokenizers, codebooks for VQ). Logits are computed only where
needed: the full vocabulary for the greedy ``predict_action`` (the published behaviour: a non-action argmax is
decoded with the clip), and only the 256 action rows of ``lm_head`` for RL sampling and log-probs, which is both
cheaper and exactly the restricted softmax (other logits masked to -inf).

Temperature convention: ``temperature > 0`` samples from ``softmax(logits / T)`` and reports log-probs/entropy of
that distribution; ``temperature == 0`` is greedy and reports them at T = 1. Sampling and teacher forcing share
:func:`action_logits` so their log-probs agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from crane_x7_vla.models.processing import ImageLike, ModelInputs

if TYPE_CHECKING:
    from crane_x7_vla.models.minivla import MiniVLA
    from crane_x7_vla.models.openvla import OpenVLA

VLA: TypeAlias = "OpenVLA | MiniVLA"


@dataclass
class SampleOutput:
    tokens: Tensor  # [B,D] long, vocabulary ids of the action tokens
    log_probs: Tensor  # [B,D] per-token log-prob under the (restricted, tempered) policy
    entropy: Tensor  # [B,D] entropy of each token's restricted distribution
    hidden: Tensor  # [B,H] last-layer hidden state at the position predicting the first action token


def action_logits(model: VLA, hidden: Tensor) -> Tensor:
    """hidden [..., H] -> logits over the action bins only [..., n_bins] (ascending token id)."""
    first = model.action_tokenizer.first_token_id
    w = model.language_model.lm_head.weight[first : first + model.action_tokenizer.n_bins]  # [n_bins, H]
    return F.linear(hidden, w).float()


def log_probs_and_entropy(logits: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """-> (log_probs, entropy) of softmax(logits / temperature); a tensor temperature keeps it graph-capturable."""
    logp = F.log_softmax(logits / temperature, dim=-1)
    return logp, -(logp.exp() * logp).sum(dim=-1)


def _tempered(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """-> (log_probs, entropy) of softmax(logits / T) (T=1 when greedy)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return log_probs_and_entropy(logits, temperature if temperature > 0 else 1.0)


def _new_cache(model: VLA) -> DynamicCache:
    return DynamicCache(config=model.language_model.config)


def _decode_loop(
    model: VLA, inputs: ModelInputs, steps: int, pick: object
) -> tuple[list[Tensor], Tensor]:
    """Prefill + ``steps-1`` cached steps; ``pick(hidden [B,H]) -> token ids [B]`` chooses each token."""
    embeds, mask, pos = model.embed_multimodal(inputs)
    cache = _new_cache(model)
    hidden = model.llm_hidden(embeds, mask, pos, cache)[:, -1]  # [B,H]
    first_hidden = hidden
    tokens: list[Tensor] = []
    embed = model.language_model.model.embed_tokens
    for step in range(steps):
        tok = pick(hidden)  # type: ignore[operator]
        tokens.append(tok)
        if step == steps - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[:, -1:] + 1
        hidden = model.llm_hidden(embed(tok[:, None]), mask, pos, cache)[:, -1]
    return tokens, first_hidden


@torch.inference_mode()
def greedy_action_tokens(model: VLA, inputs: ModelInputs) -> Tensor:
    """Greedy over the full vocabulary (as the release; a stray id decodes through the clip) -> ids [B, T]."""
    lm_head = model.language_model.lm_head
    tokens, _ = _decode_loop(model, inputs, model.num_action_tokens, lambda h: lm_head(h).argmax(dim=-1))
    return torch.stack(tokens, dim=1)


@torch.inference_mode()
def predict_action(
    model: OpenVLA, images: Sequence[ImageLike], instructions: Sequence[str], unnorm_key: str | None = None
) -> np.ndarray:
    """Greedy -> unnormalised actions (B, D) float32."""
    model.action_stats(unnorm_key)  # fail early on a bad key
    return model.decode_actions(greedy_action_tokens(model, model.prepare_inputs(images, instructions)), unnorm_key)


@torch.no_grad()
def sample_action_tokens(
    model: VLA, inputs: ModelInputs, temperature: float, generator: torch.Generator | None = None
) -> SampleOutput:
    """Sample from the action ids only at ``temperature`` (0 = greedy; log-probs then at T = 1)."""
    dim = model.num_action_tokens
    first = model.action_tokenizer.first_token_id
    log_probs: list[Tensor] = []
    entropies: list[Tensor] = []

    def pick(h: Tensor) -> Tensor:
        logits = action_logits(model, h)  # [B,n_bins]
        logp, ent = _tempered(logits, temperature)
        if temperature == 0:
            idx = logits.argmax(dim=-1)
        else:
            idx = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        log_probs.append(logp.gather(-1, idx[:, None]).squeeze(-1))
        entropies.append(ent)
        return idx + first

    tokens, hidden = _decode_loop(model, inputs, dim, pick)
    return SampleOutput(
        torch.stack(tokens, dim=1), torch.stack(log_probs, dim=1), torch.stack(entropies, dim=1), hidden
    )


def action_token_log_probs(model: VLA, inputs: ModelInputs, tokens: Tensor, temperature: float) -> SampleOutput:
    """Teacher-forced log-probs of ``tokens`` [B, num_action_tokens] in one forward pass (differentiable)."""
    first, n_bins = model.action_tokenizer.first_token_id, model.action_tokenizer.n_bins
    d = model.num_action_tokens
    if tokens.ndim != 2 or tuple(tokens.shape) != (inputs.batch_size, d):
        raise ValueError(f"tokens must be [B={inputs.batch_size}, {d}], got {tuple(tokens.shape)}")
    tokens = tokens.to(inputs.input_ids.device)
    if bool(((tokens < first) | (tokens >= first + n_bins)).any()):
        raise ValueError(f"tokens must be action-token ids in [{first}, {first + n_bins}); got others")
    ids = torch.cat([inputs.input_ids, tokens[:, :-1]], dim=1)  # [B, L+D-1]
    am = torch.cat([inputs.attention_mask, inputs.attention_mask.new_ones(tokens.shape[0], d - 1)], dim=1)
    embeds, mask, pos = model.embed_multimodal(ModelInputs(inputs.pixel_values, ids, am))
    hidden = model.llm_hidden(embeds, mask, pos)[:, -d:]  # [B,D,H]: position t predicts token t
    logp, ent = _tempered(action_logits(model, hidden), temperature)  # [B,D,n_bins], [B,D]
    lp = logp.gather(-1, (tokens - first)[..., None]).squeeze(-1)
    return SampleOutput(tokens, lp, ent, hidden[:, 0])
