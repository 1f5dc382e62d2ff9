"""Lift: one simulator interface for the CRANE-X7 tasks, with lazily imported backends.

``create_simulator("mujoco", SimulatorConfig(...))`` builds a backend; the task semantics shared by every
backend live in :mod:`crane_x7_vla.lift.tasks`. Importing this package imports no simulator.
"""

from crane_x7_vla.lift.errors import ActionError, SimulatorUnavailableError
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.registry import available_simulators, create_simulator, register_simulator
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult

__all__ = [
    "ActionError",
    "Observation",
    "Simulator",
    "SimulatorConfig",
    "SimulatorUnavailableError",
    "StepResult",
    "available_simulators",
    "create_simulator",
    "register_simulator",
]
