"""``crane-x7-vla demo`` end to end for a few seconds: actions flow, the arm moves, the video plays."""

from __future__ import annotations

import importlib.util
import json

import pytest

from crane_x7_vla import cli

# ~15 s on 2 shared CPU cores (imports, GL probing, video encoding): under the 20 s "slow" bar.
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("torch") is None,
                       reason="needs mujoco and torch"),
]


def test_demo_runs_and_writes_a_playable_video(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CRANE_X7_CACHE", str(tmp_path / "cache"))
    video = tmp_path / "out" / "demo.mp4"
    assert cli.main(["demo", "--duration", "4", "--rate", "5", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert "RANDOM" in summary["note"] and "achieved" in out
    assert summary["actions_published"] >= 5
    assert summary["controller"]["arm_goals"] >= 5 and not summary["controller"]["rejected"]
    assert summary["arm_moved_rad"] > 0.05
    assert summary["latency_ms"]["total"]["p50"] > 0
    # The checkpoint was cached atomically, the video written atomically (no temp files left).
    assert (tmp_path / "cache" / "demo" / "tiny-openvla-8d" / "config.json").exists()
    assert [p.name for p in video.parent.iterdir()] == ["demo.mp4"]
    import imageio.v2 as imageio

    reader = imageio.get_reader(video)
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == summary["video"]["frames"] >= 20
    assert frames[0].ndim == 3 and frames[0].shape[2] == 3
