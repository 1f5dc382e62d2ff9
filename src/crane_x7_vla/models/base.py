"""What every VLA policy module shares (OpenVLA, MiniVLA): device/dtype, action statistics, token counts."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from crane_x7_vla.models.normalization import ActionStats, select_unnorm_key

if TYPE_CHECKING:
    from crane_x7_vla.models.generate import SampleOutput
    from crane_x7_vla.models.processing import ModelInputs


@functools.cache
def cache_kwarg(model_cls: type) -> str:
    """The name a transformers decoder's ``forward`` uses for the KV cache (5.x renamed past_key_values -> cache
    in some releases; accept either)."""
    params = inspect.signature(model_cls.forward).parameters  # type: ignore[attr-defined]
    return "cache" if "cache" in params else "past_key_values"


class VLABase(nn.Module):
    """Mixin for VLA modules holding ``norm_stats`` / ``unnorm_key``; generation in :mod:`.generate` uses it."""

    norm_stats: dict[str, Any]
    unnorm_key: str | None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def action_stats(self, unnorm_key: str | None = None) -> ActionStats:
        key = select_unnorm_key(self.norm_stats, unnorm_key or self.unnorm_key)
        return ActionStats.from_stats(self.norm_stats[key], key)

    @property
    def action_dim(self) -> int:
        """Dimensions of one action (from the norm stats)."""
        return self.action_stats().dim

    @property
    def num_action_tokens(self) -> int:
        """Tokens generated per action: one per dimension for binning tokenizers (VQ models override)."""
        return self.action_dim

    # RL API, shared: the math lives in :mod:`.generate`.
    def sample_action_tokens(
        self, inputs: ModelInputs, temperature: float, generator: torch.Generator | None = None
    ) -> SampleOutput:
        """Sample action tokens restricted to the action ids at ``temperature`` (0 = greedy)."""
        from crane_x7_vla.models.generate import sample_action_tokens

        return sample_action_tokens(self, inputs, temperature, generator)  # type: ignore[arg-type]

    def action_token_log_probs(self, inputs: ModelInputs, tokens: Tensor, temperature: float) -> SampleOutput:
        """Teacher-forced log-probs of ``tokens`` (same values as the sampling path; differentiable)."""
        from crane_x7_vla.models.generate import action_token_log_probs

        return action_token_log_probs(self, inputs, tokens, temperature)  # type: ignore[arg-type]

    def predict_from_inputs(self, inputs: ModelInputs, unnorm_key: str | None = None) -> Any:
        """Greedy actions (B, action_dim) float32 for inputs from ``prepare_inputs`` (lets callers time the two)."""
        from crane_x7_vla.models.generate import greedy_action_tokens

        return self.decode_actions(greedy_action_tokens(self, inputs), unnorm_key)  # type: ignore[attr-defined,arg-type,operator]
