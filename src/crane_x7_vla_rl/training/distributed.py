"""Multi-process VLA-RL under ``torchrun`` / ``accelerate launch``: one device and one env shard per rank.

Design choices:
- The process group comes from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``); both launchers set the same variables, so there is no launcher-specific code.
  NCCL on CUDA, gloo on CPU. A plain ``python -m ...`` run (no ``WORLD_SIZE``) creates no process group and every
  helper here is the identity, so the single-process trainer is bit-for-bit what it was.
- The hyper-parameters mean the same thing for any world size: ``num_rollouts_per_update`` and
  ``ppo.minibatch_size`` are GLOBAL (summed over ranks). Each PPO minibatch is the union of one local chunk per
  rank; every rank scales its loss by ``local_count * world / global_count`` and DDP averages the gradients, so the
  step equals the single-process step over the combined minibatch even when ranks hold different numbers of
  transitions (episodes end at different times). Advantage statistics and the approx-KL early stop are reduced
  across ranks as well, so all ranks always take the same decisions (a rank that stopped alone would hang the
  others in the next collective).
- DDP wraps only the trainable parameters' gradient sync: the frozen base is excluded from DDP's start-up
  broadcast (every rank loads the same weights from disk) and buffers are constants, so they are not broadcast
  on every forward. ``find_unused_parameters`` is on because LoRA sits on linears that never run (vision blocks
  past OpenVLA's feature layer, SigLIP's pooling head). Under GRPO the value head is not trained: it is left out
  of DDP and its output detached, so no bucket waits on (or all-reduces) gradients nobody uses.
- FSDP (``distributed.strategy: fsdp``) is refused with an actionable error: it needs NCCL on CUDA, and its
  GPU path has not been built or measured yet (see docs/training.md, "Multi-GPU").
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from crane_x7_vla_rl.policy import EvalOutput, VLAActorCritic

log = logging.getLogger(__name__)

RANK_SEED_PRIME = 1_000_000_007  # rank r's streams derive from seed + r * this prime: no overlap between ranks
Strategy = Literal["ddp", "fsdp"]


class DistributedError(RuntimeError):
    """The launch environment or the distributed settings are unusable; the message says how to fix it."""


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told this process (``torchrun`` and ``accelerate launch`` set the same variables)."""

    rank: int
    world_size: int
    local_rank: int


def launch_env(environ: Mapping[str, str]) -> LaunchEnv | None:
    """Parse the launcher variables; None for a plain single-process run (no ``WORLD_SIZE``)."""
    if "WORLD_SIZE" not in environ and "RANK" not in environ:
        return None
    try:
        world = int(environ["WORLD_SIZE"])
        rank = int(environ["RANK"])
        local = int(environ.get("LOCAL_RANK", rank))
    except KeyError as exc:
        raise DistributedError(f"{exc.args[0]} is not set but RANK/WORLD_SIZE are: start the run with "
                               "`torchrun --nproc_per_node N -m crane_x7_vla_rl.training.cli train ...`") from None
    except ValueError as exc:
        raise DistributedError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {exc}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"inconsistent launcher variables RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return LaunchEnv(rank=rank, world_size=world, local_rank=local)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s env shard and sampling streams (rank 0 keeps the run seed)."""
    return seed + rank * RANK_SEED_PRIME


def episodes_per_rank(num_rollouts: int, world_size: int) -> int:
    """``num_rollouts_per_update`` is global: each rank collects its share, rounded up."""
    return max(1, math.ceil(num_rollouts / world_size))


def num_minibatches(global_size: int, minibatch_size: int, min_local_size: int) -> int:
    """Minibatches per epoch, the same on every rank: global size / global minibatch, but never more than the
    smallest rank holds (every rank must contribute a non-empty chunk to every synced step)."""
    return max(1, min(math.ceil(global_size / minibatch_size), min_local_size))


