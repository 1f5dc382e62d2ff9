"""Bundles: a run cut into size-capped tar parts with a checksummed manifest, and unpacked only when intact."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from crane_x7_vla.utils.bundle import BundleError, read_bundle, verify_bundle, write_bundle

PART = 4 * tarfile.RECORDSIZE  # 40 KiB parts: a 100 KB file spans several


@pytest.fixture()
def run_files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    (src / "sft").mkdir(parents=True)
    weights = src / "sft" / "model.safetensors"
    weights.write_bytes(os.urandom(100_000))
    meta = src / "meta.json"
    meta.write_text('{"step": 6000}\n')
    return {"sft/checkpoint_latest/model.safetensors": weights, "meta.json": meta}


def test_round_trip_over_several_capped_parts(run_files: dict[str, Path], tmp_path: Path) -> None:
    manifest = write_bundle(tmp_path / "b", run_files, part_bytes=PART, metadata={"rl_update": 28})
    parts = sorted((tmp_path / "b").glob("part-*.tar"))
    assert len(parts) == len(manifest["parts"]) >= 3
    assert all(p.stat().st_size <= PART for p in parts)
    assert manifest["metadata"] == {"rl_update": 28} and manifest["files"] == 2
    read_bundle(tmp_path / "b", tmp_path / "out")
    for name, src in run_files.items():
        assert (tmp_path / "out" / name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "out", "src"]  # no temporary directories left


def test_a_damaged_or_missing_part_is_refused_before_unpacking(run_files: dict[str, Path], tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", run_files, part_bytes=PART)
    part = tmp_path / "b" / "part-001.tar"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"part-001\.tar: SHA-256 differs"):
        read_bundle(tmp_path / "b", tmp_path / "out")
    part.write_bytes(bytes(data[:-10]))
    with pytest.raises(BundleError, match="truncated"):
        verify_bundle(tmp_path / "b")
    part.unlink()
    with pytest.raises(BundleError, match=r"part-001\.tar is missing"):
        verify_bundle(tmp_path / "b")
    assert not (tmp_path / "out").exists()


def test_nothing_is_overwritten(run_files: dict[str, Path], tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", run_files, part_bytes=PART)
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path / "b", run_files, part_bytes=PART)
    (tmp_path / "out").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        read_bundle(tmp_path / "b", tmp_path / "out")
    with pytest.raises(BundleError, match="not a bundle"):
        read_bundle(tmp_path / "src", tmp_path / "out2")
    with pytest.raises(BundleError, match="missing files"):
        write_bundle(tmp_path / "c", {"x": tmp_path / "nope"}, part_bytes=PART)
