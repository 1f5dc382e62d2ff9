"""``crane-x7-vla controller``: run the robot-side controller beside the robot's rosbridge (no torch)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from crane_x7_vla.control.controller import ControllerConfig, RobotController
from crane_x7_vla.control.safety import SafetyConfig

log = logging.getLogger("crane_x7_vla.control")


def configure(parser: argparse.ArgumentParser) -> None:
    d = SafetyConfig()
    parser.add_argument("--rosbridge-host", default=os.environ.get("CONTROLLER_ROSBRIDGE_HOST", "localhost"),
                        help="the robot's rosbridge host (this runs next to it) [localhost]")
    parser.add_argument("--rosbridge-port", type=int, default=9090, help="rosbridge port [9090]")
    parser.add_argument("--arm-interface", choices=["action", "topic"], default="action",
                        help="FollowJointTrajectory action or the controller's joint_trajectory topic [action]")
    parser.add_argument("--max-joint-step", type=float, default=d.max_joint_step,
                        help=f"max rad per joint per action, from the measured position [{d.max_joint_step}]")
    parser.add_argument("--velocity-scale", type=float, default=d.velocity_scale,
                        help=f"fraction of the joint velocity limits a move may use [{d.velocity_scale}]")
    parser.add_argument("--watchdog-timeout", type=float, default=d.watchdog_timeout,
                        help=f"seconds without actions before holding position [{d.watchdog_timeout}]")
    parser.add_argument("--gripper-deadband", type=float, default=d.gripper_deadband,
                        help=f"min gripper target change (rad) that sends a new goal [{d.gripper_deadband}]")
    parser.add_argument("--dry-run", action="store_true", help="log the goals, send nothing")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def config_from_args(args: argparse.Namespace) -> ControllerConfig:
    safety = SafetyConfig(max_joint_step=args.max_joint_step, velocity_scale=args.velocity_scale,
                          watchdog_timeout=args.watchdog_timeout, gripper_deadband=args.gripper_deadband)
    return ControllerConfig(safety=safety, arm_interface=args.arm_interface, dry_run=args.dry_run)


async def serve(host: str, port: int, config: ControllerConfig, stop: asyncio.Event | None = None) -> RobotController:
    from crane_x7_vla.bridge.client import RosbridgeClient
    from crane_x7_vla.inference.cli import install_stop_handlers

    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    client = RosbridgeClient(host, port)
    controller = RobotController(client, config)
    await client.connect()
    try:
        await controller.run(stop)
    finally:
        await client.close()
    return controller


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"crane-x7-vla controller: {exc}", file=sys.stderr)
        return 2
    try:
        controller = asyncio.run(serve(args.rosbridge_host, args.rosbridge_port, config))
    except ConnectionError as exc:
        print(f"crane-x7-vla controller: {exc}", file=sys.stderr)
        return 1
    log.info("stopped: %s", controller.stats)
    return 0
