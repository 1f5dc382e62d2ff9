"""Shared fixtures of the RL tests: one tiny 8-dim OpenVLA checkpoint per session (small images, fast)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def rl_tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crane_x7_vla.models.tiny import make_tiny_checkpoint

    # 56 px images -> 16 patches per tower: the same architecture, a fraction of the compute.
    return make_tiny_checkpoint(tmp_path_factory.mktemp("rl_models") / "tiny8", action_dim=8, seed=0,
                                image_size=56)
