"""The VLA actor-critic: a native OpenVLA or MiniVLA with PEFT LoRA adapters plus a value head on the shared backbone.

Design (as RL4VLA / RLinf, which are known to learn):
- the actor is the VLA's own token distribution restricted to its action ids (256 bins for binning
  tokenizers, 128 codes for MiniVLA VQ, counted from ``len(tokenizer)`` by the model); an action's log-prob is
  the sum of its ``num_action_tokens`` token log-probs (binning: one per action dim; VQ: 7 codebook tokens that
  decode to an 8-step chunk), computed by the runtime (``sample_action_tokens`` when acting,
  ``action_token_log_probs`` teacher-forced when updating) at the SAME temperature, so PPO ratios are exact;
- chunked policies act with the FIRST step of each decoded chunk and re-query every env step (the published
  MiniVLA evaluation); the chunk's tokens are the RL action, so its log-prob is that of the whole chunk;
- multi-frame models (MiniVLA history2) get ``[t-1, t]`` per sample: pass image arrays of shape
  (N, history, H, W, 3) (the collector does); wrist-camera models are refused (the simulators give one camera);
- the critic is a small MLP on the LLM hidden state at the position that predicts the first action token,
  i.e. it shares the LoRA backbone with the actor (the value loss also shapes the adapters);
- LoRA is injected in place with ``peft.inject_adapter_in_model`` into every ``nn.Linear`` except ``lm_head``
  (the published OpenVLA recipe) and saved in PEFT's adapter format (``adapter_config.json`` +
  ``adapter_model.safetensors`` with ``base_model.model.`` keys), so the inference runtime can load a
  checkpoint as an ordinary LoRA adapter directory.
- acting can run through the static-cache engine (:meth:`VLAActorCritic.enable_engine`, OpenVLA on CUDA):
  the engine keeps its own copy of the LLM weights with the LoRA deltas merged in, re-merged whenever the
  adapters have changed since the last call (detected from the parameters' in-place version counters), and
  samples with the same restricted, tempered distribution (Gumbel-max), so PPO's stored log-probs describe
  the policy being trained; the update itself always runs the differentiable eager path;
- activation checkpointing of the LLM is opt-in (``gradient_checkpointing=True``): transformers' own
  ``gradient_checkpointing_enable`` with ``use_reentrant=False`` (works with frozen inputs and LoRA), traded
  for one extra LLM forward per update; acting and value calls (no grad) never checkpoint, so their KV cache
  is never dropped. ``crane_x7_vla_rl.memory`` quantifies the saving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crane_x7_vla.inference.settings import model_io

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VALUE_HEAD_WEIGHTS = "value_head.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class ActOutput:
    """One batched policy step."""

    tokens: torch.Tensor  # [N, K] long, sampled action tokens (K = the model's num_action_tokens)
    log_prob: torch.Tensor  # [N] sum of the K token log-probs
    entropy: torch.Tensor  # [N] sum of the K token entropies (restricted to the action ids)
    value: torch.Tensor  # [N] V(s)


@dataclass(frozen=True)
class EvalOutput:
    """Teacher-forced re-evaluation of stored actions (differentiable)."""

    log_prob: torch.Tensor  # [B]
    entropy: torch.Tensor  # [B]
    value: torch.Tensor  # [B]


class ValueHead(nn.Module):
    """Hidden state [B, H] -> value [B]; the last layer starts at zero so V starts at 0 (no early bias)."""

    def __init__(self, hidden_size: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, H] -> [B]
        return self.net(hidden.float()).squeeze(-1)


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear except the LM head (OpenVLA's "all-linear" recipe)."""
    return [name for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name.split(".")[-1] != "lm_head"]


