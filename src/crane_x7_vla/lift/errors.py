"""Errors of the Lift simulator layer."""

from __future__ import annotations


class ActionError(ValueError):
    """An action was rejected before it touched the simulation (wrong shape, NaN/inf, beyond joint limits)."""


class SimulatorUnavailableError(RuntimeError):
    """The backend exists but cannot run here (package not installed, no GPU, no renderer, ...)."""
