"""Concurrent requests are coalesced into bounded batches and each gets its own row back."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from crane_x7_vla.models.batcher import BatchingPredictor


def test_concurrent_requests_share_one_call_and_get_their_rows() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def predict_batch(images, instructions):  # type: ignore[no-untyped-def]
        gate.wait(5)  # hold the first call so that the rest queue up behind it
        calls.append(len(images))
        return np.stack([np.full(8, float(im), np.float32) for im in images])

    async def main() -> list[float]:
        b = BatchingPredictor(predict_batch, max_batch=4, max_wait_s=0.05)
        first = asyncio.create_task(b.predict(0, "a"))
        await asyncio.sleep(0)  # let the first request open its batch
        while b._queue is None or b._worker is None:
            await asyncio.sleep(0)
        rest = [asyncio.create_task(b.predict(i, "x")) for i in range(1, 9)]
        gate.set()
        out = await asyncio.gather(first, *rest)
        await b.close()
        assert all(p.batch_size <= 4 for p in out)
        return [float(p.action[0]) for p in out]

    values = asyncio.run(main())
    assert values == [float(i) for i in range(9)]
    assert sum(calls) == 9 and max(calls) == 4 and len(calls) < 9


def test_model_error_fails_only_that_batch() -> None:
    def predict_batch(images, instructions):  # type: ignore[no-untyped-def]
        if "boom" in instructions:
            raise RuntimeError("model failed")
        return np.zeros((len(images), 8), np.float32)

    async def main() -> None:
        b = BatchingPredictor(predict_batch, max_batch=1, max_wait_s=0.0)
        with pytest.raises(RuntimeError, match="model failed"):
            await b.predict(0, "boom")
        ok = await b.predict(1, "fine")
        assert ok.action.shape == (8,) and ok.batch_size == 1
        await b.close()

    asyncio.run(main())
