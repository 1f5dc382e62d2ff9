"""Drift-free scheduling with an injected clock."""

from __future__ import annotations

import pytest

from crane_x7_vla.inference.scheduler import RateScheduler


def test_deadlines_do_not_drift_with_work_time() -> None:
    sched = RateScheduler(10.0, start=100.0)
    now = 100.0
    for i in range(1000):
        now = max(now, sched.next_deadline())  # "sleep" until the deadline
        assert sched.next_deadline() == pytest.approx(100.0 + i * 0.1, abs=1e-9)
        now += 0.037  # work that takes a third of the period
        report = sched.complete(now)
        assert report.missed == 0 and report.lateness < 0
    # 1000 ticks at 10 Hz end exactly 100 s after start: no accumulated drift.
    assert sched.next_deadline() == pytest.approx(200.0, abs=1e-9)


def test_overrun_skips_missed_deadlines_without_burst() -> None:
    sched = RateScheduler(10.0, start=0.0)
    report = sched.complete(0.35)  # tick 0 overran deadlines 1, 2, 3
    assert report.missed == 3 and report.lateness == pytest.approx(0.25)
    assert sched.next_deadline() == pytest.approx(0.4)  # next grid point after now, never in the past
    assert sched.delay(0.35) == pytest.approx(0.05)
    assert sched.total_missed == 3
    # Finishing exactly on a deadline moves past it.
    sched.complete(0.5)
    assert sched.next_deadline() == pytest.approx(0.6)


def test_rebase_and_bad_rate() -> None:
    sched = RateScheduler(5.0, start=0.0)
    sched.rebase(50.0)
    assert sched.next_deadline() == 50.0 and sched.delay(49.9) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="positive"):
        RateScheduler(0.0, start=0.0)
