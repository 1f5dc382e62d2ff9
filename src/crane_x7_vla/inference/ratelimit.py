"""Rate-limited logging for per-frame problems.

A bad camera stream can produce the same error 30 times a second; logging each one would drown the log and
cost real time in the control loop. Each *key* (e.g. ``"bad_jpeg"``) logs at most once per ``interval``
seconds and the next message says how many were suppressed. The clock is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Log at most once per ``interval`` seconds per key, counting what was suppressed."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` under ``key`` unless it was logged less than ``interval`` ago.

        Returns True when the message was emitted.
        """
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg = f"{msg} (+{skipped} similar suppressed in the last {self._interval:g}s)"
        self._logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)
