"""``crane-x7-vla sim-bridge``: serve a simulated CRANE-X7 over rosbridge until SIGINT/SIGTERM.

Replaces ``docker compose --profile rosbridge-sim up`` for users without ROS: the inference service and the
controller connect to it exactly as to the real robot's rosbridge_server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from crane_x7_vla.simbridge.robot import SimRobotConfig


def configure(parser: argparse.ArgumentParser) -> None:
    d = SimRobotConfig()
    parser.add_argument("--simulator", default="mujoco", help="Lift backend [mujoco]")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for other hosts) [127.0.0.1]")
    parser.add_argument("--port", type=int, default=9090, help="rosbridge port (0 = any free port) [9090]")
    parser.add_argument("--control-rate", type=float, default=d.control_rate,
                        help=f"physics/joint-state rate in Hz [{d.control_rate}]")
    parser.add_argument("--camera-rate", type=float, default=d.camera_rate, help=f"camera rate in Hz [{d.camera_rate}]")
    parser.add_argument("--seed", type=int, default=0, help="scene seed [0]")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    from crane_x7_vla.inference.cli import install_stop_handlers
    from crane_x7_vla.simbridge.bridge import SimBridge, SimBridgeConfig

    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    rc = SimRobotConfig(control_rate=args.control_rate, camera_rate=args.camera_rate)
    bridge = SimBridge(SimBridgeConfig(args.simulator, args.host, args.port, args.seed, rc))
    await bridge.start()
    print(f"sim bridge ready on ws://{args.host}:{bridge.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await bridge.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    if not (0 < args.control_rate <= 1000 and 0 < args.camera_rate <= args.control_rate):
        print("crane-x7-vla sim-bridge: need 0 < --camera-rate <= --control-rate <= 1000", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(args))
    except OSError as exc:
        print(f"crane-x7-vla sim-bridge: cannot serve on {args.host}:{args.port}: {exc} "
              "(port in use? try --port 0)", file=sys.stderr)
        return 1
