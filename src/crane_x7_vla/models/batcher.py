"""Coalesce concurrent single-sample predict requests (several robots) into one batched model call.

A request waits at most ``max_wait_s`` for company: the first request of a batch opens a window, requests
arriving inside it join (up to ``max_batch``), then one ``predict_batch`` call serves them all in a worker
thread so the event loop stays free. Each result carries its own latency split (queue wait vs model time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PredictBatch = Callable[[Sequence[Any], Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class BatchedPrediction:
    action: np.ndarray  # (action_dim,) float32
    batch_size: int  # how many requests shared the model call
    queue_s: float  # time from submit to the start of the model call
    model_s: float  # duration of the batched model call
    latency_s: float  # submit -> result


@dataclass
class _Request:
    image: Any
    instruction: str
    submitted: float
    future: asyncio.Future[BatchedPrediction]


class BatchingPredictor:
    """``await predict(image, instruction)`` from many tasks; one model call per coalesced batch."""

    def __init__(self, predict_batch: PredictBatch, *, max_batch: int = 32, max_wait_s: float = 0.004) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self._predict_batch = predict_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-batch")

    async def predict(self, image: Any, instruction: str) -> BatchedPrediction:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="vla-batcher")
        fut: asyncio.Future[BatchedPrediction] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(image, instruction, time.perf_counter(), fut))
        return await fut

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self) -> list[_Request]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                # Still take whatever is already queued without waiting.
                while len(batch) < self.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            start = time.perf_counter()
            try:
                actions = await loop.run_in_executor(
                    self._executor, self._predict_batch, [r.image for r in batch], [r.instruction for r in batch]
                )
            except Exception as exc:  # one failing batch fails its requests, not the batcher
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            end = time.perf_counter()
            for r, action in zip(batch, actions, strict=True):
                if not r.future.done():
                    r.future.set_result(
                        BatchedPrediction(np.asarray(action), len(batch), start - r.submitted, end - start,
                                          end - r.submitted)
                    )
