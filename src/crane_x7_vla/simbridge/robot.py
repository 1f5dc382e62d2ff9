"""A simulated CRANE-X7 that runs in real time in a background thread (no asyncio, no sockets).

Design: one thread owns the :class:`~crane_x7_vla.lift.interface.Simulator` (MuJoCo is not thread-safe, so
nothing else touches it). It steps at ``control_rate`` on absolute deadlines (the inference scheduler), sampling
the active arm trajectory at *simulated* time (so a late tick never skips part of a trajectory), and
emits joint states and JPEG camera frames through callbacks. Commands come in through thread-safe methods
that return :class:`concurrent.futures.Future` results, which the asyncio side awaits with
``asyncio.wrap_future`` -- the same contract as ros2_control's JointTrajectoryController and
GripperActionController behind the real robot's action servers.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from crane_x7_vla.inference.scheduler import RateScheduler
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.robot import (
    GRIPPER_GOAL_TOLERANCE,
    JOINT_NAMES,
    NUM_ARM_JOINTS,
)
from crane_x7_vla.simbridge.trajectory import Trajectory, TrajectoryPoint

log = logging.getLogger(__name__)

# FollowJointTrajectory result error codes (control_msgs/action/FollowJointTrajectory).
SUCCESSFUL = 0
INVALID_GOAL = -1
INVALID_JOINTS = -2
GOAL_TOLERANCE_VIOLATED = -5


@dataclass(frozen=True)
class ArmOutcome:
    """How an arm trajectory ended."""

    succeeded: bool
    error_code: int
    error_string: str
    preempted: bool = False


@dataclass(frozen=True)
class GripperOutcome:
    position: float
    effort: float
    stalled: bool
    reached_goal: bool
    preempted: bool = False


@dataclass
class _ArmGoal:
    points: list[TrajectoryPoint]
    future: Future[ArmOutcome] | None
    trajectory: Trajectory | None = None
    start_time: float = 0.0


@dataclass
class _GripperGoal:
    target: float
    future: Future[GripperOutcome] | None
    start_time: float = 0.0
    still_since: float | None = None


@dataclass(frozen=True)
class SimRobotConfig:
    control_rate: float = 100.0  # Hz: physics/control ticks per wall-clock second (and joint state rate)
    camera_rate: float = 30.0  # Hz of JPEG frames (best effort: rendering is the slow part on CPU)
    jpeg_quality: int = 90
    goal_tolerance: float = 0.05  # rad: arm final-position tolerance for success
    goal_time_tolerance: float = 2.0  # s after the trajectory end before the goal is aborted
    stall_velocity: float = 0.02  # rad/s: gripper slower than this counts as still
    stall_time: float = 0.3  # s still (and not at target) -> stalled on an object
    extra_camera: str | None = None  # also render this camera at camera_rate (e.g. "third_person" for videos)


@dataclass
class _Shared:
    """State guarded by the robot's lock."""

    arm_goal: _ArmGoal | None = None
    gripper_goal: _GripperGoal | None = None
    arm_target: NDArray[np.float64] = field(default_factory=lambda: np.zeros(NUM_ARM_JOINTS))
    gripper_target: float = 0.0
    qpos: NDArray[np.float64] = field(default_factory=lambda: np.zeros(NUM_ARM_JOINTS + 1))


JointStateCallback = Callable[[dict[str, Any]], None]
ImageCallback = Callable[[bytes, float], None]


def joint_state_fields(qpos: NDArray[np.floating], qvel: NDArray[np.floating]) -> dict[str, Any]:
    """name/position/velocity/effort for all 9 joints from (8,) qpos/qvel (finger_b mimics finger_a)."""
    pos = [float(x) for x in qpos[: NUM_ARM_JOINTS + 1]] + [float(qpos[NUM_ARM_JOINTS])]
    vel = [float(x) for x in qvel[: NUM_ARM_JOINTS + 1]] + [float(qvel[NUM_ARM_JOINTS])]
    return {"name": list(JOINT_NAMES), "position": pos, "velocity": vel, "effort": [0.0] * len(JOINT_NAMES)}


