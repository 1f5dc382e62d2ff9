"""Shared, session-scoped tiny checkpoints (each builds in well under a second)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from crane_x7_vla.models import OpenVLA, load_vla, make_tiny_checkpoint

INSTRUCTIONS = ["pick up the red block", "go", "Place the blue cube on the green plate, then open the gripper"]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The tiny model is far too small to gain from intra-op threads; on the shared 2-core CI box they only
    # contend (10x slower under load). Restored after each test so other packages' tests are unaffected.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def models_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_ckpt(models_tmp: Path) -> Path:
    return make_tiny_checkpoint(models_tmp / "tiny8", action_dim=8, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt: Path) -> OpenVLA:
    return load_vla(tiny_ckpt)


@pytest.fixture(scope="session")
def lora_ckpt(models_tmp: Path) -> Path:
    return make_tiny_checkpoint(models_tmp / "tiny_lora", lora=True, action_dim=8, seed=1)


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(240 + 8 * i, 320, 3), dtype=np.uint8) for i in range(len(INSTRUCTIONS))]


@pytest.fixture(scope="session")
def instructions() -> list[str]:
    return list(INSTRUCTIONS)
