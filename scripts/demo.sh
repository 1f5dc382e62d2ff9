#!/usr/bin/env bash
# The README's main-job command: set up (or reuse) the virtualenv, then run the closed-loop demo.
#   scripts/demo.sh [crane-x7-vla demo args...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/install.sh" model,mujoco
venv="${CRANE_X7_VENV:-$repo/.venv}"
[ "$venv" = system ] && bin="" || bin="$venv/bin/"
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
exec "${bin}crane-x7-vla" demo "$@"
