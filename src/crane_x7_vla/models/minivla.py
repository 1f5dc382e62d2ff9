"""The MiniVLA model: config-driven modules only (OpenVLA's vision towers + projector + transformers' Qwen2).

Same attribute names as :class:`~crane_x7_vla.models.openvla.OpenVLA` (``vision_backbone`` with ``featurizer`` /
``fused_featurizer``, ``projector.fc1..3``, ``language_model``) and the same public API (``prepare_inputs``,
``predict_action``, ``sample_action_tokens``, ``action_token_log_probs``, ``decode_actions``, ``action_token_ids``,
``action_dim``, ``norm_stats``, ``embed_multimodal``, ``llm_hidden``), so the inference service and the RL policy
take either model. What differs is data, not code paths: a Qwen2.5 LLM (QKV bias, tied embeddings), the Qwen chat
prompt with patches after its first token (no BOS), action ids counted from ``len(tokenizer)``, several images per
sample, and (VQ variants) 7 residual-VQ code tokens that decode to an 8-step chunk. Prismatic key names are mapped
in :mod:`.minivla_loading`; generation lives in :mod:`.generate` (shared with OpenVLA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from crane_x7_vla.models.action_tokenizer import ActionTokenizer
from crane_x7_vla.models.base import VLABase, cache_kwarg
from crane_x7_vla.models.minivla_config import MiniVLAConfig
from crane_x7_vla.models.minivla_processing import SampleImages, qwen_prompt_ids, sample_frames
from crane_x7_vla.models.normalization import unnormalize
from crane_x7_vla.models.processing import ImageTransform, ModelInputs, left_pad
from crane_x7_vla.models.vision import VisionBackbone, make_projector
from crane_x7_vla.models.vq import ActionVQ, VQActionTokenizer

if TYPE_CHECKING:
    pass


def qwen2_config(text_config: dict[str, Any]) -> Qwen2Config:
    kw = {k: v for k, v in text_config.items() if k not in ("architectures", "model_type", "_name_or_path")}
    kw.setdefault("rms_norm_eps", 1e-6)
    kw["tie_word_embeddings"] = bool(kw.get("tie_word_embeddings", True))  # Qwen2.5-0.5B ties lm_head
    cfg = Qwen2Config(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def splice_patches(text: Tensor, attention_mask: Tensor, patches: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Insert patches after each row's first real token of a LEFT-padded batch.

    text [B,L,H], attention_mask [B,L], patches [B,P,H] -> (embeds [B,L+P,H], mask [B,L+P], position_ids [B,L+P])
    with positions 0.. contiguous from each row's first real token (pads get 0).
    """
    b, length, h = text.shape
    p = patches.shape[1]
    first = attention_mask.argmax(dim=1)  # [B] first real token
    pos = torch.arange(length + p, device=text.device)
    slot = (pos >= first[:, None] + 1) & (pos < first[:, None] + 1 + p)  # [B,L+P] patch slots
    embeds = text.new_empty(b, length + p, h)
    embeds[slot] = patches.reshape(-1, h).to(text.dtype)
    embeds[~slot] = text.reshape(-1, h)
    mask = attention_mask.new_ones(b, length + p)
    mask[~slot] = attention_mask.reshape(-1)
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return embeds, mask, position_ids


