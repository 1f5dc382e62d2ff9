"""``crane-x7-vla infer`` (and ``scripts/vla_inference_rosbridge.py``): settings -> model -> rosbridge loop.

Order matters: settings are validated first (all problems at once), the model is loaded BEFORE connecting
(a 7B checkpoint takes minutes; the robot should not see a subscriber that cannot answer), then the service
runs until SIGINT/SIGTERM. torch is imported inside :func:`main` only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import replace
from typing import Any

from crane_x7_vla.inference.settings import (
    InferenceSettings,
    SettingsError,
    add_arguments,
    check_against_model,
    model_io,
    resolve_settings,
)

log = logging.getLogger("crane_x7_vla.inference")


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def load_policy(settings: InferenceSettings) -> Any:
    """Load the VLA named by the settings (local dir or Hub id; OpenVLA or MiniVLA, detected from the files)."""
    from crane_x7_vla.models import OpenVLA, load_vla

    model = load_vla(settings.model_path, device=settings.device, unnorm_key=settings.unnorm_key,
                     hf_token=settings.hf_token, vq_path=settings.vq_path)
    if isinstance(model, OpenVLA) and model.device.type == "cuda":
        # On a GPU the static-cache CUDA-graph engine serves the same greedy actions several times faster.
        from crane_x7_vla.models.engine import OpenVLAEngine

        engine = OpenVLAEngine(model, max_batch=len(settings.robots))
        if len(settings.robots) == 1:  # several robots: the continuous batcher captures its own (share_policy)
            log.info("serving %s with the CUDA-graph engine; capturing its graphs (each action drafted with the "
                     "previous one, verified) ...", settings.model_path)
            engine.warmup(settings.instruction)
        return engine
    return model


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop`` (the loop finishes its tick, closes the link and returns)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)


def share_policy(policy: Any, settings: InferenceSettings) -> Any:
    """One policy for several robots: continuous batching over the engine (every step decodes all running
    requests and admits new ones, see models/continuous.py; ``load_policy`` serves with the engine on CUDA),
    else synchronous batches with a bounded wait (``batch_wait_ms``)."""
    from crane_x7_vla.models.engine import OpenVLAEngine

    robots = len(settings.robots)
    if isinstance(policy, OpenVLAEngine):
        from crane_x7_vla.models.continuous import ContinuousBatcher

        batcher = ContinuousBatcher(policy, slots=robots, unnorm_key=settings.unnorm_key, start=False)
        log.info("serving %d robots with continuous batching; capturing the step graphs ...", robots)
        batcher.warmup(settings.instruction)
        batcher.start()
        return batcher
    from crane_x7_vla.models.batcher import BatchedPolicy

    log.info("serving %d robots with batched model calls (wait <= %.1f ms)", robots, settings.batch_wait_ms)
    return BatchedPolicy(policy, max_batch=robots, max_wait_s=settings.batch_wait_ms / 1e3,
                         unnorm_key=settings.unnorm_key)


async def serve(settings: InferenceSettings, policy: Any, stop: asyncio.Event | None = None) -> int:
    """Serve every configured robot with a real :class:`RosbridgeClient` each until ``stop`` (or a signal).

    With several robots, one shared policy (:func:`share_policy`) coalesces their model calls;
    each robot keeps its own tick loop, status and reconnects, and one unreachable robot does not stop the
    others. Returns 1 if any robot's link failed for good."""
    from crane_x7_vla.bridge.client import RosbridgeClient
    from crane_x7_vla.inference.service import InferenceService

    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    shared = share_policy(policy, settings) if len(settings.robots) > 1 else policy
    services = []
    for host, port in settings.robots:
        client = RosbridgeClient(host, port, proxy=settings.rosbridge_proxy)
        service = InferenceService(replace(settings, rosbridge_host=host, rosbridge_port=port, extra_robots=()),
                                   shared, client)
        client.add_state_listener(service.on_connection_state)
        services.append(service)
    results = await asyncio.gather(*(s.run(stop) for s in services), return_exceptions=True)
    code = 0
    for service, res in zip(services, results, strict=True):
        robot_name = f"{service.settings.rosbridge_host}:{service.settings.rosbridge_port}"
        if isinstance(res, ConnectionError):
            log.error("%s: %s", robot_name, res)
            code = 1
        elif isinstance(res, BaseException):
            raise res
        else:
            log.info("%s stopped: %s", robot_name, service.snapshot())
    if shared is not policy:
        shared.close()
    return code


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(args, "log_level", "INFO"),
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    try:
        settings = resolve_settings(args, cuda_available=_cuda_available)
    except SettingsError as exc:
        print(f"crane-x7-vla infer: {exc}", file=sys.stderr)
        return 2
    log.info("settings: %s", settings.public_dict())
    log.info("loading model %s on %s ...", settings.model_path, settings.device)
    try:
        policy = load_policy(settings)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"crane-x7-vla infer: could not load the model {settings.model_path!r}: {exc}", file=sys.stderr)
        return 1
    io = model_io(policy)
    problems = check_against_model(settings, io)
    if problems:
        print(f"crane-x7-vla infer: {SettingsError(problems)}", file=sys.stderr)
        return 2
    log.info("model takes %d image(s) per query (history %d, wrist %s), predicts %d action(s); executing %d "
             "open loop", io.num_images, io.history, io.wrist, io.chunk_size, settings.chunk_steps)
    log.info("model loaded; connecting to rosbridge %s:%s", settings.rosbridge_host, settings.rosbridge_port)
    return asyncio.run(serve(settings, policy))
