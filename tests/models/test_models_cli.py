"""The CLI contract: make-tiny-checkpoint then predict --json, through ``crane_x7_vla.cli.main`` (in-process:
a fresh interpreter per command would cost two torch imports on the shared CI box for no extra coverage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crane_x7_vla.cli import main


def test_make_tiny_then_predict_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny"
    assert main(["make-tiny-checkpoint", str(out), "--action-dim", "8", "--seed", "4"]) == 0
    img = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(img)
    capsys.readouterr()
    rc = main(["predict", "--model", str(out), "--image", str(img), "--instruction", "pick up the red block", "--json"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(last) == ["action"] and len(last["action"]) == 8
    assert all(isinstance(v, float) for v in last["action"])
    assert main(["predict", "--model", str(out), "--image", str(tmp_path / "nope.png"), "--instruction", "go"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_modules_do_not_import_torch_at_import_time() -> None:
    import subprocess
    import sys

    code = (
        "import sys, crane_x7_vla.models.tiny_cli, crane_x7_vla.models.predict_cli; "
        "sys.exit(int('torch' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_predict_prints_the_whole_vq_chunk_of_a_history2_minivla(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mv"
    assert main(["make-tiny-checkpoint", str(out), "--family", "minivla", "--vq", "--history2", "--seed", "5",
                 "--action-dim", "8"]) == 0
    imgs = []
    for i in range(3):
        imgs.append(tmp_path / f"f{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(imgs[-1])
    capsys.readouterr()
    args = ["predict", "--model", str(out), "--instruction", "pick up the red block", "--json", "--image"]
    assert main([*args, str(imgs[0]), str(imgs[1])]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(last["chunk"]) == 8 and all(len(step) == 8 for step in last["chunk"])
    assert last["action"] == last["chunk"][0]
    assert main([*args, str(imgs[0]), str(imgs[1]), str(imgs[2])]) == 2  # 3 frames for a 2-frame model
    assert "image" in capsys.readouterr().err.lower()
