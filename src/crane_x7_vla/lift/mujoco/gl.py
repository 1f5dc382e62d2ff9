"""Pick an offscreen OpenGL platform for MuJoCo before ``mujoco`` is imported (it reads MUJOCO_GL at import).

Order: an explicit ``MUJOCO_GL`` wins; otherwise EGL (GPU or Mesa's software EGL), then OSMesa. Each candidate
is probed in a short subprocess because a failed GL initialisation cannot be undone inside this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Final

from crane_x7_vla.lift.errors import SimulatorUnavailableError

CANDIDATES: Final = ("egl", "osmesa")
_PROBE: Final = (
    "import mujoco\n"
    "m = mujoco.MjModel.from_xml_string('<mujoco/>')\n"
    "r = mujoco.Renderer(m, 8, 8)\n"
    "r.update_scene(mujoco.MjData(m)); r.render()\n"
)
INSTALL_HINT: Final = (
    "no offscreen OpenGL works for MuJoCo here. Install EGL (apt-get install libegl1 libgl1; with an NVIDIA GPU the "
    "driver provides it) or OSMesa (apt-get install libosmesa6), or set MUJOCO_GL yourself; "
    "state-only runs work without it (SimulatorConfig(render_images=False))."
)

_failure: str | None = None


def _works(platform: str) -> bool:
    env = {**os.environ, "MUJOCO_GL": platform, "PYOPENGL_PLATFORM": platform}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def select_gl() -> str | None:
    """Set MUJOCO_GL/PYOPENGL_PLATFORM to a working platform (once per process); None if none works."""
    global _failure
    if "MUJOCO_GL" in os.environ:
        platform = os.environ["MUJOCO_GL"]
        if platform in CANDIDATES:
            os.environ.setdefault("PYOPENGL_PLATFORM", platform)
        return platform
    if "mujoco" in sys.modules:  # too late to choose; rendering uses whatever mujoco picked
        return None
    for platform in CANDIDATES:
        if _works(platform):
            os.environ["MUJOCO_GL"] = platform
            os.environ["PYOPENGL_PLATFORM"] = platform
            return platform
    _failure = INSTALL_HINT
    return None


def require_gl() -> None:
    """Raise :class:`SimulatorUnavailableError` if :func:`select_gl` found no working platform."""
    if _failure is not None:
        raise SimulatorUnavailableError(_failure)
