"""The simulated CRANE-X7 behind the project's rosbridge-compatible server: the robot's interfaces without ROS.

Wiring only: :class:`~crane_x7_vla.simbridge.robot.SimRobot` (a thread) produces joint states and JPEG frames,
which are handed to the event loop with ``call_soon_threadsafe`` and published through the server's in-process
API; action goals and trajectory messages from clients become thread-safe robot commands whose
``concurrent.futures`` results are awaited with ``asyncio.wrap_future``. Topic and action names come from
:mod:`crane_x7_vla.robot`, so clients cannot tell this from ``docker compose --profile rosbridge-sim``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.bridge.messages import (
    CompressedImage,
    FollowJointTrajectoryGoal,
    FollowJointTrajectoryResult,
    GripperCommandGoal,
    GripperCommandResult,
    Header,
    JointState,
    JointTrajectory,
    MessageError,
    Time,
)
from crane_x7_vla.inference.ratelimit import RateLimitedLog
from crane_x7_vla.simbridge.robot import SimRobot, SimRobotConfig
from crane_x7_vla.simbridge.trajectory import TrajectoryPoint

log = logging.getLogger(__name__)


class GoalRejected(ValueError):
    """A goal the simulated controller refuses (the action result is ABORTED with this text)."""


def trajectory_points(traj: JointTrajectory) -> list[TrajectoryPoint]:
    """JointTrajectory (any joint order) -> points in ``robot.ARM_JOINT_NAMES`` order, or GoalRejected."""
    names = list(traj.joint_names)
    missing = [n for n in robot.ARM_JOINT_NAMES if n not in names]
    unknown = [n for n in names if n not in robot.ARM_JOINT_NAMES]
    if missing or unknown:
        raise GoalRejected(f"joint_names must be the 7 arm joints; missing {missing}, unknown {unknown}")
    if not traj.points:
        raise GoalRejected("trajectory has no points")
    order = [names.index(n) for n in robot.ARM_JOINT_NAMES]
    lo, hi = np.asarray(robot.ARM_LOWER), np.asarray(robot.ARM_UPPER)
    points = []
    for i, p in enumerate(traj.points):
        if len(p.positions) != len(names):
            raise GoalRejected(f"points[{i}] has {len(p.positions)} positions for {len(names)} joints")
        pos = np.asarray(p.positions, dtype=np.float64)[order]  # (7,)
        if not np.all(np.isfinite(pos)):
            raise GoalRejected(f"points[{i}] has NaN/inf positions")
        if np.any(pos < lo - 1e-6) or np.any(pos > hi + 1e-6):
            raise GoalRejected(f"points[{i}] is outside the joint limits")
        vel = None
        if len(p.velocities) == len(names):
            vel = np.asarray(p.velocities, dtype=np.float64)[order]
        points.append(TrajectoryPoint(p.time_from_start.to_seconds(), pos, vel))
    return points


@dataclass
class SimBridgeConfig:
    simulator: str = "mujoco"
    host: str = "127.0.0.1"
    port: int = 9090  # 0 = pick a free port (see SimBridge.port)
    seed: int = 0
    robot: SimRobotConfig = field(default_factory=SimRobotConfig)
    sim_options: dict[str, Any] = field(default_factory=dict)  # extra SimulatorConfig fields


class SimBridge:
    """``await start()`` / ``await stop()``; serves the robot's topics and actions on ``host:port``."""

    def __init__(self, config: SimBridgeConfig) -> None:
        self.config = config
        self.server: Any = None
        self.robot: SimRobot | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rlog = RateLimitedLog(log)
        self._pending: set[asyncio.Future[Any]] = set()
        self.images_published = 0
        self.frame_listener: Callable[[bytes, float], None] | None = None  # e.g. the demo's video recorder
        self.extra_listener: Callable[[bytes, float], None] | None = None  # SimRobotConfig.extra_camera frames
        self.joint_states_published = 0

    @property
    def port(self) -> int:
        return int(self.server.port)

    def _make_simulator(self) -> Any:
        from crane_x7_vla.lift import SimulatorConfig, create_simulator

        rc = self.config.robot
        sim_cfg = SimulatorConfig(sim_rate=rc.control_rate, max_episode_steps=10**9, robot_init_qpos_noise=0.0,
                                  render_images=False, camera="wrist", device="cpu")
        sim_cfg = replace(sim_cfg, **self.config.sim_options)
        return create_simulator(self.config.simulator, sim_cfg)

    async def start(self) -> None:
        from crane_x7_vla.bridge.server import RosbridgeServer

        self._loop = asyncio.get_running_loop()
        sim = await asyncio.to_thread(self._make_simulator)  # model compile takes a moment: keep the loop free
        self.server = RosbridgeServer(host=self.config.host, port=self.config.port)
        await self.server.start()
        self.server.add_subscriber(robot.ARM_TRAJECTORY_TOPIC, self._on_trajectory_topic)
        self.server.add_action_server(robot.ARM_ACTION_NAME, robot.ARM_ACTION_TYPE, self._arm_goal)
        self.server.add_action_server(robot.GRIPPER_ACTION_NAME, robot.GRIPPER_ACTION_TYPE, self._gripper_goal)
        self.robot = SimRobot(sim, self.config.robot, on_joint_state=self._joint_state_from_thread,
                              on_image=self._image_from_thread, on_extra_image=self._extra_from_thread)
        self.robot.start(seed=self.config.seed)
        log.info("sim bridge (%s) serving the CRANE-X7 interfaces on ws://%s:%d", self.config.simulator,
                 self.config.host, self.port)

    async def stop(self) -> None:
        if self.robot is not None:
            await asyncio.to_thread(self.robot.stop)  # also closes the simulator, in its own thread
        if self.server is not None:
            await self.server.stop()

    # ------------------------------------------------------------------ thread -> loop
    def _threadsafe(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed between the check and the call (shutdown)
                pass

    def _joint_state_from_thread(self, fields: dict[str, Any]) -> None:
        self._threadsafe(self._publish_joint_state, fields)

    def _image_from_thread(self, jpeg: bytes, stamp: float) -> None:
        self._threadsafe(self._publish_image, jpeg, stamp)

    def _extra_from_thread(self, jpeg: bytes, stamp: float) -> None:
        if self.extra_listener is not None:
            self._threadsafe(self.extra_listener, jpeg, stamp)

    def _publish_joint_state(self, fields: dict[str, Any]) -> None:
        header = Header(Time.from_seconds(fields["stamp"]), "")
        msg = JointState(tuple(fields["name"]), tuple(fields["position"]), tuple(fields["velocity"]),
                         tuple(fields["effort"]), header)
        self._spawn(self.server.publish(robot.JOINT_STATES_TOPIC, JointState.TYPE, msg.to_dict()))
        self.joint_states_published += 1

    def _publish_image(self, jpeg: bytes, stamp: float) -> None:
        msg = CompressedImage(jpeg, "jpeg", Header(Time.from_seconds(stamp), robot.WRIST_CAMERA.name))
        self._spawn(self.server.publish(robot.CAMERA_COMPRESSED_TOPIC, CompressedImage.TYPE, msg.to_dict()))
        self.images_published += 1
        if self.frame_listener is not None:
            self.frame_listener(jpeg, stamp)

    def _spawn(self, result: Any) -> None:
        # server.publish may be sync or a coroutine; keep a reference to pending ones so none is collected.
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    # ------------------------------------------------------------------ clients -> robot
    def _on_trajectory_topic(self, msg: dict[str, Any]) -> None:
        try:
            points = trajectory_points(JointTrajectory.from_dict(msg))
        except (MessageError, GoalRejected) as exc:
            self.rlog.warning("bad_trajectory", "ignored a JointTrajectory on %s: %s", robot.ARM_TRAJECTORY_TOPIC, exc)
            return
        assert self.robot is not None
        self.robot.follow_trajectory(points, want_result=False)

    async def _arm_goal(self, goal: dict[str, Any], feedback: Any) -> dict[str, Any]:
        assert self.robot is not None
        try:
            points = trajectory_points(FollowJointTrajectoryGoal.from_dict(goal).trajectory)
        except (MessageError, GoalRejected) as exc:
            raise GoalRejected(f"invalid FollowJointTrajectory goal: {exc}") from exc
        future = self.robot.follow_trajectory(points)
        try:
            outcome = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.robot.hold()
            raise
        if not outcome.succeeded and not outcome.preempted:
            raise GoalRejected(f"error_code {outcome.error_code}: {outcome.error_string}")
        return FollowJointTrajectoryResult(outcome.error_code, outcome.error_string).to_dict()

    async def _gripper_goal(self, goal: dict[str, Any], feedback: Any) -> dict[str, Any]:
        assert self.robot is not None
        try:
            cmd = GripperCommandGoal.from_dict(goal)
        except MessageError as exc:
            raise GoalRejected(f"invalid GripperCommand goal: {exc}") from exc
        if not np.isfinite(cmd.position):
            raise GoalRejected("gripper position is NaN/inf")
        position = float(np.clip(cmd.position, robot.GRIPPER_LOWER, robot.GRIPPER_UPPER))
        outcome = await asyncio.wrap_future(self.robot.command_gripper(position))
        return GripperCommandResult(outcome.position, outcome.effort, outcome.stalled, outcome.reached_goal).to_dict()
