"""The one sliding-window rule every multi-frame consumer shares: an episode start repeats its first frame."""

from __future__ import annotations

import pytest

from crane_x7_vla.utils.history import SlidingWindow


def test_first_push_fills_then_slides_oldest_first() -> None:
    w: SlidingWindow[int] = SlidingWindow(3)
    assert w.newest is None
    assert w.push(1) == [1, 1, 1]
    assert w.push(2) == [1, 1, 2]
    assert w.push(3) == [1, 2, 3] and w.push(4) == [2, 3, 4] and w.newest == 4
    w.reset()
    assert w.push(9) == [9, 9, 9]  # never mixed with the previous episode


def test_returned_window_is_a_copy_and_length_is_checked() -> None:
    w: SlidingWindow[str] = SlidingWindow(2)
    got = w.push("a")
    got.append("x")
    assert w.push("b") == ["a", "b"]
    with pytest.raises(ValueError, match=">= 1"):
        SlidingWindow(0)