class NullLogger:
    """Ranks other than 0 log nothing (only rank 0 writes metrics.jsonl, TensorBoard and W&B)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def log(self, update: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class _ActionEvaluator(nn.Module):
    """The policy's teacher-forced evaluation as a ``forward``: DDP only syncs gradients of what runs through
    its own ``forward`` call."""

    def __init__(self, policy: VLAActorCritic, with_value: bool) -> None:
        super().__init__()
        self.policy = policy
        self.with_value = with_value

    def forward(self, images: Any, instructions: Sequence[str], tokens: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.policy.evaluate_actions(images, instructions, tokens, temperature)
        value = out.value if self.with_value else out.value.detach()
        return out.log_prob, out.entropy, value  # [B] each


class DistContext:
    """This process's place in the run. All collectives are no-ops without a process group."""

    def __init__(self, *, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 device: torch.device | None = None, enabled: bool = False) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device or torch.device("cpu")
        self.enabled = enabled
        self._ddp: nn.Module | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives -----------------------------------------------------------------------------------------
    def _reduce(self, values: Sequence[float], op: dist.ReduceOp.RedOpType) -> list[float]:
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)  # [K]
        dist.all_reduce(t, op=op)
        return [float(v) for v in t.tolist()]

    def sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def min(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MIN)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere); ``[obj]`` in a single process."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased std of ``x`` [B] over all ranks' elements (exactly ``x.mean(), x.std()`` alone)."""
        if not self.enabled:
            return x.mean(), x.std()
        n, s, ss = self.sum([x.numel(), float(x.double().sum()), float((x.double() ** 2).sum())])
        mean = s / n
        var = (ss - n * mean * mean) / max(n - 1.0, 1.0)
        return (torch.tensor(mean, dtype=x.dtype, device=x.device),
                torch.tensor(math.sqrt(max(var, 0.0)), dtype=x.dtype, device=x.device))

    # --- model -------------------------------------------------------------------------------------------------
    def wrap(self, policy: VLAActorCritic, strategy: Strategy, *, train_value_head: bool = True) -> None:
        """Put the policy's trainable parameters under gradient sync (no-op in a single process)."""
        if not self.enabled:
            return
        if strategy == "fsdp":
            raise DistributedError(fsdp_refusal(self.device))
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = _ActionEvaluator(policy, with_value=train_value_head)
        # Frozen base weights and constant buffers are identical on every rank (loaded from the same files):
        # keeping them out of DDP saves a whole-model broadcast at start-up and a buffer broadcast per forward.
        ignore = [n for n, p in module.named_parameters() if not p.requires_grad]
        ignore += [n for n, _ in module.named_buffers()]
        if not train_value_head:
            ignore += [n for n, p in module.named_parameters() if n.startswith("policy.value_head.")]
        DDP._set_params_and_buffers_to_ignore_for_model(module, ignore)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DDP(module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=True)

    def evaluate_actions(self, policy: VLAActorCritic, images: Any, instructions: Sequence[str],
                         tokens: torch.Tensor, temperature: float, *, sync: bool) -> EvalOutput:
        """``policy.evaluate_actions`` whose backward all-reduces the gradients when ``sync`` (the last
        micro-batch of a minibatch); earlier micro-batches only accumulate locally."""
        if self._ddp is None:
            return policy.evaluate_actions(images, instructions, tokens, temperature)
        ctx = nullcontext() if sync else self._ddp.no_sync()  # type: ignore[operator]
        with ctx:
            log_prob, entropy, value = self._ddp(images, instructions, tokens, temperature)
        return EvalOutput(log_prob=log_prob, entropy=entropy, value=value)


def fsdp_refusal(device: torch.device) -> str:
    if device.type != "cuda":
        return ("distributed.strategy 'fsdp' needs CUDA GPUs (NCCL); on CPU use 'ddp' "
                "(set distributed.strategy: ddp in the YAML config)")
    return ("distributed.strategy 'fsdp' is not implemented yet (no multi-GPU machine to build and measure it "
            "on); use 'ddp', which trains LoRA + value head with the frozen base replicated on every GPU")


def init_distributed(requested_device: str, *, strategy: Strategy = "ddp", timeout_minutes: float = 60.0,
                     environ: Mapping[str, str] | None = None) -> DistContext:
    """Join the launcher's process group (or reuse one already initialised) and pick this rank's device."""
    env = launch_env(os.environ if environ is None else environ)
    if env is None and not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run without torchrun")
    use_cuda = requested_device.startswith("cuda") and torch.cuda.is_available()
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = env.local_rank if env is not None else rank
    else:
        assert env is not None
        rank, world, local = env.rank, env.world_size, env.local_rank
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are visible: "
                                   "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        if requested_device.startswith("cuda"):
            log.warning("device %r requested but CUDA is not available; rank %d trains on CPU (gloo)",
                        requested_device, rank)
        device = torch.device("cpu")
    if strategy == "fsdp":
        raise DistributedError(fsdp_refusal(device))
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            # NVLink multicast (NVLS) can take a shared host's GPUs out of service; opt in explicitly if wanted.
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        # device_id binds NCCL to this rank's GPU up front (barriers and object collectives then use it).
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes),
                                device_id=device if use_cuda else None)
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device, enabled=True)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- random streams ------------------------------------------------------------------------------------------------
def seed_global_rngs(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


# --- metrics ---------------------------------------------------------------------------------------------------------
def episode_metrics(returns_sum: float, successes: float, lengths_sum: float, episodes: float) -> dict[str, float]:
    """Episode metrics from counts summed over ranks: success rate = total successes / total episodes."""
    n = max(episodes, 1.0)
    return {"charts/episode_return": returns_sum / n, "charts/success_rate": successes / n,
            "charts/episode_length": lengths_sum / n}


def explained_variance_from_sums(n: float, y_sum: float, y_sq: float, d_sum: float, d_sq: float) -> float:
    """1 - Var[y - y_pred] / Var[y] from sums over all ranks (d = y - y_pred); nan when Var[y] == 0."""
    if n < 2:
        return float("nan")
    var_y = y_sq - y_sum * y_sum / n
    if var_y <= 0:
        return float("nan")
    return 1.0 - (d_sq - d_sum * d_sum / n) / var_y


def reduce_update_stats(ctx: DistContext, stats: dict[str, float]) -> dict[str, float]:
    """Average the per-rank loss statistics (nan-aware), max the ratio check, sum the transition count."""
    if not ctx.enabled:
        return stats
    keys = sorted(stats)
    vals = [stats[k] for k in keys]
    finite = [v if math.isfinite(v) else 0.0 for v in vals]
    counts = [1.0 if math.isfinite(v) else 0.0 for v in vals]
    sums = ctx.sum(finite + counts)
    maxes = ctx.max([v if math.isfinite(v) else -math.inf for v in vals])
    out: dict[str, float] = {}
    for i, k in enumerate(keys):
        total, count = sums[i], sums[len(keys) + i]
        if k == "charts/num_transitions":
            out[k] = total
        elif k == "losses/first_ratio_dev":
            out[k] = maxes[i] if count else float("nan")
        else:
            out[k] = total / count if count else float("nan")
    return out
