"""The inference service loop: camera frames in, one action per tick out, over a rosbridge client.

Shape of a tick (see ``ARCHITECTURE.md``): wait for the next absolute deadline -> take the newest *unused*,
*fresh* frame (waiting up to one period for one) -> decode + model in ONE worker thread (the event loop stays
free for websocket I/O, pings and callbacks) -> reject NaN/inf -> publish ``/vla/predicted_action``.
Frame callbacks only store bytes: decoding is paid for the frames we act on, never for dropped ones.
All policy decisions (scheduling, freshness, statistics) live in the pure modules next to this one.
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
from crane_x7_vla.inference.frames import Frame, FrameError, FrameSlot, decode_image
from crane_x7_vla.inference.ratelimit import RateLimitedLog
from crane_x7_vla.inference.scheduler import RateScheduler
from crane_x7_vla.inference.settings import InferenceSettings
from crane_x7_vla.inference.status import StatusTracker, TickTiming

log = logging.getLogger(__name__)

ACTION_LABELS = tuple(j.label for j in robot.ARM_JOINTS) + ("gripper",)


class Policy(Protocol):
    """What the service needs from a model (``crane_x7_vla.models.OpenVLA`` satisfies it)."""

    def predict_action(self, images: list[NDArray[np.uint8]], instructions: list[str]) -> NDArray[np.floating]:
        """(B, action_dim) un-normalised actions for B images (H, W, 3) uint8 and B instructions."""
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
    action: NDArray[np.float64] | None  # (action_dim,) or None when rejected
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
        self.slot = FrameSlot(settings.max_frame_age)
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
    def on_image(self, msg: dict[str, Any]) -> None:
        now_mono, now_wall = self.clock(), self.wall_clock()
        try:
            img = CompressedImage.from_dict(msg)
        except MessageError as exc:
            self._frame_error("bad_message", f"malformed CompressedImage: {exc}")
            return
        if not img.data:
            self._frame_error("empty", "empty CompressedImage.data")
            return
        if len(img.data) > self.settings.max_frame_bytes:
            self._frame_error("oversized", f"frame of {len(img.data)} bytes > --max-frame-bytes "
                                           f"{self.settings.max_frame_bytes}")
            return
        self._seq += 1
        self.slot.put(Frame(self._seq, img.data, img.format, now_mono, now_wall, header_seconds(img)))
        if self._frame_event is not None:
            self._frame_event.set()

    def on_instruction(self, msg: dict[str, Any]) -> None:
        data = msg.get("data") if isinstance(msg, dict) else None
        if not isinstance(data, str) or not data.strip():
            self.status.record_error("bad_instruction", f"ignored instruction {data!r}")
            self.rlog.warning("bad_instruction", "ignored /vla/update_instruction with data=%r: expected a "
                              "non-empty std_msgs/String", data)
            return
        self.instruction = data.strip()
        self.status.instruction = self.instruction
        log.info("task instruction updated: %r", self.instruction)

    def on_connection_state(self, up: bool) -> None:
        """Client state listener: counts reconnects; frames from before a drop age out by themselves."""
        if up and not self.status.connected and self.status.published:
            self.status.reconnects += 1
            log.info("reconnected to rosbridge; resuming")
        elif not up and self.status.connected and not self._stopping:
            log.warning("lost the rosbridge connection; reconnecting")
        self.status.connected = up

    def _frame_error(self, kind: str, message: str) -> None:
        self.status.record_error(kind, message)
        self.rlog.warning(kind, "skipped camera frame: %s", message)

    # ------------------------------------------------------------------ worker thread
    def _infer(self, frame: Frame, instruction: str) -> WorkerResult:
        t0 = time.perf_counter()
        try:
            image = decode_image(frame.format, frame.data, self.settings.max_frame_bytes)  # (H, W, 3) uint8
        except FrameError as exc:
            return WorkerResult(None, time.perf_counter() - t0, 0.0, 0.0, (exc.kind, str(exc)))
        t1 = time.perf_counter()
        prepare = getattr(self.policy, "prepare_inputs", None)
        predict_prepared = getattr(self.policy, "predict_from_inputs", None)
        t2 = t1
        try:
            if callable(prepare) and callable(predict_prepared):
                inputs = prepare([image], [instruction])
                t2 = time.perf_counter()
                actions = predict_prepared(inputs)  # (1, action_dim)
            else:  # the model does its own preprocessing: reported as part of "model"
                actions = self.policy.predict_action([image], [instruction])  # (1, action_dim)
            action = np.asarray(actions, dtype=np.float64).reshape(-1)  # (action_dim,)
        except Exception as exc:  # a model failure on one frame must not end the service
            log.debug("model failure", exc_info=True)
            return WorkerResult(None, t1 - t0, t2 - t1, time.perf_counter() - t2,
                                ("model_error", f"{type(exc).__name__}: {exc}"))
        t3 = time.perf_counter()
        return WorkerResult(action, t1 - t0, t2 - t1, t3 - t2)

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

    async def _loop(self, stop: asyncio.Event) -> None:
        sched = RateScheduler(self.settings.inference_rate, self.clock())
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if not await self._sleep_until(sched.next_deadline(), stop):
                break
            frame = await self._next_frame(sched.next_deadline() + sched.period, stop)
            if frame is None:
                if not stop.is_set():
                    self.status.ticks_without_frame += 1
                    self.rlog.warning("no_frame", "no fresh camera frame on %s for a whole period",
                                      robot.CAMERA_COMPRESSED_TOPIC)
                    sched.rebase(self.clock())
                continue
            instruction = self.instruction
            result = await loop.run_in_executor(self._executor, self._infer, frame, instruction)
            await self._publish(frame, result, instruction)
            report = sched.complete(self.clock())
            if report.missed:
                self.status.missed_deadlines += report.missed
                self.rlog.warning("slow", "tick took %.0f ms (> %.0f ms period): the model cannot keep up with "
                                  "%.3g Hz; achieved %.2f Hz. Lower --inference-rate or use a faster device",
                                  1e3 * (report.lateness + sched.period), 1e3 * sched.period,
                                  self.settings.inference_rate, self.status.achieved_rate())

    async def _publish(self, frame: Frame, result: WorkerResult, instruction: str) -> None:
        if result.error is not None:
            self._frame_error(*result.error)
            return
        action = result.action
        assert action is not None
        if action.shape[0] != robot.ACTION_DIM:
            self.status.record_error("wrong_action_dim", f"model returned {action.shape[0]} values")
            self.rlog.error("wrong_action_dim", "model returned %d action values, the robot needs %d "
                            "(7 joints + gripper): check --unnorm-key/the checkpoint", action.shape[0], robot.ACTION_DIM)
            return
        if not np.all(np.isfinite(action)):
            self.status.record_error("non_finite_action", "model produced NaN/inf")
            self.rlog.error("non_finite_action", "model produced a NaN/inf action; not published")
            return
        t0 = time.perf_counter()
        try:
            await self.client.publish(robot.PREDICTED_ACTION_TOPIC, action_message(action))
        except (ConnectionError, OSError, RuntimeError) as exc:
            self.status.record_error("publish_failed", str(exc))
            self.rlog.warning("publish_failed", "could not publish the action (%s); the client reconnects", exc)
            return
        publish = time.perf_counter() - t0
        now = self.clock()
        self.status.record_tick(TickTiming(result.decode, result.preprocess, result.model, publish,
                                           now - frame.received_mono), now)
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
        return self.status.snapshot(frames_received=self.slot.received, frames_dropped=self.slot.dropped,
                                    frames_stale=self.slot.stale)
