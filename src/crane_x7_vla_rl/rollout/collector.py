"""The batched env <-> policy loop: one segment = N parallel episodes of at most ``max_steps`` steps.

Design: every env of a segment is reset together with a seed derived from (run seed, update, segment), so a
resumed run replays exactly the same episodes without saving simulator state. An env whose episode ends
(terminated or truncated) is frozen until the segment ends: the policy only runs on the still-active envs
(one batched call per step), frozen envs hold their last action, and their later steps are marked invalid in
the buffer. V(s_{t+1}) comes for free from the next step's forward; only envs still running at the horizon
need one extra value call for their final observation (truncation bootstrap).

With ``progress_gamma`` set (staged and dense rewards in training), the simulator's per-step reward r_t (the
stage value of the state the step reached; 1 at success, which ends the episode) is treated as a potential
Phi and paid as potential-based shaping (Ng, Harada & Russell 1999): gamma * r_t - r_{t-1} (r_{-1} = 0), and
r_t - r_{t-1} at success, whose terminal potential is 0 with the success reward 1. Such shaping leaves the
optimal policy that of the binary success reward. Paid per step as is, a shaped reward makes lingering in a
high stage worth more than the success that ends the episode (0.7 per step over the goal against one 1.0);
paid as an undiscounted change, it banks the stage reached, so holding a grasped cube (0.3) beats trying to
lift it while lifts succeed less than 22% of the time (measured: PPO learned to hold). With the discount,
lingering costs (1 - gamma) * Phi per step and success is the only way to a positive return.

A simulator may give each env its own instruction through ``reset()``'s ``info["instruction"]`` (a sequence
of N strings); otherwise every env gets the configured instruction.

Multi-frame policies (``policy.history = k > 1``, MiniVLA history2) see the last k observations of their env,
oldest first, with the reset observation repeated at an episode start (the published rollout). The stacks are
what the buffer stores ([T, N, k, H, W, 3]), so the update re-evaluates exactly the inputs that were acted on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.utils.history import SlidingWindow
from crane_x7_vla_rl.rollout.buffer import Segment


class Policy(Protocol):
    def act(self, images: Any, instructions: Sequence[str], temperature: float,
            generator: torch.Generator | None = None) -> Any: ...

    def value(self, images: Any, instructions: Sequence[str]) -> torch.Tensor: ...

    def decode_actions(self, tokens: torch.Tensor) -> np.ndarray: ...


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    episode_return: float
    length: int
    instruction: str
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 video frames (eval only)
    stages: set[str] = field(default_factory=set)  # task stages reached at any step (PROGRESS_KEYS present in info)


# Boolean per-env info keys a task may report (PickPlace does): where a failing policy gets stuck.
PROGRESS_KEYS = ("reached", "is_grasped", "lifted", "over_goal")


def env_instructions(info: dict[str, Any], num_envs: int, default: str) -> list[str]:
    """Per-env instructions from the simulator (a sequence of N strings) win; otherwise the configured one.

    A single task-level string from the simulator is ignored: the user's ``--instruction`` is the prompt.
    """
    value = info.get("instruction")
    if value is not None and not isinstance(value, str | bytes):
        items = [str(v) for v in value]
        if len(items) != num_envs:
            raise ValueError(f"simulator reset info['instruction'] has {len(items)} entries for {num_envs} envs")
        return items
    return [default] * num_envs


class FrameStack:
    """The last ``length`` observations of every env: (N, H, W, 3) when length is 1, else (N, length, H, W, 3)."""

    def __init__(self, length: int) -> None:
        self.window: SlidingWindow[np.ndarray] = SlidingWindow(length)
        self.length = length

    def reset(self, rgb: np.ndarray) -> np.ndarray:
        """Episode start: the first observation fills the history."""
        self.window.reset()
        return self.push(rgb)

    def push(self, rgb: np.ndarray) -> np.ndarray:
        # A simulator may render into the same buffer every step: kept frames must be copies.
        frames = self.window.push(np.array(rgb, copy=True) if self.length > 1 else np.asarray(rgb))
        return frames[0] if self.length == 1 else np.stack(frames, axis=1)  # (N, length, H, W, 3), oldest first


def _bool(x: Any, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=bool).reshape(-1), (n,)).copy()


class RolloutCollector:
    def __init__(self, sim: Simulator, policy: Policy, *, instruction: str, max_steps: int, temperature: float,
                 device: torch.device, group_size: int = 1, progress_gamma: float | None = None) -> None:
        self.sim = sim
        self.progress_gamma = progress_gamma
        self.policy = policy
        self.instruction = instruction
        self.max_steps = max_steps
        self.temperature = temperature
        self.device = device
        self.group_size = group_size
        self.history = int(getattr(policy, "history", 1) or 1)  # frames per policy input (MiniVLA history2: 2)

    def reset(self, seed: int) -> tuple[Any, list[str]]:
        """Reset every env; env i gets seed ``seed + i`` (GRPO: ``seed + i // group_size``, shared per group)."""
        n = self.sim.num_envs
        info: dict[str, Any] = {}
        if self.group_size <= 1:
            obs, info = self.sim.reset(seed=seed)
        else:
            # Env i is seeded with (seed + i), so resetting env i alone with (s_g - i) gives it s_g: every
            # member of group g starts from the same state.
            for i in range(n):
                s_g = seed + i // self.group_size
                # The last reset's info describes every env (all are reset by then).
                _, info = self.sim.reset(seed=s_g - i, env_idx=np.array([i], dtype=np.int64))
            obs = self.sim.get_observation()
        return obs, env_instructions(info, n, self.instruction)

    def collect(self, seed: int, generator: torch.Generator | None,
                instruction_index: Callable[[str], int]) -> Segment:
        """Run one segment of N episodes and return its transitions (tensors on ``self.device``)."""
        n, T, dev = self.sim.num_envs, self.max_steps, self.device
        obs, instructions = self.reset(seed)
        stack = FrameStack(self.history)
        frames = stack.reset(np.asarray(obs.rgb_image))  # (n, [k,] H, W, 3)
        images = torch.zeros((T, *frames.shape), dtype=torch.uint8, device=dev)
        tokens: torch.Tensor | None = None
        log_probs = torch.zeros((T, n), device=dev)
        values = torch.zeros((T, n), device=dev)
        next_values = torch.zeros((T, n), device=dev)
        rewards = torch.zeros((T, n), device=dev)
        terminated = torch.zeros((T, n), dtype=torch.bool, device=dev)
        truncated = torch.zeros((T, n), dtype=torch.bool, device=dev)
        valid = torch.zeros((T, n), dtype=torch.bool, device=dev)
        ep_return = torch.zeros(n, device=dev)
        ep_len = torch.zeros(n, dtype=torch.long, device=dev)
        ep_success = torch.zeros(n, dtype=torch.bool, device=dev)
        last_reward = torch.zeros(n, device=dev)  # the simulator's previous reward per env (the potential)
        active = np.ones(n, dtype=bool)
        last_action: np.ndarray | None = None
        steps = 0
        for t in range(T):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            steps = t + 1
            act_instr = [instructions[i] for i in idx]
            out = self.policy.act(frames[idx], act_instr, self.temperature, generator)
            if tokens is None:
                tokens = torch.zeros((T, n, out.tokens.shape[-1]), dtype=torch.long, device=dev)
            ti = torch.as_tensor(idx, device=dev)
            if t > 0:
                # V(s_t) of the envs still running is V(s_{t+1}) of their previous step.
                next_values[t - 1, ti] = out.value.to(dev).float()
            images[t, ti] = torch.as_tensor(frames[idx], device=dev)
            tokens[t, ti] = out.tokens.to(dev)
            log_probs[t, ti] = out.log_prob.to(dev).float()
            values[t, ti] = out.value.to(dev).float()
            valid[t, ti] = True
            act = self.policy.decode_actions(out.tokens)  # (n_active, D)
            if last_action is None:
                last_action = np.repeat(act[:1], n, axis=0)
            full = last_action.copy()
            full[idx] = act  # frozen envs hold their last action
            last_action = full
            res = self.sim.step(full)
            obs = res.observation
            frames = stack.push(np.asarray(obs.rgb_image))
            r = torch.as_tensor(np.asarray(res.reward, dtype=np.float32).reshape(-1)[idx], device=dev)
            term = _bool(res.terminated, n)[idx]
            trunc = _bool(res.truncated, n)[idx]
            if t == T - 1:
                trunc = trunc | ~term  # the horizon: bootstrap whatever is still running
            succ = _bool(res.info.get("success", False), n)[idx]
            if self.progress_gamma is not None:
                term_t = torch.as_tensor(term, device=dev)
                r, last_reward[ti] = torch.where(term_t, r, self.progress_gamma * r) - last_reward[ti], r
            rewards[t, ti] = r
            terminated[t, ti] = torch.as_tensor(term, device=dev)
            truncated[t, ti] = torch.as_tensor(trunc & ~term, device=dev)
            ep_return[ti] += r
            ep_len[ti] += 1
            ep_success[ti] |= torch.as_tensor(succ, device=dev)
            boot = idx[trunc & ~term]
            if boot.size:
                # Truncation bootstrap: V of the observation this step produced, taken now because a frozen
                # env keeps being stepped (holding its action) and its observation moves on.
                v = self.policy.value(frames[boot], [instructions[i] for i in boot]).to(dev).float()
                next_values[t, torch.as_tensor(boot, device=dev)] = v
            active[idx[term | trunc]] = False
        assert tokens is not None
        sl = slice(0, steps)
        return Segment(
            images=images[sl], tokens=tokens[sl], log_probs=log_probs[sl], values=values[sl],
            next_values=next_values[sl], rewards=rewards[sl], terminated=terminated[sl],
            truncated=truncated[sl], valid=valid[sl],
            instruction_ids=torch.tensor([instruction_index(s) for s in instructions], device=dev),
            group_ids=torch.arange(n, device=dev) // max(self.group_size, 1),
            episode_returns=ep_return, episode_lengths=ep_len, episode_success=ep_success,
        )

    @torch.no_grad()
    def run_episodes(self, seed: int, generator: torch.Generator | None, *,
                     temperature: float | None = None, record: int = 0,
                     camera: str = "third_person") -> list[EpisodeResult]:
        """Evaluation: N episodes from ``seed``; the first ``record`` envs get video frames."""
        n = self.sim.num_envs
        obs, instructions = self.reset(seed)
        stack = FrameStack(self.history)
        frames = stack.reset(np.asarray(obs.rgb_image))
        results = [EpisodeResult(seed=seed + i, success=False, episode_return=0.0, length=0,
                                 instruction=instructions[i]) for i in range(n)]
        active = np.ones(n, dtype=bool)
        last_action: np.ndarray | None = None
        temp = self.temperature if temperature is None else temperature
        for _ in range(self.max_steps):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            if record:
                self._record(results, active, record, camera)
            out = self.policy.act(frames[idx], [instructions[i] for i in idx], temp, generator)
            act = self.policy.decode_actions(out.tokens)
            if last_action is None:
                last_action = np.repeat(act[:1], n, axis=0)
            full = last_action.copy()
            full[idx] = act
            last_action = full
            res = self.sim.step(full)
            frames = stack.push(np.asarray(res.observation.rgb_image))
            reward = np.asarray(res.reward, dtype=np.float32).reshape(-1)
            done = _bool(res.terminated, n) | _bool(res.truncated, n)
            succ = _bool(res.info.get("success", False), n)
            progress = {k: _bool(res.info[k], n) for k in PROGRESS_KEYS if k in res.info}
            for i in idx:
                results[i].stages.update(k for k, v in progress.items() if v[i])
                results[i].episode_return += float(reward[i])
                results[i].length += 1
                results[i].success |= bool(succ[i])
                if done[i]:
                    active[i] = False
        if record:
            self._record(results, np.ones(n, dtype=bool), record, camera)
        return results

    def _record(self, results: list[EpisodeResult], active: np.ndarray, record: int, camera: str) -> None:
        try:
            frames = np.asarray(self.sim.render(camera))
        except NotImplementedError:
            frames = np.asarray(self.sim.get_observation().rgb_image)
        for i in range(min(record, len(results))):
            if active[i]:
                results[i].frames.append(frames[i])