class MiniVLA(VLABase):
    def __init__(
        self,
        config: MiniVLAConfig,
        tokenizer: Any,
        norm_stats: dict[str, Any] | None = None,
        unnorm_key: str | None = None,
        action_vq: ActionVQ | None = None,
    ) -> None:
        super().__init__()
        if tokenizer is None:
            raise ValueError("MiniVLA needs its tokenizer: action ids are counted from len(tokenizer)")
        self.config = config
        self.vision_backbone = VisionBackbone(config.vision_towers)
        self.projector = make_projector(config.vision_dim, config.llm_hidden_size, config.use_fused_vision_backbone)
        self.language_model = Qwen2ForCausalLM(qwen2_config(config.text_config))
        self.tokenizer = tokenizer
        self.norm_stats: dict[str, Any] = dict(norm_stats or {})
        self.unnorm_key = unnorm_key
        self.image_transform = ImageTransform(config.vision_towers, config.image_resize_strategy)
        vocab = len(tokenizer)
        if vocab > int(config.text_config["vocab_size"]):
            raise ValueError(f"len(tokenizer) {vocab} exceeds the LLM vocab_size {config.text_config['vocab_size']}")
        self.action_tokenizer: ActionTokenizer | VQActionTokenizer
        if config.action_kind == "vq":
            if action_vq is None:
                raise ValueError(f"action_tokenizer {config.action_tokenizer!r} needs the VQ weights (action_vq=)")
            self.action_tokenizer = VQActionTokenizer(vocab, action_vq.config.n_embed)
        else:
            self.action_tokenizer = ActionTokenizer(vocab, config.n_action_bins)
        # Kept out of the module tree on purpose: the VQ decoder is a post-processing step on token ids (run on
        # the CPU in fp32), not part of the policy network, so LoRA/PEFT and .to(dtype) must not touch it.
        self.__dict__["action_vq"] = action_vq

    action_vq: ActionVQ | None

    @property
    def num_action_tokens(self) -> int:
        """Tokens generated per query: one per action dim (binning) or one per VQ codebook."""
        return self.action_vq.config.groups if self.action_vq is not None else self.action_dim

    @property
    def chunk_size(self) -> int:
        """Actions per query: the VQ chunk length (8), or 1 for binning models."""
        return self.action_vq.config.chunk if self.action_vq is not None else 1

    def action_token_ids(self) -> Tensor:
        """The vocabulary ids the action tokens can take, ascending ([n_bins] long, on the model's device)."""
        return torch.from_numpy(self.action_tokenizer.token_ids()).to(self.device)

    # ---------------------------------------------------------------- inputs
    def prepare_inputs(self, images: Sequence[SampleImages], instructions: Sequence[str]) -> ModelInputs:
        """Per sample: one image or the model's frames (history2 [t-1, t], wrist [third_person, wrist])."""
        if isinstance(instructions, str):
            raise TypeError("instructions must be a sequence of strings (one per sample), not a single string")
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} samples of images but {len(instructions)} instructions")
        if len(images) == 0:
            raise ValueError("empty batch: pass at least one image and instruction")
        cfg = self.config
        pixel_values = torch.stack(
            [
                torch.cat([self.image_transform(f) for f in sample_frames(s, cfg.image_sequence_len, cfg.use_wrist_image)])
                for s in images
            ]
        )  # [B, 6*N, H, W]
        input_ids, attention_mask = self.prepare_text(instructions)
        return ModelInputs(pixel_values, input_ids, attention_mask).to(self.device)

    def prepare_text(self, instructions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Instructions -> left-padded (input_ids [B,L], attention_mask [B,L]) on the CPU."""
        ids = [qwen_prompt_ids(self.tokenizer, t) for t in instructions]
        return left_pad(ids, int(self.tokenizer.pad_token_id))

    # ---------------------------------------------------------------- forward pieces
    def embed_images(self, pixel_values: Tensor) -> Tensor:
        """pixel_values [B, 6*N, H, W] -> projected patches [B, N*P, H], frames in order."""
        per = 3 * len(self.config.vision_towers)
        b, c = pixel_values.shape[:2]
        if c != per * self.config.num_images:
            raise ValueError(
                f"pixel_values has {c} channels; this MiniVLA takes {self.config.num_images} image(s) of {per} "
                "channels each (build inputs with prepare_inputs)"
            )
        frames = pixel_values.reshape(b * self.config.num_images, per, *pixel_values.shape[2:])
        feats = self.vision_backbone(frames.to(self.dtype))  # [B*N, P, Dv]
        feats = feats.reshape(b, -1, feats.shape[-1])  # [B, N*P, Dv]
        return self.projector(feats)  # type: ignore[no-any-return]

    def embed_multimodal(self, inputs: ModelInputs) -> tuple[Tensor, Tensor, Tensor]:
        """[emb(<|im_start|>), patches of every frame, emb(rest)] -> (embeds [B,T,H], mask [B,T], position_ids [B,T])."""
        inputs.check_left_padded()
        input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
        patches = self.embed_images(inputs.pixel_values)
        text = self.language_model.model.embed_tokens(input_ids)  # [B,L,H]
        return splice_patches(text, attention_mask, patches)

    def llm_hidden(self, embeds: Tensor, mask: Tensor, position_ids: Tensor, cache: Any = None) -> Tensor:
        """Qwen2 trunk: embeds [B,T,H] -> last-layer (post-norm) hidden states [B,T,H]; fills ``cache`` if given."""
        kwargs: dict[str, Any] = {cache_kwarg(Qwen2Model): cache, "use_cache": cache is not None}
        out = self.language_model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, **kwargs)
        return out.last_hidden_state  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- inference API (see generate.py)
    def predict_action_chunk(
        self, images: Sequence[SampleImages], instructions: Sequence[str], unnorm_key: str | None = None
    ) -> np.ndarray:
        """Greedy -> unnormalised action chunk (B, chunk_size, action_dim) float32."""
        return self.predict_chunk_from_inputs(self.prepare_inputs(images, instructions), unnorm_key)

    def predict_chunk_from_inputs(self, inputs: ModelInputs, unnorm_key: str | None = None) -> np.ndarray:
        """Greedy chunk (B, chunk_size, action_dim) for inputs from ``prepare_inputs`` (lets callers time the two)."""
        from crane_x7_vla.models.generate import greedy_action_tokens

        return self.decode_action_chunk(greedy_action_tokens(self, inputs), unnorm_key)

    def predict_action(
        self, images: Sequence[SampleImages], instructions: Sequence[str], unnorm_key: str | None = None
    ) -> np.ndarray:
        """(B, action_dim): the first step of the chunk (the published evaluation executes only that one)."""
        return self.predict_action_chunk(images, instructions, unnorm_key)[:, 0]

    def decode_action_chunk(self, tokens: Tensor | np.ndarray, unnorm_key: str | None = None) -> np.ndarray:
        """Action token ids [B, num_action_tokens] -> unnormalised chunk (B, chunk_size, action_dim) float32."""
        t = tokens.detach().cpu().numpy() if isinstance(tokens, Tensor) else np.asarray(tokens)
        stats = self.action_stats(unnorm_key)
        if t.ndim != 2 or t.shape[-1] != self.num_action_tokens:
            raise ValueError(f"expected action tokens [B, {self.num_action_tokens}], got shape {t.shape}")
        if self.action_vq is None:
            assert isinstance(self.action_tokenizer, ActionTokenizer)
            norm = self.action_tokenizer.decode(t)[:, None, :]  # [B,1,D]
        else:
            assert isinstance(self.action_tokenizer, VQActionTokenizer)
            if self.action_vq.config.action_dim != stats.dim:
                raise ValueError(
                    f"the VQ decodes {self.action_vq.config.action_dim}-dim actions but the norm stats have "
                    f"{stats.dim} dims; use the VQ weights trained for this dataset"
                )
            codes = torch.from_numpy(self.action_tokenizer.ids_to_codes(t))
            with torch.no_grad():
                norm = self.action_vq.decode_codes(codes.to(next(self.action_vq.parameters()).device)).cpu().numpy()
        return unnormalize(norm, stats)

    def decode_actions(self, tokens: Tensor | np.ndarray, unnorm_key: str | None = None) -> np.ndarray:
        """Action token ids [B, num_action_tokens] -> the first action of each chunk (B, action_dim) float32."""
        return self.decode_action_chunk(tokens, unnorm_key)[:, 0]
