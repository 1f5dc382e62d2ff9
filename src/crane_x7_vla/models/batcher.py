"""Coalesce concurrent single-robot predictions into one batched model call (multi-robot serving).

Design: the callers are threads (each robot's inference service makes its model calls from its own worker
thread), so the batcher is a thread as well, not an asyncio task. A caller preprocesses its own request in its
own thread (``prepare_inputs``: resize + normalise, off the batch's critical path and in parallel across
robots), then hands the prepared inputs over and blocks on a future. The batcher thread takes the oldest
request, waits at most ``max_wait_s`` for company (up to ``max_batch`` requests), stacks the inputs (prompts
left-padded to one length) and makes one ``predict_from_inputs`` call for all of them. Each result carries its
own latency split (queue wait vs model time), and :meth:`BatchedPolicy.stats` summarises recent requests.

:class:`BatchedPolicy` has the policy interface the inference service uses, so several services (one per
robot connection) can share it as if it were the model. That interface, the futures and the latency records
live in :class:`SharedPolicy`, which :class:`~crane_x7_vla.models.continuous.ContinuousBatcher` (continuous
batching over the CUDA engine) shares.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crane_x7_vla.models.processing import ModelInputs

# Model APIs that would bypass the batch (chunk predictions) are not offered by the wrapper.
_NOT_FORWARDED = frozenset({"predict_chunk_from_inputs", "predict_action_chunk"})


@dataclass(frozen=True)
class BatchedPrediction:
    action: np.ndarray  # (action_dim,) float32
    batch_size: int  # how many requests shared the model call
    queue_s: float  # time from submit to the start of the model call
    model_s: float  # duration of the batched model call
    latency_s: float  # submit -> result


@dataclass
class _Request:
    inputs: ModelInputs
    submitted: float
    future: Future[BatchedPrediction]
    ready: torch.cuda.Event | None = None  # recorded after the request's device tensors were written (CUDA)


def stack_inputs(parts: Sequence[ModelInputs], pad_id: int) -> ModelInputs:
    """One left-padded batch from several prepared requests (their prompts may differ in length)."""
    length = max(p.input_ids.shape[1] for p in parts)
    ids = torch.cat([F.pad(p.input_ids, (length - p.input_ids.shape[1], 0), value=pad_id) for p in parts])
    mask = torch.cat([F.pad(p.attention_mask, (length - p.attention_mask.shape[1], 0), value=0) for p in parts])
    return ModelInputs(torch.cat([p.pixel_values for p in parts]), ids, mask)


class SharedPolicy:
    """The policy interface of a model shared by several robots' services: callers preprocess in their own
    threads and block on a future; one worker thread (``_serve``, per subclass) runs the model for all of them
    and resolves the futures with per-request latencies."""

    def __init__(self, policy: Any, *, unnorm_key: str | None, history: int, thread_name: str,
                 start: bool = True) -> None:
        config = getattr(policy, "config", None) or getattr(getattr(policy, "model", None), "config", None)
        self.pad_id = int(getattr(config, "pad_token_id", 0) or 0)
        self.policy = policy
        self.unnorm_key = unnorm_key
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._done: collections.deque[BatchedPrediction] = collections.deque(maxlen=history)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=thread_name, daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the worker thread (once; the constructor does it unless told not to)."""
        if self._thread.ident is None and not self._closed:
            self._thread.start()

    def __getattr__(self, name: str) -> Any:  # model_io and the service read the wrapped model's attributes
        if name in _NOT_FORWARDED or name.startswith("_") or name == "policy":  # "policy": not set yet
            raise AttributeError(name)
        return getattr(self.policy, name)

    # ------------------------------------------------------------------ the policy interface
    def prepare_inputs(self, images: Sequence[Any], instructions: Sequence[str]) -> ModelInputs:
        with self._caller_stream():
            return self.policy.prepare_inputs(images, instructions)  # type: ignore[no-any-return]

    def _caller_stream(self) -> contextlib.AbstractContextManager[Any]:
        """The CUDA stream a caller's preprocessing and submits run on (default: the caller's current one)."""
        return contextlib.nullcontext()

    def predict_from_inputs(self, inputs: ModelInputs, unnorm_key: str | None = None) -> np.ndarray:
        """(B, action_dim) for one caller's prepared rows, computed in a shared batch."""
        if unnorm_key is not None and unnorm_key != self.unnorm_key:
            # Rows of one shared call are unnormalised with one key: it is the batcher's, not the caller's.
            raise ValueError(f"this batcher unnormalises with unnorm_key={self.unnorm_key!r}, got {unnorm_key!r}; "
                             f"pass the key to {type(self).__name__}(..., unnorm_key=...)")
        with self._caller_stream():
            rows = [self.submit(ModelInputs(inputs.pixel_values[i : i + 1], inputs.input_ids[i : i + 1],
                                            inputs.attention_mask[i : i + 1])) for i in range(inputs.batch_size)]
        return np.stack([f.result().action for f in rows])

    def predict_action(self, images: Sequence[Any], instructions: Sequence[str]) -> np.ndarray:
        return self.predict_from_inputs(self.prepare_inputs(images, instructions))

    def predict(self, image: Any, instruction: str) -> BatchedPrediction:
        """One request, blocking: preprocess here, then wait for the shared call."""
        with self._caller_stream():
            fut = self.submit(self.prepare_inputs([image], [instruction]))
        return fut.result()

    def submit(self, inputs: ModelInputs) -> Future[BatchedPrediction]:
        """Queue one prepared request (batch 1); the future resolves when its batch has run. Device tensors
        may still be being written on the caller's current CUDA stream: the worker waits for that stream's
        work up to this call (an event), not for the whole device."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        if inputs.batch_size != 1:
            raise ValueError(f"submit takes one request (batch 1), got {inputs.batch_size}")
        self._check(inputs)
        ready = None
        if inputs.pixel_values.is_cuda:
            ready = torch.cuda.Event()
            ready.record()
        fut: Future[BatchedPrediction] = Future()
        self._queue.put(_Request(inputs, time.perf_counter(), fut, ready))
        return fut

    def stats(self) -> dict[str, float]:
        """Latency p50/p99 (ms), mean batch and queue wait over the last requests (empty before the first)."""
        done = list(self._done)
        if not done:
            return {}
        lat = np.asarray([d.latency_s for d in done]) * 1e3
        return {"requests": float(len(done)), "latency_ms_p50": float(np.percentile(lat, 50)),
                "latency_ms_p99": float(np.percentile(lat, 99)),
                "queue_ms_mean": float(np.mean([d.queue_s for d in done]) * 1e3),
                "mean_batch": float(np.mean([d.batch_size for d in done]))}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            if self._thread.is_alive():
                self._thread.join(timeout=5)
            self._fail_queued()

    # ------------------------------------------------------------------ for the worker
    def _check(self, inputs: ModelInputs) -> None:
        """Refuse a request the worker could not serve (in the caller's thread, with a clear error)."""

    def _serve(self) -> None:
        raise NotImplementedError

    def _resolve(self, req: _Request, action: np.ndarray, batch_size: int, start: float, end: float) -> None:
        done = BatchedPrediction(action, batch_size, start - req.submitted, end - start, end - req.submitted)
        self._done.append(done)
        req.future.set_result(done)

    def _fail_queued(self) -> None:
        """Fail what is still queued (arrived after close)."""
        while not self._queue.empty():
            req = self._queue.get_nowait()
            if req is not None and not req.future.done():
                req.future.set_exception(RuntimeError("the batcher is closed"))


class BatchedPolicy(SharedPolicy):
    """Wrap a single-step policy (an ``OpenVLAEngine`` or an ``OpenVLA``) so concurrent callers share calls."""

    def __init__(self, policy: Any, *, max_batch: int = 8, max_wait_s: float = 0.004,
                 unnorm_key: str | None = None, history: int = 2000) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch} and {max_wait_s}")
        for name in ("prepare_inputs", "predict_from_inputs"):
            if not callable(getattr(policy, name, None)):
                raise ValueError(f"batched serving needs a policy with {name}() (OpenVLA or its engine), "
                                 f"not {type(policy).__name__}")
        if callable(getattr(policy, "predict_action_chunk", None)) and int(getattr(policy, "chunk_size", 1)) > 1:
            raise ValueError("batched multi-robot serving supports single-step policies; a chunked MiniVLA "
                             "serves one robot per process")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        super().__init__(policy, unnorm_key=unnorm_key, history=history, thread_name="vla-batcher")

    # ------------------------------------------------------------------ the batcher thread
    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, stop = [first], False
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                remaining = deadline - time.perf_counter()
                # Past the deadline, still take whatever is already queued without waiting.
                req = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if req is None:
                stop = True
                break
            batch.append(req)
        return batch, stop

    def _serve(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            for r in batch:  # the callers' preprocessing may still run on their streams (see submit)
                if r.ready is not None:
                    torch.cuda.current_stream(r.inputs.pixel_values.device).wait_event(r.ready)
            start = time.perf_counter()
            try:
                actions = np.asarray(self.policy.predict_from_inputs(
                    stack_inputs([r.inputs for r in batch], self.pad_id), self.unnorm_key))
            except Exception as exc:  # one failing batch fails its requests, not the batcher
                for r in batch:
                    r.future.set_exception(exc)
                continue
            end = time.perf_counter()
            for r, action in zip(batch, actions, strict=True):
                self._resolve(r, action, len(batch), start, end)
