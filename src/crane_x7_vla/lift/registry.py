"""Simulator registry: ``@register_simulator(name)`` and ``create_simulator(name, config, workers=0)``.

Backends live in sub-packages imported lazily, so ``create_simulator("mujoco", ...)`` never imports
SAPIEN or Genesis.
"""

from __future__ import annotations

import difflib
import importlib
import operator
from collections.abc import Callable
from typing import TypeVar

from crane_x7_vla.lift.errors import SimulatorUnavailableError
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.types import SimulatorConfig

__all__ = [
    "SimulatorUnavailableError",
    "available_simulators",
    "create_simulator",
    "register_simulator",
    "simulator_class",
]

S = TypeVar("S", bound=type[Simulator])

_REGISTRY: dict[str, type[Simulator]] = {}
# name -> module that registers it on import (lazy).
_LAZY: dict[str, str] = {
    "mujoco": "crane_x7_vla.lift.mujoco",
    "maniskill": "crane_x7_vla.lift.maniskill",
    "genesis": "crane_x7_vla.lift.genesis",
    "isaacsim": "crane_x7_vla.lift.isaacsim",
}


def register_simulator(name: str) -> Callable[[S], S]:
    def deco(cls: S) -> S:
        _REGISTRY[name] = cls
        return cls

    return deco


def available_simulators() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def simulator_class(name: str) -> type[Simulator]:
    """The backend class registered as ``name`` (its sub-package is imported on first use)."""
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available_simulators(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown simulator {name!r}; choose one of {available_simulators()}.{hint}")
    return _REGISTRY[name]


def create_simulator(name: str, config: SimulatorConfig | None = None, workers: int = 0) -> Simulator:
    """Build the simulator ``name`` with ``config`` (defaults: :class:`SimulatorConfig`).

    ``workers`` <= 1 builds the backend in this process; ``workers`` > 1 spreads ``config.num_envs`` envs over
    ``min(workers, num_envs)`` worker processes (:class:`~crane_x7_vla.lift.parallel.ParallelSimulator`, same
    semantics, for CPU backends bound by one Python process). A single env stays in this process: one worker
    would only add the messaging.
    """
    config = config or SimulatorConfig()
    try:
        workers = operator.index(workers)
    except TypeError:
        raise ValueError(f"workers must be an integer, got {workers!r}") from None
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 or 1: simulate in this process; N > 1: N worker processes), "
                         f"got {workers}")
    cls = simulator_class(name)  # an unknown name fails here, before any worker starts
    if min(workers, config.num_envs) <= 1:
        return cls(config)
    from crane_x7_vla.lift.parallel import ParallelSimulator

    return ParallelSimulator(name, config, workers)
