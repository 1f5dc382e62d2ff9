"""Action-token generation on a :class:`~crane_x7_vla.models.minivla.MiniVLA`: greedy, sampled, teacher-forced.

The same scheme and conventions as :mod:`.generate` (OpenVLA), whose :class:`~.generate.SampleOutput` and
temperature handling (:func:`~.generate._tempered`) are reused: one prefill over
``[<|im_start|>, patches, prompt]`` then ``num_action_tokens - 1`` KV-cached steps. The differences are the token
count (``num_action_tokens``: action dims for binning, codebooks for VQ, which need not equal ``action_dim``) and
the action-id range (256 bins, or the 128 VQ codes ``<|extra_128..255|>``). RL sampling and log-probs use only the
``lm_head`` rows of that range (exactly the restricted softmax); the greedy ``predict_action_tokens`` takes the
argmax over the full vocabulary as the release does (a stray id decodes through the clip).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from crane_x7_vla.models.generate import SampleOutput, _tempered
from crane_x7_vla.models.processing import ModelInputs

if TYPE_CHECKING:
    from crane_x7_vla.models.minivla import MiniVLA


def _action_logits(model: MiniVLA, hidden: Tensor) -> Tensor:
    """hidden [..., H] -> logits over the action ids only [..., n_bins] (ascending id)."""
    first, n = model.action_tokenizer.first_token_id, model.action_tokenizer.n_bins
    w = model.language_model.lm_head.weight[first : first + n]  # [n_bins, H]
    return F.linear(hidden, w).float()


def _decode_loop(model: MiniVLA, inputs: ModelInputs, pick: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Prefill + cached steps; ``pick(hidden [B,H]) -> ids [B]`` -> (tokens [B, num_action_tokens], first hidden [B,H])."""
    steps = model.num_action_tokens
    embeds, mask, pos = model.embed_multimodal(inputs)
    cache = DynamicCache(config=model.language_model.config)
    hidden = model.llm_hidden(embeds, mask, pos, cache)[:, -1]  # [B,H]
    first_hidden = hidden
    embed = model.language_model.model.embed_tokens
    tokens: list[Tensor] = []
    for step in range(steps):
        tok = pick(hidden)
        tokens.append(tok)
        if step == steps - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[:, -1:] + 1
        hidden = model.llm_hidden(embed(tok[:, None]), mask, pos, cache)[:, -1]
    return torch.stack(tokens, dim=1), first_hidden


@torch.inference_mode()
def predict_action_tokens(model: MiniVLA, inputs: ModelInputs) -> Tensor:
    """Greedy over the full vocabulary -> action token ids [B, num_action_tokens]."""
    lm_head = model.language_model.lm_head
    tokens, _ = _decode_loop(model, inputs, lambda h: lm_head(h).argmax(dim=-1))
    return tokens


@torch.no_grad()
def sample_action_tokens(
    model: MiniVLA, inputs: ModelInputs, temperature: float, generator: torch.Generator | None = None
) -> SampleOutput:
    """Sample from the action ids only at ``temperature`` (0 = greedy; log-probs then at T = 1)."""
    first = model.action_tokenizer.first_token_id
    log_probs: list[Tensor] = []
    entropies: list[Tensor] = []

    def pick(h: Tensor) -> Tensor:
        logits = _action_logits(model, h)  # [B,n_bins]
        logp, ent = _tempered(logits, temperature)
        if temperature == 0:
            idx = logits.argmax(dim=-1)
        else:
            idx = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        log_probs.append(logp.gather(-1, idx[:, None]).squeeze(-1))
        entropies.append(ent)
        return idx + first

    tokens, hidden = _decode_loop(model, inputs, pick)
    return SampleOutput(tokens, torch.stack(log_probs, dim=1), torch.stack(entropies, dim=1), hidden)


def action_token_log_probs(model: MiniVLA, inputs: ModelInputs, tokens: Tensor, temperature: float) -> SampleOutput:
    """Teacher-forced log-probs of ``tokens`` [B, num_action_tokens] in one forward pass (differentiable)."""
    first, n = model.action_tokenizer.first_token_id, model.action_tokenizer.n_bins
    d = model.num_action_tokens
    if tokens.ndim != 2 or tokens.shape != (inputs.batch_size, d):
        raise ValueError(f"tokens must be [B={inputs.batch_size}, {d}], got {tuple(tokens.shape)}")
    tokens = tokens.to(inputs.input_ids.device)
    if bool(((tokens < first) | (tokens >= first + n)).any()):
        raise ValueError(f"tokens must be action-token ids in [{first}, {first + n}); got others")
    ids = torch.cat([inputs.input_ids, tokens[:, :-1]], dim=1)  # [B, L+D-1]
    am = torch.cat([inputs.attention_mask, inputs.attention_mask.new_ones(tokens.shape[0], d - 1)], dim=1)
    embeds, mask, pos = model.embed_multimodal(ModelInputs(inputs.pixel_values, ids, am))
    hidden = model.llm_hidden(embeds, mask, pos)[:, -d:]  # [B,D,H]: position t predicts token t
    logp, ent = _tempered(_action_logits(model, hidden), temperature)  # [B,D,n_bins], [B,D]
    lp = logp.gather(-1, (tokens - first)[..., None]).squeeze(-1)
    return SampleOutput(tokens, lp, ent, hidden[:, 0])
