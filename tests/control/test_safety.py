"""Controller safety as pure logic: validation, limits, max step, durations, gripper deadband, watchdog."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.control.safety import (
    ActionRejected,
    GripperGate,
    SafetyConfig,
    Watchdog,
    plan_arm,
    validate_action,
)

REST = np.asarray(robot.REST_ARM_QPOS)


@pytest.mark.parametrize(("action", "kind"), [
    ([0.0] * 7, "wrong_length"),
    ([0.0] * 9, "wrong_length"),
    ([0.0] * 7 + [math.nan], "non_finite"),
    ([math.inf] + [0.0] * 7, "non_finite"),
    (["a"] * 8, "not_numeric"),
])
def test_bad_actions_rejected(action: list[object], kind: str) -> None:
    with pytest.raises(ActionRejected) as info:
        validate_action(action)  # type: ignore[arg-type]
    assert info.value.kind == kind


def test_targets_clamped_to_limits_and_step() -> None:
    cfg = SafetyConfig(max_joint_step=0.2)
    action = validate_action([10.0, -10.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.5])
    cmd = plan_arm(action, REST, cfg)
    goal = np.asarray(cmd.positions)
    assert cmd.clamped
    assert np.all(np.abs(goal - REST) <= 0.2 + 1e-12)  # never more than max step from the measurement
    assert np.all(goal >= np.asarray(robot.ARM_LOWER)) and np.all(goal <= np.asarray(robot.ARM_UPPER))
    assert goal[0] == pytest.approx(REST[0] + 0.2) and goal[1] == pytest.approx(REST[1] - 0.2)
    # J4's upper limit is 0: starting at -0.1, a huge positive target stops at the limit, not at +0.1.
    start = REST.copy()
    start[3] = -0.1
    assert plan_arm(action, start, cfg).positions[3] == pytest.approx(0.0)


def test_small_move_passes_through_and_duration_respects_velocity() -> None:
    cfg = SafetyConfig(max_joint_step=0.5, velocity_scale=0.5, min_duration=0.1)
    target = REST + 0.01
    cmd = plan_arm(validate_action([*target, 0.5]), REST, cfg)
    assert not cmd.clamped and np.allclose(cmd.positions, target)
    assert cmd.duration == pytest.approx(0.1)
    big = plan_arm(validate_action([*(REST + 0.5), 0.5]), REST, cfg)
    speed = 0.5 / big.duration
    assert speed <= 0.5 * min(robot.ARM_VELOCITY_LIMITS) + 1e-9


def test_gripper_gate_deadband_and_clamp() -> None:
    gate = GripperGate(deadband=0.05)
    assert gate.update(0.5) == pytest.approx(0.5)
    assert gate.update(0.53) is None  # within deadband: not re-sent
    assert gate.update(0.6) == pytest.approx(0.6)
    assert gate.update(99.0) == pytest.approx(robot.GRIPPER_UPPER)


def test_watchdog_fires_once_per_silence() -> None:
    dog = Watchdog(timeout=1.0)
    assert not dog.check(100.0)  # never before the first action
    dog.feed(0.0)
    assert not dog.check(0.99)
    assert dog.check(1.0) and dog.holding
    assert not dog.check(5.0)  # once
    dog.feed(6.0)
    assert not dog.holding and not dog.check(6.5) and dog.check(7.0)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_joint_step"):
        SafetyConfig(max_joint_step=0.0)
    with pytest.raises(ValueError, match="gripper_deadband"):
        SafetyConfig(gripper_deadband=-1.0)
