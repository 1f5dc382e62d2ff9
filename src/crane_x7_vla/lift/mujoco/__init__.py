"""MuJoCo backend of the Lift simulator layer (CPU; the default for CI and demos).

Importing this package registers ``"mujoco"``; a missing ``mujoco`` raises
:class:`~crane_x7_vla.lift.errors.SimulatorUnavailableError` saying what to install.
"""

from __future__ import annotations

import importlib.util

from crane_x7_vla.lift.errors import SimulatorUnavailableError

if importlib.util.find_spec("mujoco") is None:
    raise SimulatorUnavailableError(
        "the 'mujoco' simulator needs the mujoco package: pip install 'crane-x7-vla[mujoco]' "
        "(or scripts/install.sh mujoco)"
    )

from crane_x7_vla.lift.mujoco.gl import select_gl

select_gl()  # must run before mujoco is imported

from crane_x7_vla.lift.mujoco.sim import MujocoSimulator  # noqa: E402

__all__ = ["MujocoSimulator"]
