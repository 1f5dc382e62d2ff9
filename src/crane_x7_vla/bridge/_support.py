"""Small pieces shared by the client and the server: rate-limited logging, backoff, goal execution.

Kept out of ``protocol.py`` because they touch clocks, logging and asyncio; kept out of client/server so
both behave identically (e.g. a goal handler's exception becomes the same ABORTED result on either side).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from crane_x7_vla.bridge.protocol import GoalStatus

FeedbackFn = Callable[[Any], Awaitable[None]]
ActionHandler = Callable[[dict[str, Any], FeedbackFn], Awaitable[Any]]
ServiceHandler = Callable[[dict[str, Any]], Any]


class RateLimitedLog:
    """Log a recurring problem at most once per ``interval`` seconds per key, counting what was suppressed.

    A flood of malformed frames must neither fill the disk nor hide the first occurrence.
    """

    def __init__(self, logger: logging.Logger, interval: float = 5.0, max_keys: int = 256) -> None:
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) >= self._max_keys and key not in self._last:
            self._last.clear()  # unbounded distinct keys must not grow memory
            self._suppressed.clear()
        skipped = self._suppressed.pop(key, 0)
        self._last[key] = now
        suffix = f" ({skipped} similar suppressed)" if skipped else ""
        self._logger.log(level, msg + suffix, *args, exc_info=exc_info)


def backoff_delay(attempt: int, minimum: float, maximum: float, rand: float) -> float:
    """Capped exponential backoff with "equal jitter": half the step is fixed, half uniform (``rand`` in [0,1)).

    The fixed half keeps a floor between attempts; the random half spreads many clients that lost the same
    server so they do not reconnect in lockstep.
    """
    step = min(maximum, minimum * 2.0 ** min(attempt, 30))
    return step * (0.5 + 0.5 * rand)


async def call_handler(handler: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async handler and return its result."""
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_goal(
    handler: ActionHandler,
    args: dict[str, Any],
    send_feedback: FeedbackFn,
) -> tuple[int, Any, bool]:
    """Run one action goal to its end; return ``(status, values, result)`` for the ``action_result`` op.

    Cancellation arrives as ``asyncio.CancelledError`` inside the handler (it may clean up); a handler that
    swallows it and returns still counts as CANCELED when a cancel was requested by the caller.
    """
    try:
        values = await handler(args, send_feedback)
    except asyncio.CancelledError:
        return int(GoalStatus.CANCELED), {}, True
    except Exception as exc:  # a failing handler aborts its goal, never the service
        return int(GoalStatus.ABORTED), f"{type(exc).__name__}: {exc}", False
    return int(GoalStatus.SUCCEEDED), values if values is not None else {}, True
