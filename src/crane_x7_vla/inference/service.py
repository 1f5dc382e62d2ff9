"""The inference service loop: camera frames in, one action per tick out, over a rosbridge client.

Shape of a tick (see ``ARCHITECTURE.md``): wait for the next absolute deadline -> take the newest *unused*,
*fresh* frame (waiting up to one period for one) -> decode + model in ONE worker thread (the event loop stays
free for websocket I/O, pings and callbacks) -> reject NaN/inf -> publish ``/vla/predicted_action``.
Frame callbacks only store bytes: decoding is paid for the frames we act on, never for dropped ones.
All policy decisions (scheduling, freshness, chunks, statistics) live in the pure modules next to this one.

Models that want more than one image get them in their own order: the history window ``[t-1, t]``
(:class:`~.frames.FrameWindow`, which repeats the current frame at the start) and then the newest fresh wrist
frame. Chunked models (``--chunk-steps N``): the tick that runs the model publishes step 0 of the predicted
chunk and the next ``N - 1`` ticks publish the following steps without running it (:class:`~.chunks.ChunkExecutor`),
as long as the camera feed stays fresh and the instruction does not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla import robot
from crane_x7_vla.bridge.messages import (
    CompressedImage,
    Float32MultiArray,
    MessageError,
    MultiArrayDimension,
    String,
)
from crane_x7_vla.inference.chunks import ChunkExecutor
from crane_x7_vla.inference.frames import Frame, FrameError, FrameSlot, FrameWindow, decode_image
from crane_x7_vla.inference.ratelimit import RateLimitedLog
from crane_x7_vla.inference.scheduler import RateScheduler
from crane_x7_vla.inference.settings import InferenceSettings, check_against_model, model_io
from crane_x7_vla.inference.status import StatusTracker, TickTiming

log = logging.getLogger(__name__)

ACTION_LABELS = tuple(j.label for j in robot.ARM_JOINTS) + ("gripper",)


class Policy(Protocol):
    """What the service needs from a model (``OpenVLA`` and ``MiniVLA`` of ``crane_x7_vla.models`` satisfy it).

    Optional, used when present: ``prepare_inputs`` + ``predict_chunk_from_inputs`` / ``predict_from_inputs``
    (preprocessing timed apart from the model), ``predict_action_chunk``, ``chunk_size`` and ``config`` (see
    :func:`~.settings.model_io`).
    """

    def predict_action(self, images: list[Any], instructions: list[str]) -> NDArray[np.floating]:
        """(B, action_dim) un-normalised actions for B samples (an (H, W, 3) uint8 image, or the model's list)."""
        ...


class Client(Protocol):
    """The subset of :class:`crane_x7_vla.bridge.client.RosbridgeClient` the service uses."""

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def subscribe(self, topic: str, msg_type: str | None, callback: Callable[[dict[str, Any]], Any], *,
                        queue_length: int = 0, throttle_rate: int = 0, compression: str = "none") -> Any: ...
    async def advertise(self, topic: str, msg_type: str) -> Any: ...
    async def publish(self, topic: str, msg: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class WorkerResult:
    chunk: NDArray[np.float64] | None  # (chunk_len, action_dim) or None when rejected
    decode: float
    preprocess: float
    model: float
    error: tuple[str, str] | None = None  # (kind, message) when the tick produced no action


def action_message(action: Sequence[float] | NDArray[np.floating]) -> dict[str, Any]:
    """``std_msgs/Float32MultiArray`` with a filled layout (one labelled dimension of 8)."""
    n = len(action)
    label = "action[" + ",".join(ACTION_LABELS) + "]" if n == len(ACTION_LABELS) else "action"
    return Float32MultiArray(tuple(float(x) for x in action), (MultiArrayDimension(label, n, n),)).to_dict()


def header_seconds(img: CompressedImage) -> float | None:
    """The header stamp in seconds, or None when unset (0) -- many drivers leave it empty."""
    s = img.header.stamp.to_seconds()
    return s if s > 0 else None


class InferenceService:
    """One rosbridge client, one model, one tick loop. ``await run(stop)``; set ``stop`` to end."""

    def __init__(
        self,
        settings: InferenceSettings,
        policy: Policy,
        client: Client,
        *,
        model_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.client = client
        self.clock = clock
        self.wall_clock = wall_clock
        self.io = model_io(policy)
        problems = check_against_model(settings, self.io)
        if problems:
            raise ValueError("the settings do not fit the model:\n  - " + "\n  - ".join(problems))
        self.slot = FrameSlot(settings.max_frame_age)
        # Only subscribed when the model takes a wrist image (a configured topic is otherwise ignored).
        self.wrist_slot: FrameSlot | None = FrameSlot(settings.max_frame_age) if self.io.wrist else None
        self.history = FrameWindow(self.io.history)
        self.chunks = ChunkExecutor(settings.chunk_steps)
        self._instruction_epoch = 0  # bumped on every instruction change; a model call remembers its epoch
        self._decoded: dict[int, NDArray[np.uint8]] = {}  # worker thread only: seq -> image of the last call
        self.status = StatusTracker(model=model_name or settings.model_path, instruction=settings.instruction,
                                    target_rate=settings.inference_rate)
        self.rlog = RateLimitedLog(log)
        self.instruction = settings.instruction
        self._seq = 0
        self._stopping = False
        self._frame_event: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-model")
        self.on_action: Callable[[NDArray[np.float64], str], None] | None = None  # hook for the demo

    # ------------------------------------------------------------------ callbacks (event loop thread)
    def _parse_frame(self, msg: dict[str, Any], camera: str) -> Frame | None:
        now_mono, now_wall = self.clock(), self.wall_clock()
        try:
            img = CompressedImage.from_dict(msg)
        except MessageError as exc:
            self._frame_error("bad_message", f"malformed {camera} CompressedImage: {exc}")
            return None
        if not img.data:
            self._frame_error("empty", f"empty {camera} CompressedImage.data")
            return None
        if len(img.data) > self.settings.max_frame_bytes:
            self._frame_error("oversized", f"{camera} frame of {len(img.data)} bytes > --max-frame-bytes "
                                           f"{self.settings.max_frame_bytes}")
            return None
        self._seq += 1  # one sequence over both cameras: a seq names one image
        return Frame(self._seq, img.data, img.format, now_mono, now_wall, header_seconds(img))

    def on_image(self, msg: dict[str, Any]) -> None:
        frame = self._parse_frame(msg, "camera")
        if frame is None:
            return
        self.slot.put(frame)
        if self._frame_event is not None:
            self._frame_event.set()

    def on_wrist_image(self, msg: dict[str, Any]) -> None:
        frame = self._parse_frame(msg, "wrist camera")
        if frame is not None and self.wrist_slot is not None:
            self.wrist_slot.put(frame)

    def on_instruction(self, msg: dict[str, Any]) -> None:
        data = msg.get("data") if isinstance(msg, dict) else None
        if not isinstance(data, str) or not data.strip():
            self.status.record_error("bad_instruction", f"ignored instruction {data!r}")
            self.rlog.warning("bad_instruction", "ignored /vla/update_instruction with data=%r: expected a "
                              "non-empty std_msgs/String", data)
            return
        self.instruction = data.strip()
        self.status.instruction = self.instruction
        # The rest of a chunk and the frame history belong to the old task.
        self._instruction_epoch += 1
        if self.chunks.discard("instruction"):
            log.info("discarded the rest of the action chunk: new instruction")
        self.history.reset()
        log.info("task instruction updated: %r", self.instruction)

    def on_connection_state(self, up: bool) -> None:
        """Client state listener: counts reconnects; frames from before a drop age out by themselves."""
        if up and not self.status.connected and self.status.published:
            self.status.reconnects += 1
            self.history.reset()  # frames from before the drop are not the previous step any more
            log.info("reconnected to rosbridge; resuming")
        elif not up and self.status.connected and not self._stopping:
            self.chunks.discard("disconnected")
            log.warning("lost the rosbridge connection; reconnecting")
        self.status.connected = up

    def _frame_error(self, kind: str, message: str) -> None:
        self.status.record_error(kind, message)
        self.rlog.warning(kind, "skipped camera frame: %s", message)

    # ------------------------------------------------------------------ worker thread
    def _decode(self, frames: Sequence[Frame]) -> list[NDArray[np.uint8]]:
        """Decode ``frames`` (H, W, 3) uint8, reusing the previous call's images (history2 decodes t-1 once)."""
        cache = {f.seq: self._decoded[f.seq] if f.seq in self._decoded
                 else decode_image(f.format, f.data, self.settings.max_frame_bytes) for f in frames}
        self._decoded = cache
        return [cache[f.seq] for f in frames]

    def _predict_chunk(self, sample: Any, instruction: str) -> tuple[Any, float]:
        """One query -> (chunk (1, K, D), seconds of preprocessing); the fastest API the policy offers."""
        pol = self.policy
        prepare = getattr(pol, "prepare_inputs", None)
        chunk_prepared = getattr(pol, "predict_chunk_from_inputs", None)
        first_prepared = getattr(pol, "predict_from_inputs", None)
        if callable(prepare) and (callable(chunk_prepared) or callable(first_prepared)):
            t0 = time.perf_counter()
            inputs = prepare([sample], [instruction])
            prep = time.perf_counter() - t0
            if callable(chunk_prepared):
                return chunk_prepared(inputs), prep  # (1, K, D)
            assert callable(first_prepared)
            return np.asarray(first_prepared(inputs))[:, None], prep  # (1, D) -> (1, 1, D)
        # The model does its own preprocessing: reported as part of "model".
        chunk_fn = getattr(pol, "predict_action_chunk", None)
        if callable(chunk_fn):
            return chunk_fn([sample], [instruction]), 0.0
        return np.asarray(pol.predict_action([sample], [instruction]))[:, None], 0.0

    def _infer(self, frames: Sequence[Frame], instruction: str) -> WorkerResult:
        """Worker thread: decode the model's frames (in its order) and query it once."""
        t0 = time.perf_counter()
        try:
            images = self._decode(frames)
        except FrameError as exc:
            return WorkerResult(None, time.perf_counter() - t0, 0.0, 0.0, (exc.kind, str(exc)))
        t1 = time.perf_counter()
        sample: Any = images[0] if len(images) == 1 else images  # one image, or [t-1, t] / [main, wrist]
        prep = 0.0
        try:
            out, prep = self._predict_chunk(sample, instruction)
            chunk = np.asarray(out, dtype=np.float64)
            chunk = chunk.reshape(chunk.shape[-2] if chunk.ndim >= 2 else 1, -1)  # (K, action_dim)
        except Exception as exc:  # a model failure on one frame must not end the service
            log.debug("model failure", exc_info=True)
            return WorkerResult(None, t1 - t0, prep, time.perf_counter() - t1 - prep,
                                ("model_error", f"{type(exc).__name__}: {exc}"))
        t3 = time.perf_counter()
        return WorkerResult(chunk, t1 - t0, prep, t3 - t1 - prep)

    # ------------------------------------------------------------------ main loop
    async def run(self, stop: asyncio.Event) -> None:
        self._frame_event = asyncio.Event()
        await self._connect(stop)
        if stop.is_set():
            return
        status_task = asyncio.create_task(self._status_loop(stop), name="vla-status")
        try:
            await self._loop(stop)
        finally:
            self._stopping = True
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
            self._executor.shutdown(wait=True)
            with contextlib.suppress(Exception):
                await self.client.close()

    async def _connect(self, stop: asyncio.Event) -> None:
        """First connection: retry until PEER_WAIT_TIMEOUT (the robot may come up after us)."""
        s = self.settings
        deadline = self.clock() + s.peer_wait_timeout
        delay = 0.5
        while True:
            try:
                await self.client.connect()
                break
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                if self.clock() + delay > deadline:
                    raise ConnectionError(
                        f"could not reach rosbridge at {s.rosbridge_host}:{s.rosbridge_port} within "
                        f"{s.peer_wait_timeout:g}s ({exc}); is rosbridge running and the tunnel/Tailscale up? "
                        "Raise PEER_WAIT_TIMEOUT to wait longer") from exc
                self.rlog.warning("connect", "rosbridge %s:%s not reachable yet (%s); retrying",
                                  s.rosbridge_host, s.rosbridge_port, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    return
                delay = min(delay * 2, 5.0)
        self.status.connected = True
        # queue_length 1 + throttle at the tick period: the server never buffers a backlog of old frames.
        throttle_ms = int(1000.0 * s.period)
        await self.client.subscribe(robot.CAMERA_COMPRESSED_TOPIC, CompressedImage.TYPE, self.on_image,
                                    queue_length=1, throttle_rate=throttle_ms, compression="cbor")
        if self.wrist_slot is not None and s.wrist_image_topic:
            await self.client.subscribe(s.wrist_image_topic, CompressedImage.TYPE, self.on_wrist_image,
                                        queue_length=1, throttle_rate=throttle_ms, compression="cbor")
        elif s.wrist_image_topic:
            log.warning("--wrist-image-topic %s ignored: this model takes no wrist image", s.wrist_image_topic)
        await self.client.subscribe(robot.UPDATE_INSTRUCTION_TOPIC, String.TYPE, self.on_instruction,
                                    queue_length=1)
        await self.client.advertise(robot.PREDICTED_ACTION_TOPIC, Float32MultiArray.TYPE)
        await self.client.advertise(robot.INFERENCE_STATUS_TOPIC, String.TYPE)
        log.info("connected to rosbridge %s:%s; publishing %s at %.3g Hz", s.rosbridge_host, s.rosbridge_port,
                 robot.PREDICTED_ACTION_TOPIC, s.inference_rate)

    async def _sleep_until(self, t: float, stop: asyncio.Event) -> bool:
        """Sleep until clock() >= t; False when ``stop`` was set first."""
        delay = t - self.clock()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        return not stop.is_set()

    async def _next_frame(self, until: float, stop: asyncio.Event) -> Frame | None:
        """The newest fresh unused frame, waiting for one until ``until`` (monotonic)."""
        assert self._frame_event is not None
        while not stop.is_set():
            self._frame_event.clear()
            result, frame = self.slot.take(self.clock(), self.wall_clock())
            if frame is not None:
                return frame
            if result == "stale":
                self.rlog.warning("stale", "dropped a camera frame older than %.3gs (network or camera lag)",
                                  self.settings.max_frame_age)
            remaining = until - self.clock()
            if remaining <= 0:
                return None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._frame_event.wait(), timeout=remaining)
        return None

    def open_loop_action(self) -> NDArray[np.float64] | None:
        """The next step of the current chunk, or None when the model must run (chunk used up or discarded).

        A queued step is only executed while every camera the model watches is live (its newest frame is
        fresh) and the link is up; otherwise the rest of the chunk is dropped and the tick falls back to the
        normal path, which waits for a fresh frame. The newest frame joins the history window, so a history
        model's ``t-1`` stays one tick old while the chunk runs.
        """
        if not self.chunks.pending:
            return None
        now_mono, now_wall = self.clock(), self.wall_clock()
        if not self.status.connected:
            self.chunks.discard("disconnected")
            return None
        newest = self.slot.newest(now_mono, now_wall)
        wrist_ok = self.wrist_slot is None or self.wrist_slot.newest(now_mono, now_wall) is not None
        if newest is None or not wrist_ok:
            n = self.chunks.discard("stale_frame")
            self.rlog.warning("chunk_stale", "discarded %d open-loop step(s): the camera feed is older than %.3gs",
                              n, self.settings.max_frame_age)
            return None
        if self.io.history > 1:
            self.history.push(newest)
        return self.chunks.pop()

    async def _loop(self, stop: asyncio.Event) -> None:
        sched = RateScheduler(self.settings.inference_rate, self.clock())
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if not await self._sleep_until(sched.next_deadline(), stop):
                break
            step = self.open_loop_action()
            if step is not None:
                await self._publish_action(step, self.instruction, None)
                self.status.missed_deadlines += sched.complete(self.clock()).missed
                continue
            frame = await self._next_frame(sched.next_deadline() + sched.period, stop)
            if frame is None:
                if not stop.is_set():
                    self.status.ticks_without_frame += 1
                    self.rlog.warning("no_frame", "no fresh camera frame on %s for a whole period",
                                      robot.CAMERA_COMPRESSED_TOPIC)
                    sched.rebase(self.clock())
                continue
            frames = self._model_frames(frame)
            if frames is None:
                sched.complete(self.clock())
                continue
            instruction, epoch = self.instruction, self._instruction_epoch
            result = await loop.run_in_executor(self._executor, self._infer, frames, instruction)
            await self._publish(frame, result, instruction, queue_rest=epoch == self._instruction_epoch)
            report = sched.complete(self.clock())
            if report.missed:
                self.status.missed_deadlines += report.missed
                self.rlog.warning("slow", "tick took %.0f ms (> %.0f ms period): the model cannot keep up with "
                                  "%.3g Hz; achieved %.2f Hz. Lower --inference-rate or use a faster device",
                                  1e3 * (report.lateness + sched.period), 1e3 * sched.period,
                                  self.settings.inference_rate, self.status.achieved_rate())

    def _model_frames(self, frame: Frame) -> list[Frame] | None:
        """The frames of one query in the model's order: history ``[t-1, t]`` then the wrist frame."""
        wrist: Frame | None = None
        if self.wrist_slot is not None:
            wrist = self.wrist_slot.newest(self.clock(), self.wall_clock())
            if wrist is None:
                self.status.ticks_without_frame += 1
                self.rlog.warning("no_wrist_frame", "no fresh wrist frame on %s; skipping the tick",
                                  self.settings.wrist_image_topic)
                return None
        frames = self.history.push(frame)
        return [*frames, wrist] if wrist is not None else frames

    async def _publish(self, frame: Frame, result: WorkerResult, instruction: str, *, queue_rest: bool) -> None:
        if result.error is not None:
            self._frame_error(*result.error)
            return
        assert result.chunk is not None
        part = self.chunks.executed_part(result.chunk)  # (n, D): the steps that will run
        if part.shape[1] != robot.ACTION_DIM:
            self.status.record_error("wrong_action_dim", f"model returned {part.shape[1]} values")
            self.rlog.error("wrong_action_dim", "model returned %d action values, the robot needs %d "
                            "(7 joints + gripper): check --unnorm-key/the checkpoint", part.shape[1], robot.ACTION_DIM)
            return
        if not np.all(np.isfinite(part)):
            self.status.record_error("non_finite_action", "model produced NaN/inf")
            self.rlog.error("non_finite_action", "model produced a NaN/inf action; not published")
            return
        action = self.chunks.start(part, queue_rest=queue_rest)
        timing = (result.decode, result.preprocess, result.model, frame.received_mono)
        await self._publish_action(action, instruction, timing)

    async def _publish_action(self, action: NDArray[np.float64], instruction: str,
                              timing: tuple[float, float, float, float] | None) -> None:
        """Publish one action; ``timing`` (decode, preprocess, model, frame receipt) for model ticks, else None."""
        t0 = time.perf_counter()
        try:
            await self.client.publish(robot.PREDICTED_ACTION_TOPIC, action_message(action))
        except (ConnectionError, OSError, RuntimeError) as exc:
            self.status.record_error("publish_failed", str(exc))
            self.rlog.warning("publish_failed", "could not publish the action (%s); the client reconnects", exc)
            return
        publish = time.perf_counter() - t0
        now = self.clock()
        if timing is None:
            self.status.record_open_loop(now)  # no model ran: the latency windows stay about model ticks
        else:
            decode, preprocess, model, received = timing
            self.status.record_tick(TickTiming(decode, preprocess, model, publish, now - received), now)
        if self.on_action is not None:
            self.on_action(action, instruction)

    async def _status_loop(self, stop: asyncio.Event) -> None:
        last_log = self.clock()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.status_period)
            snap = self.snapshot()
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                await self.client.publish(robot.INFERENCE_STATUS_TOPIC, String(json.dumps(snap)).to_dict())
            if self.clock() - last_log >= 10.0:
                last_log = self.clock()
                log.info("status: %.2f/%.3g Hz, model p50 %s ms, frames %s, errors %s", snap["achieved_rate_hz"],
                         snap["target_rate_hz"], snap["latency_ms"]["model"].get("p50"), snap["frames"],
                         snap["errors"])

    def snapshot(self) -> dict[str, Any]:
        snap = self.status.snapshot(frames_received=self.slot.received, frames_dropped=self.slot.dropped,
                                    frames_stale=self.slot.stale)
        snap["chunk"] = self.chunks.snapshot()
        if self.wrist_slot is not None:
            snap["wrist_frames"] = {"received": self.wrist_slot.received}
        batch_stats = getattr(self.policy, "stats", None)  # shared multi-robot batcher: per-request latency
        if callable(batch_stats):
            snap["batch"] = batch_stats()
        return snap
