"""Safety logic of the robot-side controller (pure: numbers in, decisions out; no I/O, no clock reads).

Policy, in order, for each predicted action (7 absolute arm joint targets + gripper finger_a target, rad):
1. reject wrong-length or non-finite actions (never clamp a NaN into a "valid" command);
2. clamp every target into the joint limits of :mod:`crane_x7_vla.robot`;
3. move at most ``max_joint_step`` rad per joint per action from the *measured* position toward the target,
   so a single bad prediction cannot swing the arm across the workspace;
4. give the trajectory a duration that keeps every joint under ``velocity_scale`` x its velocity limit;
5. send a gripper goal only when the target moved more than ``gripper_deadband`` since the last one
   (a GripperCommand goal restarts the gripper action; re-sending the same target at 10 Hz makes it chatter).
A :class:`Watchdog` tells the controller to hold the current position when actions stop arriving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla.robot import (
    ACTION_DIM,
    ARM_LOWER,
    ARM_UPPER,
    ARM_VELOCITY_LIMITS,
    GRIPPER_LOWER,
    GRIPPER_UPPER,
    NUM_ARM_JOINTS,
)


class ActionRejected(ValueError):
    """An action that must not be executed; ``kind`` keys the rate-limited log."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class SafetyConfig:
    """Tunable safety limits of the controller."""

    max_joint_step: float = 0.25  # rad per action and joint, toward the target from the measured position
    velocity_scale: float = 0.5  # fraction of each joint's velocity limit a trajectory may use
    min_duration: float = 0.1  # s; shortest trajectory (about one inference period at 10 Hz)
    gripper_deadband: float = 0.05  # rad; smaller gripper target changes are not sent
    watchdog_timeout: float = 1.0  # s without a valid action -> hold position

    def __post_init__(self) -> None:
        for name in ("max_joint_step", "velocity_scale", "min_duration", "watchdog_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SafetyConfig.{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.gripper_deadband) and self.gripper_deadband >= 0):
            raise ValueError(f"SafetyConfig.gripper_deadband must be >= 0, got {self.gripper_deadband!r}")


_ARM_LO = np.asarray(ARM_LOWER, dtype=np.float64)
_ARM_HI = np.asarray(ARM_UPPER, dtype=np.float64)
_ARM_VMAX = np.asarray(ARM_VELOCITY_LIMITS, dtype=np.float64)


def validate_action(data: Sequence[float] | NDArray[np.floating]) -> NDArray[np.float64]:
    """The action as an (8,) float64 array, or :class:`ActionRejected` (wrong length, not numbers, NaN/inf)."""
    try:
        arr = np.asarray(data, dtype=np.float64).reshape(-1)  # (n,)
    except (TypeError, ValueError) as exc:
        raise ActionRejected("not_numeric", f"action is not a list of numbers: {exc}") from exc
    if arr.shape[0] != ACTION_DIM:
        raise ActionRejected("wrong_length", f"action has {arr.shape[0]} values, expected {ACTION_DIM} "
                                             "(7 arm joint targets + gripper, rad)")
    if not np.all(np.isfinite(arr)):
        bad = [i for i, v in enumerate(arr) if not math.isfinite(v)]
        raise ActionRejected("non_finite", f"action has NaN/inf at indices {bad}")
    return arr


def clamp_arm(target: NDArray[np.float64]) -> NDArray[np.float64]:
    """(7,) arm targets clamped into the joint limits."""
    return np.clip(target, _ARM_LO, _ARM_HI)


def clamp_gripper(target: float) -> float:
    return float(min(max(target, GRIPPER_LOWER), GRIPPER_UPPER))


def step_toward(current: NDArray[np.float64], target: NDArray[np.float64], max_step: float) -> NDArray[np.float64]:
    """Move each joint from ``current`` toward ``target`` by at most ``max_step`` (then clamp to limits)."""
    delta = np.clip(target - current, -max_step, max_step)
    return clamp_arm(current + delta)


def trajectory_duration(current: NDArray[np.float64], goal: NDArray[np.float64], cfg: SafetyConfig) -> float:
    """Seconds for ``current -> goal`` keeping every joint under ``velocity_scale`` x its limit."""
    needed = np.abs(goal - current) / (_ARM_VMAX * cfg.velocity_scale)
    return float(max(cfg.min_duration, needed.max(initial=0.0)))


@dataclass(frozen=True)
class ArmCommand:
    """A safe arm goal: positions (7,) to reach in ``duration`` seconds."""

    positions: tuple[float, ...]
    duration: float
    clamped: bool  # True when limits or the step limit changed the request


def plan_arm(action: NDArray[np.float64], current_arm: NDArray[np.float64], cfg: SafetyConfig) -> ArmCommand:
    """Turn a validated (8,) action and the measured (7,) arm position into a safe :class:`ArmCommand`."""
    requested = action[:NUM_ARM_JOINTS]
    limited = clamp_arm(requested)
    goal = step_toward(current_arm, limited, cfg.max_joint_step)
    clamped = bool(np.any(np.abs(goal - requested) > 1e-9))
    return ArmCommand(tuple(float(x) for x in goal), trajectory_duration(current_arm, goal, cfg), clamped)


class GripperGate:
    """Decides whether a gripper target differs enough from the last one sent."""

    def __init__(self, deadband: float) -> None:
        self.deadband = deadband
        self.last_sent: float | None = None

    def update(self, target: float) -> float | None:
        """The clamped target to send now, or None when it is within the deadband of the last one."""
        target = clamp_gripper(target)
        if self.last_sent is not None and abs(target - self.last_sent) <= self.deadband:
            return None
        self.last_sent = target
        return target

    def reset(self) -> None:
        self.last_sent = None


class Watchdog:
    """Fires once when no action was fed for ``timeout`` seconds; re-armed by the next action."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._last_feed: float | None = None
        self._fired = False

    def feed(self, now: float) -> None:
        self._last_feed = now
        self._fired = False

    def check(self, now: float) -> bool:
        """True exactly once per silence longer than ``timeout`` (never before the first action)."""
        if self._last_feed is None or self._fired:
            return False
        if now - self._last_feed >= self.timeout:
            self._fired = True
            return True
        return False

    @property
    def holding(self) -> bool:
        return self._fired
