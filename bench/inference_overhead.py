#!/usr/bin/env python3
"""Inference-service overhead per tick excluding the model, and end-to-end latency with the tiny model (JSON).

  .venv/bin/python bench/inference_overhead.py [--seconds 6] [--rate 5]

1. overhead: JPEG decode (224x224 and 640x480 camera frames), model preprocessing (``prepare_inputs``: resize,
   normalise, tokenise) and one ``publish`` of an 8-value action through a real RosbridgeClient to a real
   RosbridgeServer on loopback (time until the server delivers it to an in-process subscriber).
2. end to end: the real service at ``--rate`` Hz on a tiny random OpenVLA, fed by a 30 Hz camera through the
   server; the service's own breakdown (receipt -> published) plus the achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from crane_x7_vla import robot
from crane_x7_vla.bridge.client import RosbridgeClient
from crane_x7_vla.bridge.messages import CompressedImage, Header, Time
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.inference.frames import decode_image
from crane_x7_vla.inference.service import InferenceService, action_message
from crane_x7_vla.inference.settings import InferenceSettings
from crane_x7_vla.inference.status import percentiles_ms


def jpeg(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth content (like a camera), not noise, so the JPEG size is realistic.
    base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def time_it(fn: Any, n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentiles_ms(samples)


async def publish_latency(n: int) -> dict[str, float]:
    async with RosbridgeServer(port=0) as server:
        got: asyncio.Queue[float] = asyncio.Queue()
        server.add_subscriber(robot.PREDICTED_ACTION_TOPIC, lambda m: got.put_nowait(time.perf_counter()))
        client = RosbridgeClient("127.0.0.1", server.port)
        await client.connect()
        await client.advertise(robot.PREDICTED_ACTION_TOPIC, "std_msgs/Float32MultiArray")
        msg = action_message(np.zeros(8))
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.publish(robot.PREDICTED_ACTION_TOPIC, msg)
            samples.append(await asyncio.wait_for(got.get(), 5) - t0)
        await client.close()
    return percentiles_ms(samples)


async def end_to_end(model: Any, seconds: float, rate: float) -> dict[str, Any]:
    async with RosbridgeServer(port=0) as server:
        frames = [jpeg(224, 224, i) for i in range(4)]
        settings = InferenceSettings(model_path="tiny", rosbridge_host="127.0.0.1", rosbridge_port=server.port,
                                     device="cpu", inference_rate=rate, peer_wait_timeout=5)
        client = RosbridgeClient("127.0.0.1", server.port)
        service = InferenceService(settings, model, client)
        stop = asyncio.Event()
        run = asyncio.create_task(service.run(stop))

        async def camera() -> None:
            i = 0
            while not stop.is_set():
                msg = CompressedImage(frames[i % 4], "jpeg", Header(Time.from_seconds(time.time()), "cam"))
                server.publish(robot.CAMERA_COMPRESSED_TOPIC, CompressedImage.TYPE, msg)
                i += 1
                await asyncio.sleep(1 / 30)

        cam = asyncio.create_task(camera())
        await asyncio.sleep(seconds)
        stop.set()
        await run
        await cam
        return service.snapshot()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()

    import torch

    from crane_x7_vla.models import load_vla, make_tiny_checkpoint

    torch.set_num_threads(1)
    small, vga = jpeg(224, 224), jpeg(480, 640)
    out: dict[str, Any] = {"overhead_ms": {
        "decode_224": time_it(lambda: decode_image("jpeg", small, 1 << 24), args.n),
        "decode_640x480": time_it(lambda: decode_image("jpeg", vga, 1 << 24), args.n),
    }, "jpeg_bytes": {"224": len(small), "640x480": len(vga)}}
    with tempfile.TemporaryDirectory() as tmp:
        model = load_vla(str(make_tiny_checkpoint(f"{tmp}/tiny", action_dim=8)), device="cpu", unnorm_key="crane_x7")
        img224, img480 = decode_image("jpeg", small, 1 << 24), decode_image("jpeg", vga, 1 << 24)
        out["overhead_ms"]["preprocess_224"] = time_it(lambda: model.prepare_inputs([img224], ["pick up the object"]), 50)
        out["overhead_ms"]["preprocess_640x480"] = time_it(lambda: model.prepare_inputs([img480], ["pick up the object"]), 50)
        out["overhead_ms"]["publish_loopback"] = asyncio.run(publish_latency(args.n))
        out["overhead_ms"]["model_tiny"] = time_it(lambda: model.predict_action([img224], ["pick up the object"]), 20)
        snap = asyncio.run(end_to_end(model, args.seconds, args.rate))
    out["end_to_end"] = {"target_rate_hz": args.rate, "achieved_rate_hz": snap["achieved_rate_hz"],
                         "actions": snap["actions_published"], "latency_ms": snap["latency_ms"],
                         "frames": snap["frames"], "missed_deadlines": snap["missed_deadlines"]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
