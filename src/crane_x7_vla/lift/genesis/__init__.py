"""Genesis backend of the Lift simulator layer (``cpu`` or ``gpu``, batched ``n_envs`` in one scene).

Importing this package registers ``"genesis"``; a missing ``genesis-world`` raises
:class:`~crane_x7_vla.lift.errors.SimulatorUnavailableError` saying what to install. Genesis itself is imported
only when a simulator is built, after its kernel cache has been pointed at ``$CRANE_X7_CACHE/genesis``.
"""

from __future__ import annotations

import importlib.util

from crane_x7_vla.lift.errors import SimulatorUnavailableError

if importlib.util.find_spec("genesis") is None:
    raise SimulatorUnavailableError(
        "the 'genesis' simulator needs genesis-world: pip install 'crane-x7-vla[genesis]' (or scripts/install.sh genesis)"
    )

from crane_x7_vla.lift.genesis.simulator import GenesisSimulator

__all__ = ["GenesisSimulator"]
