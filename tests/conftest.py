"""Session-wide test environment: the same headless rendering defaults as scripts/test.sh.

MuJoCo fixes its GL backend when it is first imported; some dependencies (pytorch_kinematics via ManiSkill)
import it early, so the default must be in place before any test module is collected.

Without a GPU, Triton kernels run in Triton's CPU interpreter (tests/models/test_decode_attention.py); Triton
reads TRITON_INTERPRET when a kernel is defined, so it is set here, before anything defines one.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
