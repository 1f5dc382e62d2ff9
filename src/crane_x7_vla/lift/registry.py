"""Simulator registry: ``@register_simulator(name)`` and ``create_simulator(name, config)``.

Backends live in sub-packages imported lazily, so ``create_simulator("mujoco", ...)`` never imports
SAPIEN or Genesis.
"""

from __future__ import annotations

import difflib
import importlib
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


def create_simulator(name: str, config: SimulatorConfig | None = None) -> Simulator:
    """Build the simulator ``name`` with ``config`` (defaults: :class:`SimulatorConfig`)."""
    config = config or SimulatorConfig()
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available_simulators(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown simulator {name!r}; choose one of {available_simulators()}.{hint}")
    return _REGISTRY[name](config)
