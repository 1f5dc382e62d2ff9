"""Where Genesis keeps its compiled kernels: a known directory so later runs (and CI) skip the ~100 s compile.

Must run before ``genesis`` is imported: Genesis and its kernel compiler (Quadrants) read these variables at init.
User-set variables win.
"""

from __future__ import annotations

import os
from pathlib import Path

from crane_x7_vla.lift.backend_common import cache_dir


def configure_kernel_cache() -> Path:
    """Point Genesis' caches (``GS_CACHE_FILE_PATH``) and Quadrants' offline kernel cache
    (``QD_OFFLINE_CACHE_FILE_PATH``) under ``$CRANE_X7_CACHE/genesis`` unless set; returns the kernel cache dir."""
    root = cache_dir("genesis")
    os.environ.setdefault("GS_CACHE_FILE_PATH", str(root / "assets"))
    os.environ.setdefault("QD_OFFLINE_CACHE_FILE_PATH", str(root / "kernels"))
    return Path(os.environ["QD_OFFLINE_CACHE_FILE_PATH"])
