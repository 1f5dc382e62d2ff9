"""Loopback round trip of a 640x480 JPEG through our rosbridge server, JSON vs CBOR; prints JSON.

publisher client --JSON--> server --(json|cbor)--> echo client --JSON--> server --(json|cbor)--> publisher
Both server->client legs use the compression under test (clients always send JSON, as with rosbridge).

    .venv/bin/python bench/rosbridge_roundtrip.py [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from typing import Any

import numpy as np
from PIL import Image

from crane_x7_vla.bridge.client import RosbridgeClient
from crane_x7_vla.bridge.messages import CompressedImage
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.robot import CAMERA_COMPRESSED_TOPIC


def make_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A camera-like JPEG: smooth gradients plus mild noise (pure noise would be unrealistically large)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)  # (H, W, 3)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def run(compression: str, n: int, jpeg: bytes) -> dict[str, Any]:
    echo_topic = "/bench/echo"
    async with RosbridgeServer(port=0) as server:
        server.add_service("/sync", "std_srvs/Trigger", lambda args: {"success": True})
        async with RosbridgeClient("127.0.0.1", server.port) as pub, RosbridgeClient("127.0.0.1", server.port) as echo:
            async def bounce(msg: dict[str, Any]) -> None:
                await echo.publish(echo_topic, CompressedImage.from_dict(msg))

            await echo.subscribe(CAMERA_COMPRESSED_TOPIC, CompressedImage.TYPE, bounce, compression=compression,
                                 queue_length=1)
            await echo.advertise(echo_topic, CompressedImage.TYPE)
            await echo.call_service("/sync", {})
            arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            await pub.subscribe(echo_topic, CompressedImage.TYPE, arrived.put_nowait, compression=compression,
                                queue_length=1)
            await pub.call_service("/sync", {})
            rtts = []
            for i in range(n + 5):
                t0 = time.perf_counter()
                await pub.publish(CAMERA_COMPRESSED_TOPIC, CompressedImage(jpeg, "jpeg"))
                msg = await asyncio.wait_for(arrived.get(), 10)
                dt = time.perf_counter() - t0
                assert CompressedImage.from_dict(msg).data == jpeg
                if i >= 5:  # warm-up
                    rtts.append(dt * 1e3)
    ms = np.asarray(rtts)
    return {"compression": compression, "n": n, "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="round trips per mode (after 5 warm-up)")
    args = parser.parse_args()
    jpeg = make_jpeg()
    results = [asyncio.run(run(c, args.n, jpeg)) for c in ("none", "cbor")]
    print(json.dumps({"bench": "rosbridge_roundtrip", "image": "640x480 jpeg", "jpeg_bytes": len(jpeg),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
