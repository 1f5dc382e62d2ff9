"""Pure evaluation statistics: the Wilson interval and video naming."""

from __future__ import annotations

import pytest

from crane_x7_vla_rl.training.evaluate import video_name, wilson_interval


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