class VLAActorCritic(nn.Module):
    """Wraps a loaded runtime VLA (``crane_x7_vla.models``); only LoRA and the value head are trainable."""

    def __init__(self, vla: nn.Module, *, lora_rank: int, lora_alpha: int, lora_dropout: float = 0.0,
                 value_head_hidden: int = 512, base_source: str = "",
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        io = model_io(vla)  # the same reading of the model's inputs/outputs the inference service uses
        if io.wrist:
            raise ValueError(
                "this MiniVLA takes [third_person, wrist] images, but RL observations carry one camera "
                "(rollout.camera); fine-tune a single-camera checkpoint (minivla-*, -vq- or -history2-) instead")
        for p in vla.parameters():
            p.requires_grad_(False)
        targets = lora_target_modules(vla)
        if not targets:
            raise ValueError("VLAActorCritic: the model has no nn.Linear layers to put LoRA adapters on")
        self.lora_config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                      target_modules=targets, bias="none",
                                      base_model_name_or_path=base_source or None)
        self.vla = inject_adapter_in_model(self.lora_config, vla)
        # peft creates the adapters in the base dtype (bf16 on GPU); at lr 1e-5 bf16 weights round the updates
        # away, so keep LoRA weights (and hence AdamW state) in fp32. peft casts inputs to the adapter dtype and
        # autocast keeps the matmuls in bf16.
        for p in self.lora_parameters():
            p.data = p.data.float()
        # peft's LoRA layers that can skip casting their input to the adapter dtype (peft >= 0.15)
        self._lora_layers = [m for m in self.vla.modules()
                             if hasattr(m, "lora_A") and hasattr(m, "cast_input_dtype_enabled")]
        hidden = _hidden_size(vla)
        ref = next(vla.parameters())
        self.value_head = ValueHead(hidden, value_head_hidden).to(ref.device)
        self.action_dim = int(getattr(vla, "action_dim", 0) or 0)
        # Tokens per RL action: never assumed equal to action_dim (VQ: 7 tokens -> an 8 x action_dim chunk).
        self.num_action_tokens = int(getattr(vla, "num_action_tokens", 0) or self.action_dim)
        self.chunk_size = io.chunk_size  # actions decoded per query; step 0 is run
        self.history = io.history  # frames per sample, oldest first
        self.gradient_checkpointing = False
        if gradient_checkpointing:
            self.set_gradient_checkpointing(True)
        self._engine: Any = None
        self._engine_version = -1

    def enable_engine(self, batch: int, use_cuda_graphs: bool | None = None) -> None:
        """Act (sample, greedy) through :class:`~crane_x7_vla.models.engine.OpenVLAEngine` with every call padded
        to ``batch`` rows, so one static graph serves a whole rollout while envs finish at different steps.

        Raises ``ValueError`` for models the engine does not support (MiniVLA's Qwen LLM, biased layers)."""
        from crane_x7_vla.models.engine import OpenVLAEngine
        from crane_x7_vla.models.openvla import OpenVLA

        if not isinstance(self.vla, OpenVLA):
            raise ValueError(f"the engine runs OpenVLA (Llama) models only, not {type(self.vla).__name__}; "
                             "set rollout.engine: off")
        # The vision towers stay eager here: the trainer's forward runs them eagerly, and the rollout path with
        # compiled towers has not been measured in a learning run.
        self._engine = OpenVLAEngine(self.vla, max_batch=max(batch, 1), min_batch=batch, exact_batch_upto=0,
                                     use_cuda_graphs=use_cuda_graphs, compile_vision=False)
        self._engine_version = self._lora_version()

    @property
    def engine_enabled(self) -> bool:
        return self._engine is not None

    def _lora_version(self) -> int:
        # Every in-place write (optimizer step, load_state_dict) bumps a tensor's version counter.
        return sum(p._version for p in self.lora_parameters())

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the LLM's decoder layers in backward (saves ~90% of its activations; vision towers unchanged)."""
        llm = getattr(self.vla, "language_model", None)
        if llm is None or not hasattr(llm, "gradient_checkpointing_enable"):
            raise ValueError("gradient_checkpointing needs a VLA whose `language_model` is a transformers "
                             f"PreTrainedModel; {type(self.vla).__name__} has none: leave it off")
        # transformers >= 5.2x renamed the API to activation_checkpointing_*; older 5.x only has gradient_*.
        if enabled and hasattr(llm, "activation_checkpointing_enable"):
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enabled:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            (getattr(llm, "activation_checkpointing_disable", None) or llm.gradient_checkpointing_disable)()
        self.gradient_checkpointing = enabled

    @contextmanager
    def _no_checkpointing(self) -> Iterator[None]:
        # Some transformers releases drop the KV cache of a checkpointing layer in training mode even without
        # grad; sampling needs the cache, and checkpointing is pointless without a backward pass.
        layers = [m for m in self.vla.modules() if getattr(m, "gradient_checkpointing", False) is True]
        for m in layers:
            setattr(m, "gradient_checkpointing", False)  # noqa: B010 (an nn.Module attribute mypy cannot see)
        try:
            yield
        finally:
            for m in layers:
                setattr(m, "gradient_checkpointing", True)  # noqa: B010

    def _match_lora_input_cast(self, device: torch.device) -> None:
        """Cast each adapter's input to the fp32 LoRA weights' dtype only where it is needed.

        Under autocast, peft's cast is pure overhead: autocast casts the fp32 copy straight back to bf16 for the
        adapter's matmul (bf16 -> fp32 -> bf16 is exact, so outputs and gradients are bit-identical either way),
        and it costs two full-size activation copies per adapted layer, forward and backward. Outside autocast
        (fp32 on CPU, or a bf16 model run without autocast) the cast is what makes the dtypes match, so it stays.
        """
        cast = not torch.is_autocast_enabled(device.type)
        # the layers are always switched together, so the first one tells their state
        if self._lora_layers and self._lora_layers[0].cast_input_dtype_enabled != cast:
            for m in self._lora_layers:
                setattr(m, "cast_input_dtype_enabled", cast)  # noqa: B010 (a peft attribute mypy cannot see)

    # --- acting / evaluating -----------------------------------------------------------------------------
    def prepare(self, images: Sequence[np.ndarray] | np.ndarray, instructions: Sequence[str]) -> Any:
        """images: (N, H, W, 3) uint8, or (N, history, H, W, 3) for multi-frame models (oldest frame first).

        Every forward of the policy (act, value, evaluate_actions) starts here."""
        device = next(self.value_head.parameters()).device
        self._match_lora_input_cast(device)
        samples: list[Any] = ([list(x) for x in images] if isinstance(images, np.ndarray) and images.ndim == 5
                              else list(images))
        return self.vla.prepare_inputs(samples, list(instructions)).to(device)  # type: ignore[operator]

    @torch.no_grad()
    def act(self, images: Sequence[np.ndarray] | np.ndarray, instructions: Sequence[str], temperature: float,
            generator: torch.Generator | None = None) -> ActOutput:
        inputs = self.prepare(images, instructions)
        if self._engine is not None:
            version = self._lora_version()
            if version != self._engine_version:
                self._engine.refresh_weights()
                self._engine_version = version
            out = self._engine.sample(inputs, temperature, generator)
        else:
            with self._no_checkpointing():
                out = self.vla.sample_action_tokens(inputs, temperature, generator=generator)  # type: ignore[operator]
        return ActOutput(tokens=out.tokens, log_prob=out.log_probs.float().sum(-1),
                         entropy=out.entropy.float().sum(-1), value=self.value_head(out.hidden))

    @torch.no_grad()
    def value(self, images: Sequence[np.ndarray] | np.ndarray, instructions: Sequence[str]) -> torch.Tensor:
        """V(s) [N] from one prefill (no action tokens are generated)."""
        inputs = self.prepare(images, instructions)
        with self._no_checkpointing():
            embeds, mask, pos = self.vla.embed_multimodal(inputs)  # type: ignore[operator]
            hidden = self.vla.llm_hidden(embeds, mask, pos)[:, -1]  # type: ignore[operator]  # [N, H]
        return self.value_head(hidden)

    def evaluate_actions(self, images: Sequence[np.ndarray] | np.ndarray, instructions: Sequence[str],
                         tokens: torch.Tensor, temperature: float) -> EvalOutput:
        inputs = self.prepare(images, instructions)
        out = self.vla.action_token_log_probs(inputs, tokens, temperature)  # type: ignore[operator]
        return EvalOutput(log_prob=out.log_probs.float().sum(-1), entropy=out.entropy.float().sum(-1),
                          value=self.value_head(out.hidden))

    def decode_actions(self, tokens: torch.Tensor) -> np.ndarray:
        """Tokens [N, K] -> the action the env executes (N, action_dim): step 0 of chunked models' chunks."""
        return np.asarray(self.vla.decode_actions(tokens))  # type: ignore[operator]

    # --- parameters / persistence --------------------------------------------------------------------------
    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.vla.named_parameters() if "lora_" in n and p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.vla)
        return {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save_adapter(self, directory: Path) -> None:
        """Write the PEFT adapter (loadable by the runtime as a LoRA dir) and the value head."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state_dict(), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        cfg = self.lora_config.to_dict()
        cfg["target_modules"] = sorted(cfg["target_modules"] or [])
        cfg["peft_type"] = "LORA"
        (directory / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        vh = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(vh, str(directory / VALUE_HEAD_WEIGHTS))

    def load_adapter(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = directory / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} holds no {ADAPTER_WEIGHTS}: not a crane_x7_vla_rl checkpoint")
        device = next(self.value_head.parameters()).device
        state = {k.removeprefix(PEFT_PREFIX): v.to(device) for k, v in load_file(str(weights)).items()}
        result = set_peft_model_state_dict(self.vla, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"{weights}: {len(unexpected)} adapter keys do not fit this model "
                             f"(e.g. {unexpected[0]!r}); was it trained from a different base checkpoint?")
        vh = directory / VALUE_HEAD_WEIGHTS
        if vh.is_file():
            self.value_head.load_state_dict({k: v.to(device) for k, v in load_file(str(vh)).items()})


def _hidden_size(vla: nn.Module) -> int:
    for attr in ("hidden_size", "llm_hidden_size"):
        v = getattr(vla, attr, None)
        if isinstance(v, int):
            return v
    cfg = getattr(vla, "config", None)
    for attr in ("llm_hidden_size", "hidden_size"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    raise ValueError("cannot find the VLA's LLM hidden size (expected model.config.llm_hidden_size)")
