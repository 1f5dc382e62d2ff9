"""The sim bridge through a real websocket client: joint states, camera frames, arm and gripper actions."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.bridge.client import RosbridgeClient
from crane_x7_vla.bridge.messages import (
    CompressedImage,
    Duration,
    FollowJointTrajectoryGoal,
    GripperCommandGoal,
    GripperCommandResult,
    JointState,
    JointTrajectory,
    JointTrajectoryPoint,
)
from crane_x7_vla.inference.frames import decode_image

# find_spec, not importorskip: importing mujoco here would pick its GL platform before the backend does.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs mujoco")


def test_arm_goal_moves_joints_and_result_arrives() -> None:
    asyncio.run(asyncio.wait_for(_scenario(), 60))


async def _scenario() -> None:
    from crane_x7_vla.simbridge.bridge import SimBridge, SimBridgeConfig

    bridge = SimBridge(SimBridgeConfig(port=0))
    await bridge.start()
    client = RosbridgeClient("127.0.0.1", bridge.port)
    states: list[JointState] = []
    frames: list[bytes] = []
    got_frame = asyncio.Event()
    got_state = asyncio.Event()

    def on_state(msg: dict[str, Any]) -> None:
        states.append(JointState.from_dict(msg))
        got_state.set()

    def on_image(msg: dict[str, Any]) -> None:
        frames.append(CompressedImage.from_dict(msg).data)
        got_frame.set()

    try:
        await client.connect()
        await client.subscribe(robot.JOINT_STATES_TOPIC, JointState.TYPE, on_state, compression="cbor")
        await client.subscribe(robot.CAMERA_COMPRESSED_TOPIC, CompressedImage.TYPE, on_image,
                               queue_length=1, compression="cbor")
        await asyncio.wait_for(got_frame.wait(), 10)
        await asyncio.wait_for(got_state.wait(), 10)
        assert decode_image("jpeg", frames[-1], 1 << 22).shape == (224, 224, 3)
        assert states and states[-1].name == robot.JOINT_NAMES

        start = np.asarray(states[-1].position[:7])
        target = start + np.array([0.3, -0.2, 0.2, 0.25, -0.2, 0.2, 0.3])
        point = JointTrajectoryPoint(positions=tuple(target), time_from_start=Duration(1, 0))
        goal = FollowJointTrajectoryGoal(trajectory=JointTrajectory(robot.ARM_JOINT_NAMES, (point,)))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        handle = await client.send_action_goal(robot.ARM_ACTION_NAME, robot.ARM_ACTION_TYPE, goal.to_dict())
        result = await handle.result(timeout=10)
        elapsed = loop.time() - t0
        assert result.succeeded, result
        assert elapsed >= 0.9  # the trajectory is followed in time, not jumped to
        got_state.clear()
        await asyncio.wait_for(got_state.wait(), 5)  # a joint state published after the result
        reached = np.asarray(states[-1].position[:7])
        assert np.max(np.abs(reached - target)) < 0.06

        # Gripper: close to the grasp width; the result reports reaching the goal.
        g = await client.send_action_goal(robot.GRIPPER_ACTION_NAME, robot.GRIPPER_ACTION_TYPE,
                                          GripperCommandGoal(robot.GRIPPER_GRASP, 1.0).to_dict())
        gres = await g.result(timeout=10)
        assert gres.succeeded
        gr = GripperCommandResult.from_dict(gres.values)
        assert gr.reached_goal and abs(gr.position - robot.GRIPPER_GRASP) <= robot.GRIPPER_GOAL_TOLERANCE

        # An invalid goal (a joint missing) is aborted with a reason, and the bridge keeps serving.
        bad = {"trajectory": {"joint_names": list(robot.ARM_JOINT_NAMES[:6]),
                              "points": [{"positions": [0.0] * 6, "time_from_start": {"sec": 1, "nanosec": 0}}]}}
        bres = await (await client.send_action_goal(robot.ARM_ACTION_NAME, robot.ARM_ACTION_TYPE, bad)).result(10)
        assert not bres.succeeded and "missing" in str(bres.values)
        got_state.clear()
        await asyncio.wait_for(got_state.wait(), 5)  # still publishing
    finally:
        await client.close()
        await bridge.stop()
