"""Shared helpers for the bridge tests: run a coroutine under a hard timeout (no pytest-asyncio needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture
def arun() -> Runner:
    """``arun(coro)``: run ``coro`` in a fresh event loop, failing the test after 20 s instead of hanging."""

    def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run
