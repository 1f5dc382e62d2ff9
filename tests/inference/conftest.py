"""Shared fixtures of the inference tests: one tiny 8-dim OpenVLA per session, a recording policy wrapper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from inference_helpers import RecordingPolicy


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch = pytest.importorskip("torch")
    from crane_x7_vla.models import load_vla, make_tiny_checkpoint

    torch.set_num_threads(1)  # 2 shared cores: more threads only contend with the event loop
    path: Path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", action_dim=8, seed=0)
    return load_vla(str(path), device="cpu", unnorm_key="crane_x7")


@pytest.fixture()
def policy(tiny_model: Any) -> RecordingPolicy:
    return RecordingPolicy(tiny_model)


def _tiny_minivla(tmp_path_factory: pytest.TempPathFactory, name: str, **kw: Any) -> Any:
    torch = pytest.importorskip("torch")
    from crane_x7_vla.models import load_vla, make_tiny_minivla_checkpoint

    torch.set_num_threads(1)
    path = make_tiny_minivla_checkpoint(tmp_path_factory.mktemp("tiny_minivla") / name, action_dim=8, **kw)
    return load_vla(str(path), device="cpu", unnorm_key="crane_x7")


@pytest.fixture(scope="session")
def minivla_vq(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny VQ MiniVLA: 7 code tokens -> a chunk of 8 x 8 actions."""
    return _tiny_minivla(tmp_path_factory, "vq", vq=True, seed=1)


@pytest.fixture(scope="session")
def minivla_history2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _tiny_minivla(tmp_path_factory, "history2", image_sequence_len=2, seed=2)


@pytest.fixture(scope="session")
def minivla_wrist(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _tiny_minivla(tmp_path_factory, "wrist", use_wrist_image=True, seed=3)
