"""Robots as threads: several callers of one shared policy, released together."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


def predict_concurrently(policy: Any, images: list[np.ndarray], instructions: list[str], repeats: int = 1,
                         timeout: float = 60.0) -> dict[int, Any]:
    """One thread per (image, instruction), started behind a barrier, each calling ``policy.predict`` ``repeats``
    times; returns each thread's last result."""
    barrier = threading.Barrier(len(images))
    results: dict[int, Any] = {}

    def robot(i: int) -> None:
        barrier.wait()
        for _ in range(repeats):
            results[i] = policy.predict(images[i], instructions[i])

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results
