"""Evaluation: fixed-seed episodes, success rate with a Wilson 95% interval, per-episode results, videos.

The statistics are pure functions (tested on their own); ``evaluate_policy`` runs episodes through the same
collector as training, and ``write_video`` writes an mp4 atomically (temporary file, then rename).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crane_x7_vla.utils.atomic import atomic_path
from crane_x7_vla_rl.rollout.collector import PROGRESS_KEYS, EpisodeResult, RolloutCollector


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95%); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalSummary:
    success_rate: float
    ci95_low: float
    ci95_high: float
    num_episodes: int
    successes: int
    mean_return: float
    mean_length: float
    episodes: list[dict[str, Any]]
    stage_rates: dict[str, float]  # fraction of episodes that reached each task stage (reached, is_grasped, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(results: list[EpisodeResult]) -> EvalSummary:
    n = len(results)
    k = sum(r.success for r in results)
    lo, hi = wilson_interval(k, n)
    return EvalSummary(
        success_rate=k / n if n else 0.0, ci95_low=lo, ci95_high=hi, num_episodes=n, successes=k,
        mean_return=float(np.mean([r.episode_return for r in results])) if n else 0.0,
        mean_length=float(np.mean([r.length for r in results])) if n else 0.0,
        episodes=[{"episode": i, "seed": r.seed, "success": r.success, "return": r.episode_return,
                   "length": r.length, "instruction": r.instruction, "stages": sorted(r.stages)}
                  for i, r in enumerate(results)],
        stage_rates={k: sum(k in r.stages for r in results) / n for k in PROGRESS_KEYS
                     if any(k in r.stages for r in results)} if n else {},
    )


# --video-per-outcome records at most this many batches: an outcome rarer than that is not worth the renders
PER_OUTCOME_BATCHES = 4


def evaluate_policy(collector: RolloutCollector, num_episodes: int, seed: int, *, temperature: float,
                    num_videos: int = 0, camera: str = "third_person",
                    one_per_outcome: bool = False) -> list[EpisodeResult]:
    """Run ``num_episodes`` episodes in batches of the simulator's N envs; batch b starts from ``seed + b*N``.

    Videos: the first ``num_videos`` episodes keep their frames; with ``one_per_outcome`` instead, the first
    successful and the first failed episode of this very evaluation do. Replaying a chosen seed later is no
    substitute: on a GPU the batch size changes the bf16 kernels, a greedy token can flip, and the replayed
    episode need not end as it did in the evaluation. Whole batches are recorded (rendering is batched anyway)
    until both outcomes have frames, for at most ``PER_OUTCOME_BATCHES`` batches; after each batch only the
    frames of the two kept episodes stay in memory.

    Greedy evaluation (temperature 0) draws no random numbers; sampled evaluation uses its own generator, so
    evaluating never disturbs the training run's random streams.
    """
    n = collector.sim.num_envs
    gen = torch.Generator(device=collector.device).manual_seed(seed)
    results: list[EpisodeResult] = []
    batch = 0
    while len(results) < num_episodes:
        if one_per_outcome:
            record = 0 if len(first_per_outcome(results)) == 2 or batch >= PER_OUTCOME_BATCHES else n
        else:
            record = max(0, min(n, num_videos - len(results)))
        results.extend(collector.run_episodes(seed + batch * n, gen, temperature=temperature, record=record,
                                              camera=camera))
        batch += 1
        if one_per_outcome:
            keep = set(first_per_outcome(results[:num_episodes]).values())
            for i, r in enumerate(results):
                if i not in keep:
                    r.frames = []
    return results[:num_episodes]


def first_per_outcome(results: list[EpisodeResult]) -> dict[bool, int]:
    """Index of the first recorded (has frames) episode of each outcome: {True: i_success, False: i_failure}."""
    first: dict[bool, int] = {}
    for i, r in enumerate(results):
        if r.frames:
            first.setdefault(bool(r.success), i)
    return first


def video_name(update: int | None, episode: int, success: bool) -> str:
    outcome = "success" if success else "failure"
    prefix = f"eval_u{update:04d}" if update is not None else "eval"
    return f"{prefix}_ep{episode:02d}_{outcome}.mp4"


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    """Write (H, W, 3) uint8 frames as an mp4 (H.264 through imageio-ffmpeg), atomically.

    GPU images often ship OpenCV but not imageio-ffmpeg (whose wheel is ~70 MB of ffmpeg): there the video is
    written by OpenCV's own encoder (MPEG-4 part 2, plays everywhere except in browsers) instead of failing the run.
    """
    if not frames:
        return
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's FFMPEG plugin needs it; probe before opening a writer)
    except ImportError:
        _write_video_cv2(path, frames, fps)
        return
    import imageio.v2 as imageio

    # macro_block_size=1: keep odd sizes instead of silently resizing every frame.
    with atomic_path(path, suffix=".mp4") as tmp, imageio.get_writer(
        str(tmp), fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error"
    ) as writer:
        for f in frames:
            writer.append_data(np.ascontiguousarray(f, dtype=np.uint8))  # type: ignore[attr-defined]


def _write_video_cv2(path: Path, frames: list[np.ndarray], fps: float) -> None:
    try:
        import cv2
    except ImportError as exc:
        raise RuntimeError("writing evaluation videos needs imageio-ffmpeg (pip install imageio-ffmpeg) or "
                           "OpenCV; install one, or turn videos off (save_eval_videos: false)") from exc
    h, w = frames[0].shape[:2]
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV could not open an mp4 writer for {path}; install imageio-ffmpeg")
        try:
            for f in frames:
                writer.write(np.ascontiguousarray(f[..., ::-1], dtype=np.uint8))  # OpenCV wants BGR
        finally:
            writer.release()


def save_videos(results: list[EpisodeResult], directory: Path, update: int | None, fps: float) -> list[Path]:
    paths = []
    for i, r in enumerate(results):
        if r.frames:
            p = directory / video_name(update, i, r.success)
            write_video(p, r.frames, fps)
            paths.append(p)
    return paths
