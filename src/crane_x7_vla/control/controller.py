"""The robot-side controller: ``/vla/predicted_action`` -> safe arm and gripper goals, over rosbridge.

It runs next to the robot's rosbridge (or the sim bridge) as one more client. All decisions are made by
:mod:`crane_x7_vla.control.safety`; this module only moves messages: joint states in, validated actions in,
FollowJointTrajectory / JointTrajectory / GripperCommand out. A goal is never awaited before the next action:
ros2_control's JointTrajectoryController replaces a running goal with a new one, which is exactly the
streaming behaviour a 10 Hz policy needs. Results are checked in the background and failures are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla import robot
from crane_x7_vla.bridge.messages import (
    Duration,
    Float32MultiArray,
    FollowJointTrajectoryGoal,
    GripperCommandGoal,
    JointState,
    JointTrajectory,
    JointTrajectoryPoint,
    MessageError,
)
from crane_x7_vla.control.safety import (
    ActionRejected,
    ArmCommand,
    GripperGate,
    SafetyConfig,
    Watchdog,
    plan_arm,
    validate_action,
)
from crane_x7_vla.inference.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

ArmInterface = Literal["action", "topic"]


@dataclass(frozen=True)
class ControllerConfig:
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    arm_interface: ArmInterface = "action"  # FollowJointTrajectory action, or the JTC's joint_trajectory topic
    dry_run: bool = False  # log the goals, send nothing
    max_joint_state_age: float = 0.5  # s; older measurements are not used to plan a step
    gripper_max_effort: float = robot.GRIPPER_MAX_EFFORT


@dataclass
class ControllerStats:
    actions: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    arm_goals: int = 0
    gripper_goals: int = 0
    holds: int = 0
    clamped: int = 0
    goal_failures: int = 0


def arm_trajectory(cmd: ArmCommand) -> JointTrajectory:
    """A one-point JointTrajectory reaching ``cmd.positions`` after ``cmd.duration`` (zero end velocity)."""
    ns = round(cmd.duration * 1e9)
    point = JointTrajectoryPoint(positions=cmd.positions, velocities=(0.0,) * len(cmd.positions),
                                 time_from_start=Duration(ns // 1_000_000_000, ns % 1_000_000_000))
    return JointTrajectory(joint_names=robot.ARM_JOINT_NAMES, points=(point,))


class RobotController:
    """``await run(stop)`` with a connected-or-connecting rosbridge client."""

    def __init__(self, client: Any, config: ControllerConfig = ControllerConfig(),
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        self.stats = ControllerStats()
        self.rlog = RateLimitedLog(log)
        self.watchdog = Watchdog(config.safety.watchdog_timeout)
        self.gripper = GripperGate(config.safety.gripper_deadband)
        self._arm: NDArray[np.float64] | None = None  # (7,) latest measured arm position
        self._arm_time = -float("inf")
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sent: list[tuple[str, dict[str, Any]]] = []  # dry-run record (bounded)

    # ------------------------------------------------------------------ inputs
    def on_joint_state(self, msg: dict[str, Any]) -> None:
        try:
            by_name = JointState.from_dict(msg).positions_by_name()
            arm = np.asarray([by_name[n] for n in robot.ARM_JOINT_NAMES], dtype=np.float64)  # (7,)
        except (MessageError, KeyError) as exc:
            self.rlog.warning("bad_joint_state", "ignored a JointState without the 7 arm joints: %s", exc)
            return
        if not np.all(np.isfinite(arm)):
            self.rlog.warning("bad_joint_state", "ignored a JointState with NaN/inf positions")
            return
        self._arm, self._arm_time = arm, self.clock()

    def _reject(self, kind: str, message: str) -> None:
        self.stats.rejected[kind] = self.stats.rejected.get(kind, 0) + 1
        self.rlog.warning(kind, "rejected action: %s", message)

    async def on_action(self, msg: dict[str, Any]) -> None:
        self.stats.actions += 1
        try:
            action = validate_action(Float32MultiArray.from_dict(msg).data)  # (8,)
        except MessageError as exc:
            self._reject("bad_message", f"not a Float32MultiArray: {exc}")
            return
        except ActionRejected as exc:
            self._reject(exc.kind, str(exc))
            return
        now = self.clock()
        if self._arm is None or now - self._arm_time > self.config.max_joint_state_age:
            self._reject("no_joint_state", f"no joint state on {robot.JOINT_STATES_TOPIC} in the last "
                                           f"{self.config.max_joint_state_age}s; cannot bound the step")
            return
        self.watchdog.feed(now)
        cmd = plan_arm(action, self._arm, self.config.safety)
        if cmd.clamped:
            self.stats.clamped += 1
        await self._send_arm(cmd)
        target = self.gripper.update(float(action[robot.NUM_ARM_JOINTS]))
        if target is not None:
            await self._send_gripper(target)

    # ------------------------------------------------------------------ outputs
    async def _send_arm(self, cmd: ArmCommand) -> None:
        traj = arm_trajectory(cmd)
        self.stats.arm_goals += 1
        if self.config.arm_interface == "topic":
            await self._emit("topic", robot.ARM_TRAJECTORY_TOPIC, traj.to_dict())
        else:
            await self._emit("action", robot.ARM_ACTION_NAME, FollowJointTrajectoryGoal(trajectory=traj).to_dict(),
                             robot.ARM_ACTION_TYPE)

    async def _send_gripper(self, position: float) -> None:
        self.stats.gripper_goals += 1
        goal = GripperCommandGoal(position=position, max_effort=self.config.gripper_max_effort)
        await self._emit("action", robot.GRIPPER_ACTION_NAME, goal.to_dict(), robot.GRIPPER_ACTION_TYPE)

    async def _emit(self, kind: str, name: str, payload: dict[str, Any], action_type: str = "") -> None:
        if self.config.dry_run:
            log.info("[dry-run] %s %s %s", kind, name, payload)
            if len(self.sent) < 10_000:
                self.sent.append((name, payload))
            return
        try:
            if kind == "topic":
                await self.client.publish(name, payload)
                return
            handle = await self.client.send_action_goal(name, action_type, payload)
        except (ConnectionError, OSError, RuntimeError) as exc:
            self.rlog.warning("send_failed", "could not send to %s (%s); the client reconnects", name, exc)
            return
        task = asyncio.create_task(self._watch_result(name, handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_result(self, name: str, handle: Any) -> None:
        try:
            res = await handle.result()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection lost while waiting, etc.
            self.rlog.warning("goal_lost", "goal on %s ended without a result: %s", name, exc)
            return
        status = getattr(res, "status", None)
        if getattr(res, "succeeded", True) or getattr(res, "canceled", False) or status == 5:
            return
        self.stats.goal_failures += 1
        self.rlog.warning(f"goal_failed:{name}", "goal on %s failed (status %s): %s", name, status,
                          getattr(res, "values", res))

    async def hold_position(self) -> None:
        """Re-send the measured position so the arm stops where it is (watchdog)."""
        if self._arm is None:
            return
        self.stats.holds += 1
        log.warning("no action for %.2gs: holding the current position", self.config.safety.watchdog_timeout)
        cmd = ArmCommand(tuple(float(x) for x in self._arm), self.config.safety.min_duration, False)
        await self._send_arm(cmd)

    # ------------------------------------------------------------------ main
    async def setup(self) -> None:
        await self.client.subscribe(robot.JOINT_STATES_TOPIC, JointState.TYPE, self.on_joint_state,
                                    queue_length=1)
        await self.client.subscribe(robot.PREDICTED_ACTION_TOPIC, Float32MultiArray.TYPE, self.on_action,
                                    queue_length=1)
        if self.config.arm_interface == "topic" and not self.config.dry_run:
            await self.client.advertise(robot.ARM_TRAJECTORY_TOPIC, JointTrajectory.TYPE)

    async def run(self, stop: asyncio.Event) -> None:
        await self.setup()
        period = min(0.05, self.config.safety.watchdog_timeout / 4)
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=period)
                if self.watchdog.check(self.clock()):
                    await self.hold_position()
        finally:
            for task in list(self._tasks):
                task.cancel()
