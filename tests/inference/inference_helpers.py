"""Helpers of the inference tests (a module, not conftest, so test files can import them)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from typing import Any

import numpy as np
from PIL import Image

from crane_x7_vla import robot
from crane_x7_vla.bridge.messages import CompressedImage, Header, Time
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.inference.settings import InferenceSettings


def loopback_settings(port: int, inference_rate: float, **kw: Any) -> InferenceSettings:
    """Service settings for a RosbridgeServer on 127.0.0.1:``port`` and the CPU tiny model."""
    base: dict[str, Any] = dict(model_path="tiny", rosbridge_host="127.0.0.1", rosbridge_port=port, device="cpu",
                                inference_rate=inference_rate, peer_wait_timeout=5.0, status_period=0.2)
    return InferenceSettings(**{**base, **kw})


async def wait_until(pred: Any, timeout: float = 10.0) -> None:
    """Poll ``pred`` on the event loop (the condition itself is the synchronisation) until true or ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


class RecordingPolicy:
    """The real model, plus a record of the instructions it was asked about (and an optional NaN trigger)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.instructions: list[str] = []
        self.lock = threading.Lock()

    def predict_action(self, images: list[np.ndarray], instructions: list[str]) -> np.ndarray:
        with self.lock:
            self.instructions.extend(instructions)
        out = np.asarray(self.model.predict_action(images, instructions))  # (B, 8)
        if instructions[0] == "produce nan":
            out = out.copy()
            out[:, 3] = np.nan
        return out


def jpeg_bytes(seed: int = 0, size: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


class QueryRecorder:
    """The real model behind the service's fast path, recording each query's images and predicted chunk."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config  # what the service reads the model's inputs from
        self.chunk_size = model.chunk_size
        self.samples: list[list[np.ndarray]] = []  # per query: the images in the order the model got them
        self.instructions: list[str] = []
        self.chunks: list[np.ndarray] = []  # per query: (chunk_size, 8)
        self.lock = threading.Lock()

    def prepare_inputs(self, images: list[Any], instructions: list[str]) -> Any:
        with self.lock:
            self.samples.append(list(images[0]) if isinstance(images[0], list) else [images[0]])
            self.instructions.append(instructions[0])
        return self.model.prepare_inputs(images, instructions)

    def predict_chunk_from_inputs(self, inputs: Any) -> np.ndarray:
        out = np.asarray(self.model.predict_chunk_from_inputs(inputs))  # (1, K, 8)
        with self.lock:
            self.chunks.append(out[0])
        return out

    def predict_action(self, images: list[Any], instructions: list[str]) -> np.ndarray:
        return np.asarray(self.model.predict_action(images, instructions))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class Rig:
    """A server, a camera task publishing frames, and a record of what the service published."""

    def __init__(self, server: RosbridgeServer) -> None:
        self.server = server
        self.actions: list[tuple[float, dict[str, Any]]] = []
        self.status: list[dict[str, Any]] = []
        self.camera_on = True
        self._wire()

    def _wire(self) -> None:
        self.server.add_subscriber(robot.PREDICTED_ACTION_TOPIC, lambda m: self.actions.append((time.monotonic(), m)))
        self.server.add_subscriber(robot.INFERENCE_STATUS_TOPIC, lambda m: self.status.append(json.loads(m["data"])))

    def frame(self, data: bytes, fmt: str = "jpeg", stamp: float | None = None) -> None:
        header = Header(Time.from_seconds(stamp if stamp is not None else time.time()), "cam")
        self.server.publish(robot.CAMERA_COMPRESSED_TOPIC, CompressedImage.TYPE, CompressedImage(data, fmt, header))

    async def camera(self, rate: float = 30.0, seeds: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        i = 0
        while True:
            if self.camera_on:
                self.frame(jpeg_bytes(seeds[i % len(seeds)]))
            i += 1
            await asyncio.sleep(1 / rate)  # a camera's frame period, not synchronisation
