"""Evaluation statistics (the Wilson interval), video naming, and both mp4 writers read back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from crane_x7_vla_rl.rollout.collector import EpisodeResult
from crane_x7_vla_rl.training.evaluate import summarize, video_name, wilson_interval, write_video


def test_wilson_known_values() -> None:
    lo, hi = wilson_interval(8, 10)  # reference values of the Wilson score interval, z = 1.96
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_video_name_says_the_outcome() -> None:
    assert video_name(50, 3, True) == "eval_u0050_ep03_success.mp4"
    assert video_name(None, 0, False) == "eval_ep00_failure.mp4"


@pytest.mark.parametrize("writer", ["imageio-ffmpeg", "opencv"])
def test_write_video_round_trips(writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cv2 = pytest.importorskip("cv2")
    if writer == "opencv":
        monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as on a GPU image without imageio-ffmpeg
    else:
        pytest.importorskip("imageio_ffmpeg")
    frames = [np.full((48, 64, 3), (40 * i, 255 - 40 * i, 128), dtype=np.uint8) for i in range(6)]
    path = tmp_path / "v.mp4"
    write_video(path, frames, fps=5)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp file left behind
    cap = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        read.append(bgr[..., ::-1])
    assert len(read) == 6 and read[0].shape == (48, 64, 3)
    assert np.abs(read[-1].astype(int) - frames[-1]).mean() < 12  # colours survive (lossy codec), RGB order kept


def test_summary_reports_how_far_failing_episodes_got() -> None:
    results = [EpisodeResult(0, False, 0.0, 100, "i", stages={"reached"}),
               EpisodeResult(1, False, 0.0, 100, "i", stages={"reached", "is_grasped"}),
               EpisodeResult(2, True, 1.0, 70, "i", stages={"reached", "is_grasped", "lifted", "over_goal"}),
               EpisodeResult(3, False, 0.0, 100, "i")]
    s = summarize(results)
    assert s.stage_rates == {"reached": 0.75, "is_grasped": 0.5, "lifted": 0.25, "over_goal": 0.25}
    assert s.episodes[1]["stages"] == ["is_grasped", "reached"] and s.successes == 1
