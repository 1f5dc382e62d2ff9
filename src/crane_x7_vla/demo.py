"""``crane-x7-vla demo``: the whole remote-inference loop on one machine, with a tiny random OpenVLA.

sim bridge (MuJoCo behind a rosbridge server on a free loopback port) <- controller (safety, goals) <-
``/vla/predicted_action`` <- inference service (tiny 8-dim OpenVLA) <- ``/camera/color/image_raw/compressed``.
All three run as tasks of one event loop, each with its own real websocket client, so the data path is the
production one (CBOR frames, throttling, goals); one process keeps start-up to a few seconds and lets the
demo read every component's statistics directly. The model is random: the arm moves arbitrarily, but always
within the controller's limits. The wrist camera with the actions drawn on it is saved as an mp4 (atomic).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla import robot
from crane_x7_vla.utils.atomic import atomic_directory, atomic_path

log = logging.getLogger("crane_x7_vla.demo")
RANDOM_NOTE = ("the demo model is a tiny RANDOM OpenVLA: the arm moves arbitrarily (within the controller's "
               "joint, step and velocity limits). That is expected; use --model-path for a trained model.")


def cache_dir() -> Path:
    return Path(os.environ.get("CRANE_X7_CACHE", Path.home() / ".cache" / "crane-x7-vla")) / "demo"


def tiny_checkpoint(cache: Path) -> Path:
    """The cached tiny 8-dim checkpoint, generated once (atomically, so an interrupted run leaves nothing)."""
    from crane_x7_vla.models import make_tiny_checkpoint

    path = cache / "tiny-openvla-8d"
    if not (path / "config.json").exists():
        log.info("generating a tiny 8-dim OpenVLA checkpoint in %s", path)
        with atomic_directory(path) as tmp:
            make_tiny_checkpoint(tmp, action_dim=robot.ACTION_DIM, seed=0)
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of closed loop [20]")
    parser.add_argument("--rate", type=float, default=5.0, help="inference rate in Hz [5; the CPU tiny model]")
    parser.add_argument("--video", default="outputs/demo.mp4", help="wrist-camera video with actions [outputs/demo.mp4]")
    parser.add_argument("--no-video", action="store_true", help="do not record a video")
    parser.add_argument("--model-path", default=None, help="use this checkpoint instead of the tiny random one")
    parser.add_argument("--instruction", default="pick up the object", help="task instruction")
    parser.add_argument("--simulator", default="mujoco", help="Lift backend for the sim bridge [mujoco]")
    parser.add_argument("--device", default="cpu", help="torch device for the model [cpu]")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


@dataclass
class Recorder:
    """Keeps the wrist JPEGs (decoded only at the end) and the actions, both with monotonic times."""

    max_frames: int = 3000
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    scene: list[tuple[float, bytes]] = field(default_factory=list)  # third-person view, for context
    actions: list[tuple[float, NDArray[np.float64]]] = field(default_factory=list)

    def on_frame(self, jpeg: bytes, stamp: float) -> None:
        if len(self.frames) < self.max_frames:
            self.frames.append((time.monotonic(), jpeg))

    def on_scene(self, jpeg: bytes, stamp: float) -> None:
        if len(self.scene) < self.max_frames:
            self.scene.append((time.monotonic(), jpeg))

    def on_action(self, action: NDArray[np.float64], instruction: str) -> None:
        self.actions.append((time.monotonic(), action.copy()))


def overlay(rgb: NDArray[np.uint8], action: NDArray[np.float64] | None, t: float, instruction: str,
            scene: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
    """[scene |] wrist frame (H, W, 3) | a panel with one bar per action value (within its limits)."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    left = 0 if scene is None else w
    canvas = Image.new("RGB", (2 * w + left, h), (20, 20, 24))
    if scene is not None:
        canvas.paste(Image.fromarray(scene).resize((w, h)), (0, 0))
    canvas.paste(Image.fromarray(rgb), (left, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((left + 4, 4), "wrist camera", fill=(255, 255, 255))
    px = left + w  # the panel starts right of the images
    draw.text((px + 6, 4), f"t={t:5.1f}s  {instruction[:28]}", fill=(230, 230, 230))
    labels = [j.label for j in robot.ARM_JOINTS] + ["grip"]
    lo, hi = np.asarray(robot.ACTION_LOWER), np.asarray(robot.ACTION_UPPER)
    row = (h - 40) / len(labels)
    for i, label in enumerate(labels):
        y = int(22 + i * row)
        draw.text((px + 6, y), label, fill=(200, 200, 200))
        x0, x1 = px + 40, canvas.width - 8
        draw.rectangle((x0, y + 2, x1, y + int(row) - 4), outline=(90, 90, 90))
        if action is not None:
            frac = float(np.clip((action[i] - lo[i]) / (hi[i] - lo[i]), 0, 1))
            draw.rectangle((x0, y + 2, x0 + int(frac * (x1 - x0)), y + int(row) - 4), fill=(70, 160, 240))
    draw.text((px + 6, h - 14), "random tiny model" if action is not None else "waiting for actions",
              fill=(250, 190, 80))
    return np.asarray(canvas)


def write_video(path: Path, rec: Recorder, instruction: str, fps: float) -> int:
    """Decode the recorded JPEGs, draw the latest action on each and write an mp4 atomically; frame count."""
    import imageio.v2 as imageio
    from PIL import Image

    if not rec.frames:
        return 0
    t0 = rec.frames[0][0]
    times = np.asarray([t for t, _ in rec.actions])
    scene_times = np.asarray([t for t, _ in rec.scene])
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=7,
                                    macro_block_size=16, ffmpeg_log_level="error")
        try:
            for t, jpeg in rec.frames:
                i = int(np.searchsorted(times, t, side="right")) - 1
                act = rec.actions[i][1] if i >= 0 else None
                rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
                # max(.., 0): every frame gets a scene panel so all video frames have one size
                k = max(0, int(np.searchsorted(scene_times, t, side="right")) - 1) if rec.scene else -1
                scene = np.asarray(Image.open(io.BytesIO(rec.scene[k][1])).convert("RGB")) if k >= 0 else None
                writer.append_data(overlay(rgb, act, t - t0, instruction, scene))
        finally:
            writer.close()
    return len(rec.frames)


async def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from crane_x7_vla.bridge.client import RosbridgeClient
    from crane_x7_vla.control.controller import ControllerConfig, RobotController
    from crane_x7_vla.inference.cli import install_stop_handlers
    from crane_x7_vla.inference.service import InferenceService
    from crane_x7_vla.inference.settings import InferenceSettings
    from crane_x7_vla.models import load_vla
    from crane_x7_vla.simbridge.bridge import SimBridge, SimBridgeConfig
    from crane_x7_vla.simbridge.robot import SimRobotConfig

    if args.device == "cpu":
        import torch

        # One intra-op thread: the sim thread, the event loop and the model share a few CPU cores, and
        # oversubscribed torch threads made the tiny model ~5x slower in measurements.
        torch.set_num_threads(1)
    model_path = Path(args.model_path) if args.model_path else await asyncio.to_thread(tiny_checkpoint, cache_dir())
    policy = await asyncio.to_thread(load_vla, str(model_path), device=args.device, unnorm_key="crane_x7")
    stop = asyncio.Event()
    install_stop_handlers(stop)
    rec = Recorder()
    extra = None if args.no_video else "third_person"
    bridge = SimBridge(SimBridgeConfig(simulator=args.simulator, host="127.0.0.1", port=0,
                                       robot=SimRobotConfig(extra_camera=extra)))
    if not args.no_video:
        bridge.frame_listener, bridge.extra_listener = rec.on_frame, rec.on_scene
    await bridge.start()
    settings = InferenceSettings(model_path=str(model_path), rosbridge_host="127.0.0.1", rosbridge_port=bridge.port,
                                 device=args.device, inference_rate=args.rate, instruction=args.instruction,
                                 peer_wait_timeout=10.0)
    ctl_client = RosbridgeClient("127.0.0.1", bridge.port)
    inf_client = RosbridgeClient("127.0.0.1", bridge.port)
    controller = RobotController(ctl_client, ControllerConfig())
    service = InferenceService(settings, policy, inf_client, model_name="tiny random OpenVLA (8-dim)")
    service.on_action = rec.on_action
    inf_client.add_state_listener(service.on_connection_state)
    print(f"[demo] sim bridge on ws://127.0.0.1:{bridge.port}; running {args.duration:g}s at {args.rate:g} Hz",
          flush=True)
    print(f"[demo] note: {RANDOM_NOTE}", flush=True)
    start_q = bridge.robot.qpos if bridge.robot is not None else None
    try:
        await ctl_client.connect()
        tasks = [asyncio.create_task(controller.run(stop), name="controller"),
                 asyncio.create_task(service.run(stop), name="inference")]
        with contextlib.suppress(asyncio.TimeoutError):  # the normal end of the demo
            await asyncio.wait_for(stop.wait(), timeout=args.duration)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
    finally:
        stop.set()
        await ctl_client.close()
        await bridge.stop()
    end_q = bridge.robot.qpos if bridge.robot is not None else None
    snap = service.snapshot()
    summary: dict[str, Any] = {
        "duration_s": args.duration,
        "target_rate_hz": args.rate,
        "achieved_rate_hz": snap["achieved_rate_hz"],
        "actions_published": snap["actions_published"],
        "latency_ms": {k: snap["latency_ms"][k] for k in ("model", "total")},
        "frames": snap["frames"],
        "errors": snap["errors"],
        "controller": {"arm_goals": controller.stats.arm_goals, "gripper_goals": controller.stats.gripper_goals,
                       "clamped": controller.stats.clamped, "rejected": controller.stats.rejected,
                       "goal_failures": controller.stats.goal_failures},
        "sim": {"camera_frames": bridge.images_published, "joint_states": bridge.joint_states_published},
        "arm_moved_rad": None if start_q is None or end_q is None
        else round(float(np.max(np.abs(end_q[:7] - start_q[:7]))), 4),
        "video": None,
        "note": RANDOM_NOTE,
    }
    if not args.no_video:
        path = Path(args.video)
        fps = max(1.0, len(rec.frames) / max(1e-3, rec.frames[-1][0] - rec.frames[0][0])) if len(rec.frames) > 1 else 10.0
        n = await asyncio.to_thread(write_video, path, rec, args.instruction, round(fps))
        summary["video"] = {"path": str(path), "frames": n, "fps": round(fps)}
    return summary


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    if not (args.duration > 0 and args.rate > 0):
        print("crane-x7-vla demo: --duration and --rate must be positive", file=sys.stderr)
        return 2
    summary = asyncio.run(run_demo(args))
    lat = summary["latency_ms"]
    print(f"[demo] achieved {summary['achieved_rate_hz']:.2f} Hz (target {summary['target_rate_hz']:g}); "
          f"end-to-end latency p50 {lat['total'].get('p50', float('nan')):.1f} ms, "
          f"p99 {lat['total'].get('p99', float('nan')):.1f} ms; model p50 {lat['model'].get('p50', float('nan')):.1f} ms")
    if summary["video"]:
        print(f"[demo] video: {summary['video']['path']} ({summary['video']['frames']} frames)")
    print(json.dumps(summary))
    return 0