def encode_jpeg(rgb: NDArray[np.uint8], quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class SimRobot:
    """Owns ``sim`` in a thread; ``start()``/``stop()``; commands are thread-safe."""

    def __init__(
        self,
        sim: Simulator,
        config: SimRobotConfig = SimRobotConfig(),
        *,
        on_joint_state: JointStateCallback | None = None,
        on_image: ImageCallback | None = None,
        on_extra_image: ImageCallback | None = None,
    ) -> None:
        self.sim = sim
        self.config = config
        self.on_joint_state = on_joint_state
        self.on_image = on_image
        self.on_extra_image = on_extra_image
        self._lock = threading.Lock()
        self._shared = _Shared()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sim_time = 0.0
        self.ticks = 0
        self.frames = 0
        self.late_ticks = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._camera_ok = True

    # ---------------------------------------------------------------- lifecycle
    def start(self, seed: int = 0) -> None:
        obs, _ = self.sim.reset(seed=seed)
        q = np.asarray(obs.qpos[0], dtype=np.float64)  # (8,)
        with self._lock:
            self._shared.qpos = q.copy()
            self._shared.arm_target = q[:NUM_ARM_JOINTS].copy()
            self._shared.gripper_target = float(q[NUM_ARM_JOINTS])
        self._thread = threading.Thread(target=self._run, name="sim-robot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (which closes the simulator) and end pending goals as preempted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        with self._lock:
            self._finish_arm(ArmOutcome(False, GOAL_TOLERANCE_VIOLATED, "simulator stopped", preempted=True))
            self._finish_gripper(preempted=True)

    @property
    def qpos(self) -> NDArray[np.float64]:
        """(8,) the latest measured 7 arm joints + finger_a."""
        with self._lock:
            return self._shared.qpos.copy()

    # ---------------------------------------------------------------- commands (any thread)
    def follow_trajectory(self, points: list[TrajectoryPoint], *, want_result: bool = True) -> Future[ArmOutcome]:
        """Start ``points`` (arm joint order, times from now); preempts the running one."""
        fut: Future[ArmOutcome] = Future()
        with self._lock:
            self._finish_arm(ArmOutcome(False, SUCCESSFUL, "preempted by a new goal", preempted=True))
            self._shared.arm_goal = _ArmGoal(points, fut if want_result else None)
        if not want_result:
            fut.set_result(ArmOutcome(True, SUCCESSFUL, "accepted (topic interface)"))
        return fut

    def hold(self) -> None:
        """Stop any trajectory and hold the current arm position (action cancel)."""
        with self._lock:
            self._finish_arm(ArmOutcome(False, SUCCESSFUL, "canceled", preempted=True))
            self._shared.arm_target = self._shared.qpos[:NUM_ARM_JOINTS].copy()

    def command_gripper(self, position: float) -> Future[GripperOutcome]:
        fut: Future[GripperOutcome] = Future()
        with self._lock:
            self._finish_gripper(preempted=True)
            self._shared.gripper_goal = _GripperGoal(float(position), fut)
            self._shared.gripper_target = float(position)
        return fut

    # ---------------------------------------------------------------- thread
    def _finish_arm(self, outcome: ArmOutcome) -> None:
        goal = self._shared.arm_goal
        if goal is not None and goal.future is not None and not goal.future.done():
            goal.future.set_result(outcome)
        self._shared.arm_goal = None

    def _finish_gripper(self, *, preempted: bool = False, stalled: bool = False, reached: bool = False) -> None:
        goal = self._shared.gripper_goal
        if goal is not None and goal.future is not None and not goal.future.done():
            q = float(self._shared.qpos[NUM_ARM_JOINTS])
            goal.future.set_result(GripperOutcome(q, 0.0, stalled, reached, preempted))
        self._shared.gripper_goal = None

    def _update_goals(self, qpos: NDArray[np.float64], qvel: NDArray[np.float64]) -> None:
        """Advance the arm trajectory and resolve finished goals (called with the lock held)."""
        s, t_now, cfg = self._shared, self._sim_time, self.config
        arm = s.arm_goal
        if arm is not None:
            if arm.trajectory is None:
                try:
                    arm.trajectory = Trajectory(qpos[:NUM_ARM_JOINTS], arm.points)
                except ValueError as exc:
                    self._finish_arm(ArmOutcome(False, INVALID_GOAL, str(exc)))
                    arm = None
                else:
                    arm.start_time = t_now
            if arm is not None and arm.trajectory is not None:
                t = t_now - arm.start_time
                s.arm_target = arm.trajectory.sample(t)
                if t >= arm.trajectory.duration:
                    err = float(np.max(np.abs(qpos[:NUM_ARM_JOINTS] - arm.trajectory.final)))
                    if err <= cfg.goal_tolerance:
                        self._finish_arm(ArmOutcome(True, SUCCESSFUL, ""))
                    elif t >= arm.trajectory.duration + cfg.goal_time_tolerance:
                        self._finish_arm(ArmOutcome(False, GOAL_TOLERANCE_VIOLATED,
                                                    f"final position error {err:.3f} rad > {cfg.goal_tolerance}"))
        grip = s.gripper_goal
        if grip is not None:
            if grip.start_time == 0.0:
                grip.start_time = t_now
            q, v = float(qpos[NUM_ARM_JOINTS]), float(qvel[NUM_ARM_JOINTS])
            if abs(q - grip.target) <= GRIPPER_GOAL_TOLERANCE:
                self._finish_gripper(reached=True)
            elif abs(v) < cfg.stall_velocity and t_now - grip.start_time > 0.1:
                grip.still_since = grip.still_since if grip.still_since is not None else t_now
                if t_now - grip.still_since >= cfg.stall_time:
                    self._finish_gripper(stalled=True)
            else:
                grip.still_since = None

    def _run(self) -> None:
        cfg = self.config
        dt = 1.0 / cfg.control_rate
        frame_every = max(1, round(cfg.control_rate / cfg.camera_rate))
        sched = RateScheduler(cfg.control_rate, time.monotonic())
        try:
            while not self._stop.is_set():
                delay = sched.delay(time.monotonic())
                if delay > 0 and self._stop.wait(delay):
                    break
                with self._lock:
                    action = np.concatenate([self._shared.arm_target, [self._shared.gripper_target]])  # (8,)
                result = self.sim.step(action.astype(np.float32))
                self._sim_time += dt
                obs = result.observation
                qpos = np.asarray(obs.qpos[0], dtype=np.float64)  # (8,)
                qvel = np.asarray(obs.qvel[0], dtype=np.float64)  # (8,)
                with self._lock:
                    self._shared.qpos = qpos
                    self._update_goals(qpos, qvel)
                stamp = time.time()
                if self.on_joint_state is not None:
                    self.on_joint_state({**joint_state_fields(qpos, qvel), "stamp": stamp})
                if self.on_image is not None and self.ticks % frame_every == 0:
                    rgb = self._render("wrist")
                    if rgb is not None:
                        self.on_image(encode_jpeg(rgb, cfg.jpeg_quality), stamp)
                        self.frames += 1
                    if cfg.extra_camera and self.on_extra_image is not None:
                        extra = self._render(cfg.extra_camera)
                        if extra is not None:
                            self.on_extra_image(encode_jpeg(extra, cfg.jpeg_quality), stamp)
                self.ticks += 1
                if sched.complete(time.monotonic()).missed:
                    self.late_ticks += 1
        except BaseException as exc:  # the thread must report, not vanish silently
            self._error = exc
            log.exception("simulator thread stopped")
        finally:
            # GL contexts belong to the thread that made them: the renderer is closed here, not by the caller.
            self.sim.close()

    def _render(self, camera: str) -> NDArray[np.uint8] | None:
        if not self._camera_ok:
            return None
        try:
            img = self.sim.render(camera)  # (N, H, W, 3)
        except NotImplementedError:
            img = self.sim.get_observation().rgb_image
        except Exception as exc:  # no GL here: keep the arm simulated, publish no camera
            self._camera_ok = False
            log.error("wrist camera disabled, rendering failed: %s", exc)
            return None
        if img is None or img.size == 0:
            return None
        return np.ascontiguousarray(img[0])

    @property
    def error(self) -> BaseException | None:
        return self._error
