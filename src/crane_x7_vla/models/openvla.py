"""The OpenVLA model: config-driven modules only (vision towers + projector + transformers' Llama).

Attribute names match the published ``OpenVLAForActionPrediction`` (``vision_backbone``, ``projector``,
``language_model``) so checkpoint keys and PEFT adapter module paths load unchanged. The LLM is transformers' own
``LlamaForCausalLM`` built from ``text_config`` (``rms_norm_eps`` read from it, missing -> 1e-6, the LlamaConfig
default that the published checkpoint relies on). Inference/generation lives in :mod:`.generate`; loading and
saving in :mod:`.loading`; the methods here that mention them are thin delegations so callers hold one object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from crane_x7_vla.models.action_tokenizer import ActionTokenizer
from crane_x7_vla.models.base import VLABase, cache_kwarg
from crane_x7_vla.models.config import OpenVLAConfig
from crane_x7_vla.models.normalization import unnormalize
from crane_x7_vla.models.processing import (
    ImageLike,
    ImageTransform,
    ModelInputs,
    build_prompt,
    left_pad,
    prompt_token_ids,
    underline_token_id,
)
from crane_x7_vla.models.vision import VisionBackbone, make_projector

if TYPE_CHECKING:
    pass


def llama_config(text_config: dict[str, Any]) -> LlamaConfig:
    kw = {k: v for k, v in text_config.items() if k not in ("architectures", "model_type", "_name_or_path")}
    kw.setdefault("rms_norm_eps", 1e-6)  # the published config omits it; LlamaConfig's default is what ran
    kw["tie_word_embeddings"] = bool(kw.get("tie_word_embeddings", False))
    cfg = LlamaConfig(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


PROMPT_CACHE_SIZE = 256  # distinct instructions whose prompt ids are kept


class OpenVLA(VLABase):
    def __init__(
        self,
        config: OpenVLAConfig,
        tokenizer: Any = None,
        norm_stats: dict[str, Any] | None = None,
        unnorm_key: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision_backbone = VisionBackbone(config.vision_towers)
        self.projector = make_projector(config.vision_dim, config.llm_hidden_size, config.use_fused_vision_backbone)
        self.language_model = LlamaForCausalLM(llama_config(config.text_config))
        self.tokenizer = tokenizer
        self.norm_stats: dict[str, Any] = dict(config.norm_stats if norm_stats is None else norm_stats)
        self.unnorm_key = unnorm_key
        self.action_tokenizer = ActionTokenizer(config.vocab_size_without_pad, config.n_action_bins)
        self.image_transform = ImageTransform(config.vision_towers, config.image_resize_strategy)
        # v01 checkpoints (Vicuna backbone) use the chat-style prompt.
        self.prompt_style = "v01" if config.llm_backbone_id.startswith("vicuna") else "pure"
        # Prompt ids per instruction: a robot (or a PPO minibatch of 128 samples) repeats a handful of
        # instructions, and tokenizing each one again costs ~50 us of host time per sample.
        self._prompt_ids: dict[str, list[int]] = {}

    def action_token_ids(self) -> Tensor:
        """The vocabulary ids of the action bins, ascending ([n_bins] long, on the model's device)."""
        return torch.from_numpy(self.action_tokenizer.token_ids()).to(self.device)

    # ---------------------------------------------------------------- inputs
    def prepare_inputs(self, images: Sequence[ImageLike], instructions: Sequence[str], *,
                       text_on_device: bool = True) -> ModelInputs:
        """Pixels normalised on the model's device; prompt ids there too, or on the CPU with
        ``text_on_device=False`` (a serving loop lays them out on the host, and a copy back would wait for the GPU)."""
        if self.tokenizer is None:
            raise RuntimeError("this OpenVLA has no tokenizer; load it with load_vla(path)")
        if isinstance(instructions, str):
            raise TypeError("instructions must be a sequence of strings (one per image), not a single string")
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions; pass one of each per sample")
        if len(images) == 0:
            raise ValueError("empty batch: pass at least one image and instruction")
        pixel_values = self.image_transform.batch(images, self.device)  # [B,3T,H,W], normalised on the device
        input_ids, attention_mask = self.prepare_text(instructions)
        inputs = ModelInputs(pixel_values, input_ids, attention_mask)
        return inputs.to(self.device) if text_on_device else inputs

    def prepare_text(self, instructions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Instructions -> left-padded (input_ids [B,L], attention_mask [B,L]) on the CPU."""
        return left_pad([self.prompt_ids(t) for t in instructions], self.config.pad_token_id)

    def prompt_ids(self, instruction: str) -> list[int]:
        """BOS + the prompt of ``instruction`` (+ "▁"): what the model reads before the action tokens, the same
        for inference, RL and SFT (cached per instruction; do not modify the returned list)."""
        ids = self._prompt_ids.get(instruction)
        if ids is None:
            if self.tokenizer is None:
                raise RuntimeError("this OpenVLA has no tokenizer; load it with load_vla(path)")
            ids = prompt_token_ids(self.tokenizer, build_prompt(instruction, self.prompt_style),
                                   underline_token_id(self.tokenizer))
            if len(self._prompt_ids) >= PROMPT_CACHE_SIZE:  # free-text instructions: keep the cache bounded
                self._prompt_ids.clear()
            self._prompt_ids[instruction] = ids
        return ids

    # ---------------------------------------------------------------- forward pieces
    def embed_multimodal(self, inputs: ModelInputs) -> tuple[Tensor, Tensor, Tensor]:
        """[emb(BOS), projected patches, emb(rest)] per row -> (embeds [B,T,H], mask [B,T], position_ids [B,T])."""
        inputs.check_left_padded()
        input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
        patches = self.projector(self.vision_backbone(inputs.pixel_values.to(self.dtype)))  # [B,P,H]
        text = self.language_model.model.embed_tokens(input_ids)  # [B,L,H]
        b, length = input_ids.shape
        p, h = patches.shape[1], patches.shape[2]
        first = attention_mask.argmax(dim=1)  # [B] index of BOS (first real token)
        if bool((first == 0).all()):
            embeds = torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)
            mask = torch.cat([attention_mask[:, :1], attention_mask.new_ones(b, p), attention_mask[:, 1:]], dim=1)
        else:
            # Rows are padded differently: scatter patches into the P slots right after each row's BOS.
            pos = torch.arange(length + p, device=input_ids.device)
            slot = (pos >= first[:, None] + 1) & (pos < first[:, None] + 1 + p)  # [B,T]
            embeds = text.new_empty(b, length + p, h)
            embeds[slot] = patches.reshape(-1, h)
            embeds[~slot] = text.reshape(-1, h)
            mask = attention_mask.new_ones(b, length + p)
            mask[~slot] = attention_mask.reshape(-1)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return embeds, mask, position_ids

    def llm_hidden(
        self, embeds: Tensor, mask: Tensor, position_ids: Tensor, cache: Any = None
    ) -> Tensor:
        """Llama trunk: embeds [B,T,H] -> last-layer (post-norm) hidden states [B,T,H]; fills ``cache`` if given."""
        kwargs: dict[str, Any] = {cache_kwarg(LlamaModel): cache, "use_cache": cache is not None}
        out = self.language_model.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, **kwargs
        )
        return out.last_hidden_state  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- inference API (see generate.py)
    def predict_action(
        self, images: Sequence[ImageLike], instructions: Sequence[str], unnorm_key: str | None = None
    ) -> np.ndarray:
        from crane_x7_vla.models.generate import predict_action

        return predict_action(self, images, instructions, unnorm_key)

    def decode_actions(self, tokens: Tensor | np.ndarray, unnorm_key: str | None = None) -> np.ndarray:
        """Action token ids [B,D] -> unnormalised actions (B, D) float32."""
        t = tokens.detach().cpu().numpy() if isinstance(tokens, Tensor) else np.asarray(tokens)
        stats = self.action_stats(unnorm_key)
        if t.shape[-1] != stats.dim:
            raise ValueError(f"got {t.shape[-1]} action tokens per sample, the norm stats have {stats.dim} dims")
        return unnormalize(self.action_tokenizer.decode(t), stats)
