"""Camera frames: the newest-frame slot, the stale/reuse guard and JPEG/PNG decoding (pure, no asyncio).

Freshness rule. A frame's age is measured on *our* monotonic clock from the moment it was received
(``received_mono``); that is always valid. The header stamp is only trusted when the two hosts' clocks are
comparable, which we decide per frame at receipt: the apparent transport delay ``received_wall - stamp`` must
lie in ``[-STAMP_SKEW_TOLERANCE, MAX_PLAUSIBLE_DELAY]``. With synchronised clocks (same host, NTP, the sim
bridge) the stamp then also counts, so a frame that sat in a queue upstream is caught; with unsynchronised
clocks (a rented GPU and a robot without NTP) the stamp would be meaningless and only receipt age is used.
The effective age is the larger of the two.

Reuse rule. Every received frame gets a sequence number; the slot hands out a frame at most once, so a
model that is faster than the camera never publishes twice from the same image. Only the frame that *gates* a
model tick obeys it: :meth:`FrameSlot.newest` peeks at the newest fresh frame without using it up (a wrist
camera paired with the main one, the freshness check of an open-loop chunk step, the history window).

History. :class:`FrameWindow` keeps the last ``length`` frames the service observed, oldest first, for models
that take ``[t-1, t]`` (MiniVLA history2). At the start (or after a reset) the current frame fills the window,
as the published openvla-mini rollout does at an episode start. It holds compressed frames: decoding is
still paid only for frames a model call actually uses.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from crane_x7_vla.utils.history import SlidingWindow

STAMP_SKEW_TOLERANCE = 0.05  # s a stamp may lie in our future and still count as comparable
MAX_PLAUSIBLE_DELAY = 2.0  # s; a larger apparent delay means the clocks are not comparable
MAX_PIXELS = 4096 * 4096  # decoded-size guard (a small JPEG can declare a huge image)

_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


class FrameError(ValueError):
    """A frame that cannot be used; ``kind`` is a short key for counting and rate-limited logs."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class Frame:
    """One received compressed image, not yet decoded (decoding happens only for frames we act on)."""

    seq: int  # receive order, starting at 1
    data: bytes  # compressed bytes
    format: str  # CompressedImage.format, e.g. "jpeg" or "rgb8; jpeg compressed bgr8"
    received_mono: float  # our monotonic clock at receipt (s)
    received_wall: float  # our wall clock at receipt (s since epoch)
    stamp: float | None = None  # header stamp (s since epoch) or None when absent/zero

    @property
    def stamp_comparable(self) -> bool:
        if self.stamp is None:
            return False
        delay = self.received_wall - self.stamp
        return -STAMP_SKEW_TOLERANCE <= delay <= MAX_PLAUSIBLE_DELAY

    def age(self, now_mono: float, now_wall: float) -> float:
        age = now_mono - self.received_mono
        if self.stamp is not None and self.stamp_comparable:
            age = max(age, now_wall - self.stamp)
        return age


TakeResult = Literal["ok", "none", "used", "stale"]


class FrameSlot:
    """Holds only the newest frame (older ones are dropped and counted) and hands each out at most once."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._frame: Frame | None = None
        self._last_used_seq = 0
        self.received = 0
        self.dropped = 0  # replaced before anyone used them
        self.stale = 0  # too old when a tick wanted them

    def put(self, frame: Frame) -> None:
        if self._frame is not None and self._frame.seq > self._last_used_seq:
            self.dropped += 1
        self._frame = frame
        self.received += 1

    @property
    def has_unused(self) -> bool:
        return self._frame is not None and self._frame.seq > self._last_used_seq

    def take(self, now_mono: float, now_wall: float) -> tuple[TakeResult, Frame | None]:
        """The newest frame if it is unused and fresh; otherwise why not. A taken frame is marked used."""
        frame = self._frame
        if frame is None:
            return "none", None
        if frame.seq <= self._last_used_seq:
            return "used", None
        if frame.age(now_mono, now_wall) > self.max_age:
            # Marked used so it is counted stale once, not once per tick.
            self._last_used_seq = frame.seq
            self.stale += 1
            return "stale", None
        self._last_used_seq = frame.seq
        return "ok", frame

    def newest(self, now_mono: float, now_wall: float) -> Frame | None:
        """The newest frame if it is fresh, used or not (nothing is marked or counted)."""
        frame = self._frame
        if frame is None or frame.age(now_mono, now_wall) > self.max_age:
            return None
        return frame


class FrameWindow(SlidingWindow[Frame]):
    """The last ``length`` distinct frames, oldest first; the first frame after a reset fills the window.

    ``reset`` (new instruction, reconnect) makes the next frame repeat, never mixed with old ones."""

    def push(self, frame: Frame) -> list[Frame]:
        """Add ``frame`` (ignored when it is already the newest) and return the window ``[t-length+1 .. t]``."""
        newest = self.newest
        if newest is not None and newest.seq == frame.seq:
            return list(self._items)
        return super().push(frame)


def image_kind(fmt: str) -> str:
    """``"jpeg"`` or ``"png"`` from a CompressedImage.format string (raises FrameError otherwise)."""
    f = fmt.lower()
    # ROS image_transport writes e.g. "rgb8; jpeg compressed bgr8"; plain "jpeg"/"jpg"/"png" are common too.
    if "jpeg" in f or "jpg" in f:
        return "jpeg"
    if "png" in f:
        return "png"
    raise FrameError("bad_format", f"unsupported CompressedImage.format {fmt!r}; publish jpeg or png")


def decode_image(fmt: str, data: bytes, max_bytes: int) -> NDArray[np.uint8]:
    """Decode a compressed frame to an (H, W, 3) uint8 RGB array, or raise :class:`FrameError`."""
    if not data:
        raise FrameError("empty", "empty image data")
    if len(data) > max_bytes:
        raise FrameError("oversized", f"frame of {len(data)} bytes exceeds the {max_bytes}-byte limit "
                                      "(raise --max-frame-bytes or lower the camera resolution)")
    kind = image_kind(fmt)
    if not data.startswith(_MAGIC[kind]):
        raise FrameError("bad_image", f"data is not a {kind} image (bad magic bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS or w <= 0 or h <= 0:
                raise FrameError("oversized", f"decoded image {w}x{h} exceeds {MAX_PIXELS} pixels")
            img.load()  # forces the decode so truncated data fails here, not later
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except FrameError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FrameError("bad_image", f"cannot decode {kind} frame: {exc}") from exc
    return rgb
