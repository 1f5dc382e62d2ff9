"""Helpers of the inference tests (a module, not conftest, so test files can import them)."""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
from PIL import Image


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
