"""A short train smoke run on the ManiSkill backend (skipped where SAPIEN/Vulkan are unavailable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.maniskill


def _maniskill_available() -> str | None:
    try:
        from crane_x7_vla.lift.registry import create_simulator
        from crane_x7_vla.lift.types import SimulatorConfig

        create_simulator("maniskill", SimulatorConfig(num_envs=1, image_size=(56, 56))).close()
    except Exception as exc:  # any failure to build the backend means "not available here"
        return f"{type(exc).__name__}: {exc}"
    return None


def test_train_smoke_on_maniskill(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    why = _maniskill_available()
    if why is not None:
        pytest.skip(f"maniskill backend unavailable: {why[:200]}")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("device: cpu\nsave_eval_videos: false\nnum_eval_episodes: 1\nlora_rank: 4\n"
                   "rollout:\n  max_steps: 2\n  image_size: [56, 56]\nppo:\n  minibatch_size: 4\n  num_epochs: 1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LIFT_SIMULATOR", "LIFT_BACKEND")}
    proc = subprocess.run([sys.executable, "-m", "crane_x7_vla_rl.training.cli", "train", "--config", str(cfg),
                           "--pretrained", str(rl_tiny_ckpt), "--simulator", "maniskill", "--backend", "cpu",
                           "--num-parallel-envs", "1", "--num-updates", "1", "--num-rollouts", "1",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.loads((tmp_path / "crane_x7_vla_rl" / "checkpoint_latest" / "trainer_state.json").read_text())
    assert state["update"] == 1
