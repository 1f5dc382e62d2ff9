"""Checkpoints of a VLA-RL run: everything needed to evaluate, export, or resume bit-exactly.

Layout of ``<run_dir>/checkpoint_<N>`` (also ``checkpoint_latest`` and ``checkpoint_best``)::

    config.yaml                 the resolved TrainConfig (no secrets: tokens live only in the environment)
    adapter_config.json         PEFT LoRA config (base_model_name_or_path = the starting checkpoint)
    adapter_model.safetensors   LoRA weights, PEFT key layout (loadable by the runtime as a LoRA dir)
    value_head.safetensors      the critic
    trainer_state.pt            optimizer, scheduler and RNG states (torch, numpy, python, CUDA), per rank
    trainer_state.json          update / global step / best eval success, human readable
    dataset_statistics.json     the action normalisation statistics the policy decodes with

Design: each directory is built under a temporary name and renamed into place (``atomic_directory``), so a
crash never leaves a half-written checkpoint. ``checkpoint_latest`` is written once per save; the numbered and
best copies are hard links of its files (free on disk, atomic as directories too). Under torchrun only rank 0
writes (the optimizer and weights are identical on every rank); the RNG states of all ranks are stored keyed by
rank (``rng_by_rank``), and ``rng`` stays rank 0's so single-process readers are unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from crane_x7_vla.utils.atomic import atomic_directory
from crane_x7_vla_rl.config import TrainConfig, validate

CONFIG_FILE = "config.yaml"
STATE_PT = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
STATS_FILE = "dataset_statistics.json"
LATEST = "checkpoint_latest"
log = logging.getLogger(__name__)
BEST = "checkpoint_best"


@dataclass
class TrainerState:
    update: int = 0  # updates completed
    global_step: int = 0  # env transitions collected
    best_success: float = -1.0  # best eval success rate so far (-1: never evaluated)
    best_update: int = -1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # torch.load(map_location="cuda") moves every tensor, the CPU generator's ByteTensor too: bring it back.
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(run_dir: Path, *, policy: Any, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig, state: TrainerState,
                    dataset_statistics: dict[str, Any], numbered: bool, best: bool,
                    rng_by_rank: list[dict[str, Any]] | None = None) -> Path:
    """Write ``checkpoint_latest`` (and link it as ``checkpoint_<update>`` / ``checkpoint_best``).

    ``rng_by_rank``: every rank's :func:`rng_state` (index = rank) under torchrun; None in a single process.
    """
    latest = run_dir / LATEST
    rngs = rng_by_rank if rng_by_rank is not None else [rng_state()]
    with atomic_directory(latest) as tmp:
        (tmp / CONFIG_FILE).write_text(config.to_yaml())
        policy.save_adapter(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rngs[0], "rng_by_rank": dict(enumerate(rngs)), "world_size": len(rngs),
                    "state": asdict(state)}, tmp / STATE_PT)
        (tmp / STATE_JSON).write_text(json.dumps(asdict(state), indent=2) + "\n")
        (tmp / STATS_FILE).write_text(json.dumps(dataset_statistics, indent=2, default=_jsonable) + "\n")
    if numbered:
        link_copy(latest, run_dir / f"checkpoint_{state.update}")
    if best:
        link_copy(latest, run_dir / BEST)
    return latest


def link_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a copy of directory ``src`` using hard links (a real copy across devices)."""
    with atomic_directory(dst) as tmp:
        for f in src.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)


def is_rl_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / STATE_JSON).is_file()


def load_config(path: Path) -> TrainConfig:
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is not a directory; pass <run_dir>/checkpoint_latest")
    if not is_rl_checkpoint(path):
        raise FileNotFoundError(f"{str(path)!r} is not a crane_x7_vla_rl checkpoint (no {CONFIG_FILE} / "
                                f"{STATE_JSON}); pass a <run_dir>/checkpoint_<N> directory")
    return validate(yaml.safe_load((path / CONFIG_FILE).read_text()) or {}, source=str(path / CONFIG_FILE))


def load_config_dict(path: Path) -> dict[str, Any]:
    load_config(path)  # validates
    data: dict[str, Any] = yaml.safe_load((path / CONFIG_FILE).read_text()) or {}
    return data


def load_trainer_state(path: Path, optimizer: torch.optim.Optimizer | None = None,
                       scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                       restore_rng: bool = True, *, rank: int = 0, world_size: int = 1,
                       rederive_rng: Callable[[int], None] | None = None) -> TrainerState:
    """Load optimizer / scheduler / progress and restore this rank's RNG states.

    When the checkpoint was written by a different number of ranks, the saved per-rank streams do not map onto
    this run's ranks: ``rederive_rng(update)`` then seeds them from (seed, rank, update) instead, and a log line
    says so. Without ``rederive_rng`` rank 0's saved state is used.
    """
    blob = torch.load(path / STATE_PT, map_location="cpu", weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(blob["scheduler"])
    state = TrainerState(**blob["state"])
    if restore_rng:
        saved_world = int(blob.get("world_size", 1))
        by_rank: dict[int, Any] = blob.get("rng_by_rank") or {0: blob["rng"]}
        if saved_world == world_size and rank in by_rank:
            set_rng_state(by_rank[rank])
        elif rederive_rng is not None:
            log.info("checkpoint %s was written by %d rank(s), this run has %d: re-deriving rank %d's RNG states "
                     "from the seed and update %d (the run stays reproducible, but differs from an uninterrupted "
                     "%d-rank run)", path, saved_world, world_size, rank, state.update, saved_world)
            rederive_rng(state.update)
        else:
            set_rng_state(blob["rng"])
    return state


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
