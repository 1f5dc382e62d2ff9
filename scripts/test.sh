#!/usr/bin/env bash
# The README's test command: set up (or reuse) the virtualenv, then lint, type-check and run the tests.
#   scripts/test.sh [pytest args...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
"$repo/scripts/install.sh" "${CRANE_X7_TEST_EXTRAS:-model,mujoco,maniskill,genesis,train,dev}"
venv="${CRANE_X7_VENV:-$repo/.venv}"
[ "$venv" = system ] && bin="" || bin="$venv/bin/"
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
export CRANE_X7_CACHE="${CRANE_X7_CACHE:-$HOME/.cache/crane-x7-vla}"
echo "[test] ruff"; "${bin}ruff" check src tests bench scripts
echo "[test] mypy"; "${bin}mypy"
echo "[test] pytest"; "${bin}python" -m pytest "$@"
