"""On-device rollout storage laid out as [T, E] (time x episode-slot).

Design: one update collects ``S`` segments of ``N`` parallel envs, each at most ``T`` steps; a segment's N
envs become N more columns, so the whole update is one [T, S*N] block and GAE runs once over it. An env that
finishes its episode before the segment ends is frozen: its later steps are marked invalid and excluded from
the loss (its ``done`` flag already stops the GAE recursion, so nothing leaks across). Raw uint8 images are
stored instead of preprocessed pixel tensors (8x smaller); the update re-runs the deterministic preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Segment:
    """One segment of N envs x T steps, as written by the collector."""

    images: torch.Tensor  # [T, N, H, W, 3] uint8 ([T, N, k, H, W, 3] for k-frame policies, oldest first)
    tokens: torch.Tensor  # [T, N, K] long, sampled action tokens (K = the policy's num_action_tokens, not action_dim)
    log_probs: torch.Tensor  # [T, N] sum of the K action-token log-probs at sampling time
    values: torch.Tensor  # [T, N] V(s_t)
    next_values: torch.Tensor  # [T, N] V(s_{t+1}) of the observation the step produced
    rewards: torch.Tensor  # [T, N]
    terminated: torch.Tensor  # [T, N] bool
    truncated: torch.Tensor  # [T, N] bool
    valid: torch.Tensor  # [T, N] bool, False after the env's episode ended
    instruction_ids: torch.Tensor  # [N] long, index into RolloutBatch.instructions
    group_ids: torch.Tensor  # [N] long, episodes sharing an initial state (GRPO)
    episode_returns: torch.Tensor  # [N] undiscounted
    episode_lengths: torch.Tensor  # [N] long
    episode_success: torch.Tensor  # [N] bool


@dataclass
class RolloutBatch:
    """All segments of one update concatenated along the episode axis ([T, E], E = S*N)."""

    images: torch.Tensor  # [T, E, H, W, 3] uint8 (or [T, E, k, H, W, 3])
    tokens: torch.Tensor  # [T, E, K]
    log_probs: torch.Tensor  # [T, E]
    values: torch.Tensor  # [T, E]
    next_values: torch.Tensor  # [T, E]
    rewards: torch.Tensor  # [T, E]
    terminated: torch.Tensor  # [T, E]
    truncated: torch.Tensor  # [T, E]
    valid: torch.Tensor  # [T, E]
    instruction_ids: torch.Tensor  # [E]
    group_ids: torch.Tensor  # [E]
    episode_returns: torch.Tensor  # [E]
    episode_lengths: torch.Tensor  # [E]
    episode_success: torch.Tensor  # [E]
    instructions: list[str]

    @classmethod
    def from_segments(cls, segments: list[Segment], instructions: list[str]) -> RolloutBatch:
        if not segments:
            raise ValueError("RolloutBatch.from_segments: no segments collected")
        t_max = max(s.images.shape[0] for s in segments)
        padded = [_pad_time(s, t_max) for s in segments]

        def cat(name: str, dim: int) -> torch.Tensor:
            return torch.cat([getattr(s, name) for s in padded], dim=dim)

        return cls(
            images=cat("images", 1), tokens=cat("tokens", 1), log_probs=cat("log_probs", 1),
            values=cat("values", 1), next_values=cat("next_values", 1), rewards=cat("rewards", 1),
            terminated=cat("terminated", 1), truncated=cat("truncated", 1), valid=cat("valid", 1),
            instruction_ids=cat("instruction_ids", 0), group_ids=cat("group_ids", 0),
            episode_returns=cat("episode_returns", 0), episode_lengths=cat("episode_lengths", 0),
            episode_success=cat("episode_success", 0), instructions=list(instructions),
        )

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    def flat_valid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_idx [B], e_idx [B]) of the valid transitions, time-major (a fixed, deterministic order)."""
        t_idx, e_idx = torch.nonzero(self.valid, as_tuple=True)
        return t_idx, e_idx


def _pad_time(seg: Segment, t_max: int) -> Segment:
    """Pad a shorter segment with invalid steps (all envs finished early) so segments concatenate."""
    t = seg.images.shape[0]
    if t == t_max:
        return seg
    extra = t_max - t

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.zeros((extra, *x.shape[1:]), dtype=x.dtype, device=x.device)], dim=0)

    return Segment(
        images=pad(seg.images), tokens=pad(seg.tokens), log_probs=pad(seg.log_probs), values=pad(seg.values),
        next_values=pad(seg.next_values), rewards=pad(seg.rewards), terminated=pad(seg.terminated),
        truncated=pad(seg.truncated), valid=pad(seg.valid), instruction_ids=seg.instruction_ids,
        group_ids=seg.group_ids, episode_returns=seg.episode_returns, episode_lengths=seg.episode_lengths,
        episode_success=seg.episode_success,
    )
