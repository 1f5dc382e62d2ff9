"""ManiSkill3 backend of the Lift simulator layer (``physx_cpu`` single env, or ``physx_cuda`` batched on a GPU).

Importing this package registers ``"maniskill"`` (and the ``PickPlace-CRANE-X7`` ManiSkill env id); a missing
``mani_skill`` raises :class:`~crane_x7_vla.lift.errors.SimulatorUnavailableError` saying what to install.
"""

from __future__ import annotations

import importlib.util

from crane_x7_vla.lift.errors import SimulatorUnavailableError

if importlib.util.find_spec("mani_skill") is None or importlib.util.find_spec("sapien") is None:
    raise SimulatorUnavailableError(
        "the 'maniskill' simulator needs mani_skill and sapien: pip install 'crane-x7-vla[maniskill]' "
        "(or scripts/install.sh maniskill, which also installs the Vulkan driver it renders with)"
    )

from crane_x7_vla.lift.maniskill.simulator import ManiSkillSimulator, TorchStepResult

__all__ = ["ManiSkillSimulator", "TorchStepResult"]
