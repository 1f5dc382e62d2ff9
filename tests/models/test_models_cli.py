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
