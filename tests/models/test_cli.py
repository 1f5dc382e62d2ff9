"""The CLI contract: make-tiny-checkpoint then predict --json, in a fresh interpreter like a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crane_x7_vla", *args], capture_output=True, text=True, timeout=120)


def test_make_tiny_then_predict_json(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    made = _cli("make-tiny-checkpoint", str(out), "--action-dim", "8", "--seed", "4")
    assert made.returncode == 0, made.stderr
    img = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(img)
    res = _cli("predict", "--model", str(out), "--image", str(img), "--instruction", "pick up the red block", "--json")
    assert res.returncode == 0, res.stderr
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert list(last) == ["action"] and len(last["action"]) == 8
    assert all(isinstance(v, float) for v in last["action"])
    bad = _cli("predict", "--model", str(out), "--image", str(tmp_path / "nope.png"), "--instruction", "go")
    assert bad.returncode == 2 and "not found" in bad.stderr
