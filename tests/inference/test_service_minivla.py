"""The inference service with tiny MiniVLAs: open-loop action chunks, history2 frames, the wrist camera.

Closed-loop tests run over a real RosbridgeServer on 127.0.0.1 (as test_service_loop.py); the chunk-discard rules
are checked synchronously on a service that never connects, with a controlled clock.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import time
from typing import Any

import numpy as np
import pytest
from inference_helpers import QueryRecorder, jpeg_bytes, loopback_settings, wait_until

from crane_x7_vla import robot
from crane_x7_vla.bridge.client import RosbridgeClient
from crane_x7_vla.bridge.messages import CompressedImage, Float32MultiArray, Header, String, Time
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.inference.frames import Frame
from crane_x7_vla.inference.service import InferenceService
from crane_x7_vla.inference.settings import InferenceSettings

WRIST_TOPIC = "/test_wrist/image_raw/compressed"  # a test-only name: the robot spec defines no wrist topic


def settings(port: int, **kw: Any) -> InferenceSettings:
    return loopback_settings(port, **{"inference_rate": 20.0, **kw})


until = functools.partial(wait_until, timeout=15.0)


def publish_frame(server: RosbridgeServer, topic: str, data: bytes) -> None:
    header = Header(Time.from_seconds(time.time()), "cam")
    server.publish(topic, CompressedImage.TYPE, CompressedImage(data, "jpeg", header))


async def camera(server: RosbridgeServer, topic: str = robot.CAMERA_COMPRESSED_TOPIC, size: int = 96) -> None:
    i = 0
    while True:
        publish_frame(server, topic, jpeg_bytes(i, size))  # every frame distinct
        i += 1
        await asyncio.sleep(1 / 30)  # a camera's frame period, not synchronisation


async def run_service(policy: Any, cfg: dict[str, Any], body: Any, wrist: bool = False) -> InferenceService:
    """Start server, camera(s) and service; run ``body(server, service, published)``; stop everything."""
    async with RosbridgeServer(port=0) as server:
        published: list[np.ndarray] = []
        server.add_subscriber(robot.PREDICTED_ACTION_TOPIC,
                              lambda m: published.append(np.asarray(Float32MultiArray.from_dict(m).data)))
        service = InferenceService(settings(server.port, **cfg), policy, RosbridgeClient("127.0.0.1", server.port))
        stop = asyncio.Event()
        cams = [asyncio.create_task(camera(server))]
        if wrist:
            cams.append(asyncio.create_task(camera(server, WRIST_TOPIC, size=64)))
        run = asyncio.create_task(service.run(stop))
        try:
            await body(server, service, published)
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)
            for c in cams:
                c.cancel()
    return service


def test_chunk_of_4_runs_the_model_once_per_4_actions(minivla_vq: Any) -> None:
    policy = QueryRecorder(minivla_vq)
    hooked: list[np.ndarray] = []

    async def body(server: RosbridgeServer, service: InferenceService, published: list[np.ndarray]) -> None:
        service.on_action = lambda a, _i: hooked.append(a)
        await until(lambda: len(hooked) >= 10 and len(published) >= 8)

    service = asyncio.run(asyncio.wait_for(run_service(policy, {"chunk_steps": 4, "max_frame_age": 5.0}, body), 60))
    n = len(hooked)
    assert len(policy.chunks) == math.ceil(n / 4)  # one model query per 4 published actions
    expected = np.concatenate([c[:4] for c in policy.chunks])[:n]  # steps 0..3 of each chunk, in order
    np.testing.assert_array_equal(np.stack(hooked), expected)
    assert not np.allclose(expected[0], expected[1])  # the open-loop steps are the chunk's, not step 0 repeated
    snap = service.snapshot()["chunk"]
    assert (snap["chunks"], snap["open_loop_actions"]) == (len(policy.chunks), n - len(policy.chunks))
    assert service.status.published == n


def test_history2_gets_previous_and_current_frame(minivla_history2: Any) -> None:
    policy = QueryRecorder(minivla_history2)

    async def body(server: RosbridgeServer, service: InferenceService, published: list[np.ndarray]) -> None:
        await until(lambda: len(published) >= 3)
        server.publish(robot.UPDATE_INSTRUCTION_TOPIC, String.TYPE, String("place the cube"))
        await until(lambda: policy.instructions.count("place the cube") >= 2)

    asyncio.run(asyncio.wait_for(run_service(policy, {}, body), 60))
    s = policy.samples
    assert all(len(x) == 2 for x in s)
    np.testing.assert_array_equal(s[0][0], s[0][1])  # start: the current frame is repeated
    for prev, cur in itertools.pairwise(s):
        if cur[0] is not cur[1]:  # not a reset
            assert cur[0] is prev[1]  # t-1 = the previous query's t (decoded once)
            assert not np.array_equal(cur[0], cur[1])
    j = policy.instructions.index("place the cube")
    np.testing.assert_array_equal(s[j][0], s[j][1])  # a new instruction starts a new history
    assert s[j + 1][0] is s[j][1] and not np.array_equal(s[j + 1][0], s[j + 1][1])


def test_wrist_frames_follow_the_main_frame(minivla_wrist: Any) -> None:
    policy = QueryRecorder(minivla_wrist)
    with pytest.raises(ValueError, match="VLA_WRIST_IMAGE_TOPIC"):
        InferenceService(settings(1), policy, RosbridgeClient("127.0.0.1", 1))

    async def body(server: RosbridgeServer, service: InferenceService, published: list[np.ndarray]) -> None:
        await until(lambda: len(published) >= 3)

    service = asyncio.run(asyncio.wait_for(
        run_service(policy, {"wrist_image_topic": WRIST_TOPIC}, body, wrist=True), 60))
    assert policy.samples and all([x.shape for x in s] == [(96, 96, 3), (64, 64, 3)] for s in policy.samples)
    assert service.snapshot()["wrist_frames"]["received"] > 0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rest_of_chunk_discarded_on_new_instruction_stale_frame_or_disconnect(minivla_vq: Any) -> None:
    clock = Clock()
    service = InferenceService(InferenceSettings(model_path="tiny", device="cpu", chunk_steps=4, max_frame_age=0.5),
                               minivla_vq, RosbridgeClient("127.0.0.1", 1), clock=clock, wall_clock=lambda: 0.0)
    service.status.connected = True
    service.slot.put(Frame(1, jpeg_bytes(0), "jpeg", clock.t, 0.0))
    chunk = np.arange(64, dtype=np.float64).reshape(8, 8)

    service.chunks.start(chunk)
    step = service.open_loop_action()
    assert step is not None and step[0] == 8.0  # step 1, no model run
    service.on_instruction({"data": "open the drawer"})
    assert service.chunks.pending == 0 and service.open_loop_action() is None

    service.chunks.start(chunk)
    clock.t += 0.6  # the camera feed went stale
    assert service.open_loop_action() is None and service.chunks.pending == 0

    service.slot.put(Frame(2, jpeg_bytes(1), "jpeg", clock.t, 0.0))
    service.chunks.start(chunk)
    service.on_connection_state(False)
    assert service.open_loop_action() is None
    assert dict(service.chunks.discarded) == {"instruction": 2, "stale_frame": 3, "disconnected": 3}
