"""Demo format v1: round trip, append, atomicity and version checks (synthetic episodes, no simulator)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crane_x7_vla.lift import dataset
from crane_x7_vla.lift.dataset import DemoDataset, DemoWriter, Episode


def _episode(t: int, seed: int, success: bool = True) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(images=rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8),
                   actions=rng.normal(size=(t, 8)).astype(np.float32), qpos=rng.normal(size=(t, 8)).astype(np.float32),
                   instruction="pick up the object and place it", success=success, seed=seed)


def test_round_trip_and_append(tmp_path: Path) -> None:
    writer = DemoWriter(tmp_path / "d", "PickPlace-CRANE-X7", "wrist", 30.0, (8, 8))
    eps = [_episode(5, 1), _episode(3, 2, success=False)]
    for ep in eps:
        writer.add(ep)
    DemoWriter(tmp_path / "d", "PickPlace-CRANE-X7", "wrist", 30.0, (8, 8)).add(_episode(4, 3))  # append
    ds = DemoDataset(tmp_path / "d")
    assert len(ds) == 3 and ds.num_steps == 12
    back = ds.episode(0)
    np.testing.assert_array_equal(back.images, eps[0].images)
    np.testing.assert_array_equal(back.actions, eps[0].actions)
    assert (back.instruction, back.success, back.seed) == (eps[0].instruction, True, 1)
    assert len(DemoDataset(tmp_path / "d", only_successful=True)) == 2
    steps = list(ds.steps())
    np.testing.assert_array_equal(steps[5].action, eps[1].actions[0])


def test_interrupted_write_leaves_dataset_consistent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "d"
    writer = DemoWriter(root, "PickPlace-CRANE-X7", "wrist", 30.0, (8, 8))
    writer.add(_episode(4, 1))

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(dataset.np, "savez_compressed", crash)
    with pytest.raises(OSError, match="disk full"):
        writer.add(_episode(4, 2))
    assert sorted(p.name for p in root.iterdir()) == ["episode_00000.npz", "meta.json"]  # no temp debris
    assert len(DemoDataset(root)) == 1


def test_bad_inputs_are_rejected(tmp_path: Path) -> None:
    writer = DemoWriter(tmp_path / "d", "PickPlace-CRANE-X7", "wrist", 30.0, (8, 8))
    bad = _episode(4, 1)
    bad.images = bad.images[:, :4]
    with pytest.raises(ValueError, match="images must be"):
        writer.add(bad)
    writer.add(_episode(2, 1))
    with pytest.raises(ValueError, match="image_size"):
        DemoWriter(tmp_path / "d", "PickPlace-CRANE-X7", "wrist", 30.0, (16, 16))
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unsupported format"):
        DemoDataset(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="expert --record"):
        DemoDataset(tmp_path / "nothing")
