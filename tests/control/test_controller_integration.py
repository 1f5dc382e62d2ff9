"""The controller through a real rosbridge server: actions in, clamped goals out, bad actions dropped, watchdog."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.bridge.client import RosbridgeClient
from crane_x7_vla.bridge.messages import Float32MultiArray, JointState, JointTrajectory
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.control.controller import ControllerConfig, RobotController
from crane_x7_vla.control.safety import SafetyConfig

REST = np.asarray(robot.REST_ARM_QPOS)


def joint_state(arm: np.ndarray) -> dict[str, Any]:
    pos = [*arm.tolist(), robot.GRIPPER_OPEN, robot.GRIPPER_OPEN]
    return JointState(robot.JOINT_NAMES, tuple(pos), (0.0,) * 9, (0.0,) * 9).to_dict()


async def until(pred: Any, timeout: float = 5.0, *, each: Any = None) -> None:
    """Wait for a condition (optionally re-doing ``each`` while waiting), failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not met in time"
        if each is not None:
            each()
        await asyncio.sleep(0.01)


def action(values: list[float]) -> dict[str, Any]:
    return Float32MultiArray(tuple(values)).to_dict()


async def _scenario(arm_interface: str) -> None:
    arm_goals: asyncio.Queue[JointTrajectory] = asyncio.Queue()
    gripper_goals: asyncio.Queue[float] = asyncio.Queue()

    async def arm_server(goal: dict[str, Any], feedback: Any) -> dict[str, Any]:
        arm_goals.put_nowait(JointTrajectory.from_dict(goal["trajectory"]))
        return {"error_code": 0, "error_string": ""}

    async def gripper_server(goal: dict[str, Any], feedback: Any) -> dict[str, Any]:
        gripper_goals.put_nowait(float(goal["command"]["position"]))
        return {"position": 0.0, "effort": 0.0, "stalled": False, "reached_goal": True}

    server = RosbridgeServer(port=0)
    await server.start()
    server.add_action_server(robot.ARM_ACTION_NAME, robot.ARM_ACTION_TYPE, arm_server)
    server.add_action_server(robot.GRIPPER_ACTION_NAME, robot.GRIPPER_ACTION_TYPE, gripper_server)
    server.add_subscriber(robot.ARM_TRAJECTORY_TOPIC, lambda m: arm_goals.put_nowait(JointTrajectory.from_dict(m)))
    client = RosbridgeClient("127.0.0.1", server.port)
    cfg = ControllerConfig(safety=SafetyConfig(max_joint_step=0.1, watchdog_timeout=0.5), arm_interface=arm_interface)  # type: ignore[arg-type]
    controller = RobotController(client, cfg)
    stop = asyncio.Event()
    try:
        await client.connect()
        task = asyncio.create_task(controller.run(stop))
        # Before any joint state: an action is rejected (the step cannot be bounded).
        await until(lambda: controller.stats.actions > 0, each=lambda: server.publish(
            robot.PREDICTED_ACTION_TOPIC, Float32MultiArray.TYPE, action([*REST.tolist(), 0.5])))
        assert controller.stats.rejected.get("no_joint_state", 0) >= 1 and arm_goals.empty()
        await until(lambda: controller._arm is not None, each=lambda: server.publish(
            robot.JOINT_STATES_TOPIC, JointState.TYPE, joint_state(REST)))
        # A far target: clamped to 0.1 rad per joint from the measured position.
        server.publish(robot.PREDICTED_ACTION_TOPIC, Float32MultiArray.TYPE, action([*(REST + 1.0).tolist(), 0.5]))
        traj = await asyncio.wait_for(arm_goals.get(), 5)
        assert traj.joint_names == robot.ARM_JOINT_NAMES
        goal = np.asarray(traj.points[-1].positions)
        assert np.allclose(goal - REST, np.clip(np.asarray(robot.ARM_UPPER) - REST, None, 0.1), atol=1e-6)
        assert await asyncio.wait_for(gripper_goals.get(), 5) == 0.5
        # Bad actions: wrong length and NaN are rejected; nothing is sent for them.
        n = controller.stats.actions
        server.publish(robot.PREDICTED_ACTION_TOPIC, Float32MultiArray.TYPE, action([0.0] * 7))
        await until(lambda: controller.stats.actions > n)
        server.publish(robot.PREDICTED_ACTION_TOPIC, Float32MultiArray.TYPE, {"layout": {"dim": [], "data_offset": 0},
                                                                              "data": [float("nan")] * 8})
        # The same gripper target again: an arm goal but no new gripper goal.
        await until(lambda: controller.stats.rejected.get("non_finite") == 1)
        server.publish(robot.JOINT_STATES_TOPIC, JointState.TYPE, joint_state(REST))
        server.publish(robot.PREDICTED_ACTION_TOPIC, Float32MultiArray.TYPE, action([*REST.tolist(), 0.51]))
        traj2 = await asyncio.wait_for(arm_goals.get(), 5)
        assert np.allclose(traj2.points[-1].positions, REST)
        # Then silence: the watchdog re-sends the measured position once.
        hold = await asyncio.wait_for(arm_goals.get(), 5)
        assert np.allclose(hold.points[-1].positions, REST) and controller.stats.holds == 1
        assert gripper_goals.empty()
        assert controller.stats.rejected.get("wrong_length") == 1
        assert controller.stats.rejected.get("non_finite") == 1
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        stop.set()
        await client.close()
        await server.stop()


def test_controller_action_interface() -> None:
    asyncio.run(asyncio.wait_for(_scenario("action"), 30))


def test_controller_topic_interface() -> None:
    asyncio.run(asyncio.wait_for(_scenario("topic"), 30))
