"""Newest-frame slot, stale and reuse guards, and decoding of good and malformed images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crane_x7_vla.inference.frames import Frame, FrameError, FrameSlot, decode_image


def jpeg(h: int = 32, w: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def frame(seq: int, mono: float, wall: float = 1000.0, stamp: float | None = None) -> Frame:
    return Frame(seq=seq, data=b"x", format="jpeg", received_mono=mono, received_wall=wall, stamp=stamp)


def test_newest_only_and_never_reused() -> None:
    slot = FrameSlot(max_age=0.5)
    assert slot.take(0.0, 0.0) == ("none", None)
    slot.put(frame(1, 10.0))
    slot.put(frame(2, 10.1))  # frame 1 never used: dropped
    status, f = slot.take(10.2, 1000.0)
    assert status == "ok" and f is not None and f.seq == 2
    assert slot.take(10.2, 1000.0) == ("used", None)
    assert (slot.received, slot.dropped) == (2, 1)


def test_stale_by_receipt_age() -> None:
    slot = FrameSlot(max_age=0.5)
    slot.put(frame(1, 10.0))
    assert slot.take(10.6, 1000.0) == ("stale", None)
    assert slot.stale == 1
    assert slot.take(10.7, 1000.0) == ("used", None)  # counted once, never used later


def test_stamp_counts_only_when_clocks_are_comparable() -> None:
    slot = FrameSlot(max_age=0.5)
    # Comparable clocks: the frame was stamped 0.4 s before receipt and sat 0.2 s here -> 0.6 s old.
    slot.put(frame(1, mono=10.0, wall=1000.0, stamp=999.6))
    assert slot.take(10.2, 1000.2)[0] == "stale"
    # Robot clock an hour behind: the stamp is ignored, only receipt age (0.2 s) counts.
    slot.put(frame(2, mono=20.0, wall=1000.0, stamp=-2600.0))
    assert slot.take(20.2, 1000.2)[0] == "ok"


def test_decode_good_jpeg_and_png() -> None:
    img = decode_image("rgb8; jpeg compressed bgr8", jpeg(), max_bytes=1 << 20)
    assert img.shape == (32, 48, 3) and img.dtype == np.uint8
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(buf, format="PNG")
    assert decode_image("png", buf.getvalue(), max_bytes=1 << 20).shape == (5, 7, 3)


@pytest.mark.parametrize(("fmt", "data", "kind"), [
    ("jpeg", b"", "empty"),
    ("jpeg", b"\xff\xd8\xff" + b"\x00" * 100, "bad_image"),
    ("jpeg", b"GIF89a....", "bad_image"),
    ("bmp", b"BM....", "bad_format"),
    ("jpeg", b"\xff\xd8\xff" * 1000, "oversized"),
])
def test_decode_rejects_malformed(fmt: str, data: bytes, kind: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_image(fmt, data, max_bytes=2000)
    assert info.value.kind == kind


def test_decode_rejects_truncated_jpeg() -> None:
    data = jpeg(64, 64)
    with pytest.raises(FrameError):
        decode_image("jpeg", data[: len(data) // 2], max_bytes=1 << 20)
