"""The inference service closed loop over a real RosbridgeServer with a tiny generated OpenVLA."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from inference_helpers import RecordingPolicy, Rig, jpeg_bytes, loopback_settings, wait_until

from crane_x7_vla import robot
from crane_x7_vla.bridge.client import RosbridgeClient
from crane_x7_vla.bridge.messages import CompressedImage, Float32MultiArray, String
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.inference.service import InferenceService
from crane_x7_vla.inference.settings import InferenceSettings


def settings(port: int, **kw: Any) -> InferenceSettings:
    return loopback_settings(port, **{"inference_rate": 5.0, **kw})


until = wait_until  # 10 s default


def values(msg: dict[str, Any]) -> np.ndarray:
    return np.asarray(Float32MultiArray.from_dict(msg).data)


async def _rate_and_instruction(policy: RecordingPolicy) -> None:
    async with RosbridgeServer(port=0) as server:
        rig = Rig(server)
        client = RosbridgeClient("127.0.0.1", server.port)
        service = InferenceService(settings(server.port), policy, client)
        client.add_state_listener(service.on_connection_state)
        stop = asyncio.Event()
        cam = asyncio.create_task(rig.camera())
        run = asyncio.create_task(service.run(stop))
        try:
            await until(lambda: len(rig.actions) >= 10, 15)
            times = np.asarray([t for t, _ in rig.actions])
            rate = (len(times) - 1) / (times[-1] - times[0])
            assert 4.0 <= rate <= 5.6, rate  # target 5 Hz from a 30 Hz camera: no drift, no bursts
            for _, msg in rig.actions:
                v = values(msg)
                assert v.shape == (8,) and np.all(np.isfinite(v))
                assert msg["layout"]["dim"][0]["size"] == 8
            assert set(policy.instructions) == {"pick up the object"}
            # Dynamic instruction update: the next prompts use it.
            server.publish(robot.UPDATE_INSTRUCTION_TOPIC, String.TYPE, String("place the cube on the plate"))
            await until(lambda: policy.instructions[-1] == "place the cube on the plate")
            n = len(policy.instructions)
            await until(lambda: len(policy.instructions) >= n + 2)
            assert policy.instructions[n:] == ["place the cube on the plate"] * (len(policy.instructions) - n)
            await until(lambda: bool(rig.status) and rig.status[-1]["instruction"] == "place the cube on the plate")
            st = rig.status[-1]
            assert st["frames"]["received"] >= st["actions_published"] > 0  # throttled at the tick rate
            assert set(st["latency_ms"]) == {"decode", "preprocess", "model", "publish", "total"}
            assert st["latency_ms"]["model"]["p50"] > 0
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)
            cam.cancel()


def test_actions_at_rate_and_instruction_update(policy: RecordingPolicy) -> None:
    asyncio.run(asyncio.wait_for(_rate_and_instruction(policy), 60))


async def _reconnect(policy: RecordingPolicy) -> None:
    server = RosbridgeServer(port=0)
    await server.start()
    port = server.port
    rig = Rig(server)
    client = RosbridgeClient("127.0.0.1", port, reconnect_min=0.05, reconnect_max=0.3)
    service = InferenceService(settings(port), policy, client)
    client.add_state_listener(service.on_connection_state)
    stop = asyncio.Event()
    cam = asyncio.create_task(rig.camera())
    run = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: len(rig.actions) >= 2)
        await server.stop()  # the robot's rosbridge dies ...
        await until(lambda: not client.connected)
        server = RosbridgeServer(port=port)  # ... and comes back on the same port
        await server.start()
        rig.server = server
        rig.actions.clear()
        rig._wire()
        await until(lambda: len(rig.actions) >= 3, 15)  # actions resume without a restart
        assert service.status.reconnects == 1 and client.connected
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
        cam.cancel()
        await server.stop()


def test_server_restart_reconnects_and_actions_resume(policy: RecordingPolicy) -> None:
    asyncio.run(asyncio.wait_for(_reconnect(policy), 60))


async def _malformed(policy: RecordingPolicy) -> None:
    async with RosbridgeServer(port=0) as server:
        rig = Rig(server)
        client = RosbridgeClient("127.0.0.1", server.port)
        service = InferenceService(settings(server.port, max_frame_bytes=40_000, inference_rate=10.0), policy, client)
        stop = asyncio.Event()
        run = asyncio.create_task(service.run(stop))
        try:
            await until(lambda: server.connections > 0 and service.status.connected)
            bad = [
                (b"\xff\xd8\xff\xe0 definitely not a jpeg", "jpeg"),  # bad JPEG
                (b"", "jpeg"),  # empty
                (b"\xff\xd8\xff" + bytes(50_000), "jpeg"),  # oversized
                (jpeg_bytes(1), "bmp"),  # unsupported format
            ]
            for data, fmt in bad:
                n = service.slot.received + sum(service.status.errors.values())
                rig.frame(data, fmt)
                await until(lambda n=n: service.slot.received + sum(service.status.errors.values()) > n)
                await until(lambda: not service.slot.has_unused)  # the loop got to look at it
            server.publish(robot.CAMERA_COMPRESSED_TOPIC, CompressedImage.TYPE, {"format": "jpeg", "data": 5})
            server.publish(robot.UPDATE_INSTRUCTION_TOPIC, String.TYPE, {"data": 123})  # non-string instruction
            await until(lambda: {"bad_message", "bad_instruction"} <= set(service.status.errors))
            assert not rig.actions
            assert {"bad_image", "empty", "oversized", "bad_format"} <= set(service.status.errors), service.status.errors
            # A stale frame (stamped 1 s ago by a synchronised clock) is never acted on.
            rig.frame(jpeg_bytes(2), stamp=time.time() - 1.0)
            await until(lambda: service.slot.stale == 1)
            # One good frame -> exactly one action, never a second one from the same frame.
            rig.frame(jpeg_bytes(3))
            await until(lambda: len(rig.actions) == 1)
            idle = service.status.ticks_without_frame
            await until(lambda: service.status.ticks_without_frame >= idle + 2)
            assert len(rig.actions) == 1
            # NaN from the model is never published; the service keeps going.
            server.publish(robot.UPDATE_INSTRUCTION_TOPIC, String.TYPE, String("produce nan"))
            await until(lambda: service.instruction == "produce nan")
            rig.frame(jpeg_bytes(0))
            await until(lambda: service.status.errors.get("non_finite_action", 0) == 1)
            server.publish(robot.UPDATE_INSTRUCTION_TOPIC, String.TYPE, String("pick up the object"))
            await until(lambda: service.instruction == "pick up the object")
            rig.frame(jpeg_bytes(1))
            await until(lambda: len(rig.actions) == 2)
            assert all(np.all(np.isfinite(values(m))) for _, m in rig.actions)
            assert not run.done()
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)


def test_malformed_input_never_crashes_and_nan_never_published(policy: RecordingPolicy) -> None:
    asyncio.run(asyncio.wait_for(_malformed(policy), 60))
