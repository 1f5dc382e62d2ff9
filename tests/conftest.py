"""Session-wide test environment: the same headless rendering defaults as scripts/test.sh.

MuJoCo fixes its GL backend when it is first imported; some dependencies (pytorch_kinematics via ManiSkill)
import it early, so the default must be in place before any test module is collected.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
