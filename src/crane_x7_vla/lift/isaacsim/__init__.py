"""Isaac Sim backend: not provided. Importing it fails fast with what to install instead.

Isaac Sim needs NVIDIA's Omniverse runtime (an RTX GPU, a driver >= 535 and the ``isaacsim`` pip packages
from NVIDIA's own index), which neither CI nor the published containers can install; an adapter that could not
be tested would be worse than a clear error.
"""

from __future__ import annotations

from crane_x7_vla.lift.errors import SimulatorUnavailableError

raise SimulatorUnavailableError(
    "the 'isaacsim' simulator is not supported in this release: it needs NVIDIA Isaac Sim (RTX GPU, driver >= 535, "
    "the 'isaacsim' packages from NVIDIA's index) and has no adapter yet. Use --simulator maniskill (GPU training "
    "default, pip install 'crane-x7-vla[maniskill]'), genesis (pip install 'crane-x7-vla[genesis]') or mujoco "
    "(CPU, pip install 'crane-x7-vla[mujoco]')."
)
