from __future__ import annotations

from pathlib import Path

import pytest

from crane_x7_vla.utils.atomic import atomic_directory, atomic_path, write_json_atomic, write_text_atomic


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_directory_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        write_json_atomic(d / "x.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "partial").write_text("x")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["x.json"]
    with atomic_directory(target) as d:
        (d / "y").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_results_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    import os

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    write_text_atomic(tmp_path / "atomic.txt", "x")
    with atomic_directory(tmp_path / "atomic_dir") as d:
        (d / "f").write_text("x")
    assert os.stat(tmp_path / "atomic.txt").st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    assert os.stat(tmp_path / "atomic_dir").st_mode & 0o777 == os.stat(tmp_path / "plain_dir").st_mode & 0o777


def test_a_mode_set_inside_the_block_is_kept(tmp_path: Path) -> None:
    import os

    with atomic_path(tmp_path / "secret.env") as tmp:
        tmp.write_text("TOKEN=x")
        os.chmod(tmp, 0o600)
    assert os.stat(tmp_path / "secret.env").st_mode & 0o777 == 0o600
