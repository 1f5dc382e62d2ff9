"""PickPlace-CRANE-X7: the task semantics every simulator backend shares (pure numpy, no simulator import).

World frame = the robot's ``base_link`` (the arm stands on the table top at z = 0, x points forward). A cube
spawns at a random pose in front of the robot and a flat goal disc at a random spot at least
``min_goal_distance`` away; the robot must pick the cube and put it down on the disc.

Success (documented contract, identical on every backend): the cube's centre is within ``goal_radius`` of
the goal in the table plane, the cube rests on the table (centre within ``rest_tolerance`` of its resting
height) and the gripper has let go of it (``is_grasped`` false). Backends only measure the raw state
(:class:`TaskState`); rewards, success and metrics come from :meth:`PickPlaceTask.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla.lift.tasks.registry import register_task
from crane_x7_vla.lift.types import RewardMode
from crane_x7_vla.robot import ACTION_LOWER, ACTION_UPPER, REST_QPOS

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

ENV_ID: Final = "PickPlace-CRANE-X7"
# The documented default instruction of the VLA-RL trainer (``--instruction``), so demos and RL agree.
INSTRUCTION: Final = "pick up the object and place it"


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything random about one episode; the same spec gives the same start on every backend."""

    cube_xy: tuple[float, float]  # cube centre on the table (m, world)
    cube_yaw: float  # rotation about world z (rad)
    goal_xy: tuple[float, float]  # goal disc centre (m, world)
    init_qpos: tuple[float, ...]  # 8 values: rest pose + uniform noise on the 7 arm joints


@dataclass
class TaskState:
    """Raw batched state a backend measures each step (N = num_envs)."""

    tcp_pos: F64  # (N, 3) tool centre point (robot.tcp_pose) in world
    cube_pos: F64  # (N, 3) cube centre
    goal_pos: F64  # (N, 3) goal disc centre on the table (z = 0)
    gripper_q: F64  # (N,) finger_a angle (rad)
    is_grasped: NDArray[np.bool_]  # (N,) both fingers touch the cube


@dataclass(frozen=True)
class PickPlaceTask:
    """Geometry and semantics of the pick-and-place task. All lengths in metres."""

    env_id: str = ENV_ID
    instruction: str = INSTRUCTION
    cube_half_size: float = 0.02  # 4 cm cube
    cube_mass: float = 0.05
    cube_rgba: tuple[float, float, float, float] = (0.85, 0.1, 0.1, 1.0)  # red, a colour nothing else has
    goal_radius: float = 0.035  # success radius and radius of the drawn disc
    goal_rgba: tuple[float, float, float, float] = (0.1, 0.75, 0.2, 1.0)
    # Table: top at z = 0; box centre and half extents.
    table_centre: tuple[float, float, float] = (0.25, 0.0, -0.02)
    table_half: tuple[float, float, float] = (0.45, 0.5, 0.02)
    table_rgba: tuple[float, float, float, float] = (0.55, 0.42, 0.3, 1.0)
    cube_region: tuple[tuple[float, float], tuple[float, float]] = ((0.30, 0.40), (-0.08, 0.08))  # (x lo,hi),(y lo,hi)
    goal_region: tuple[tuple[float, float], tuple[float, float]] = ((0.28, 0.42), (-0.15, 0.15))
    cube_yaw_range: float = np.pi / 4  # a cube is symmetric under 90 deg, so +-45 deg covers every yaw
    min_goal_distance: float = 0.09
    rest_tolerance: float = 0.006  # cube counts as resting if its centre is this close to table height
    reach_tolerance: float = 0.025  # TCP this close to the cube centre = "reached"
    lift_height: float = 0.04  # cube raised this much above resting = "lifted"
    stage_rewards: dict[str, float] = field(
        default_factory=lambda: {"reach": 0.1, "grasp": 0.3, "lift": 0.5, "over_goal": 0.7, "success": 1.0}
    )

    @property
    def cube_rest_z(self) -> float:
        return self.cube_half_size

    def sample_episode(self, rng: np.random.Generator, qpos_noise: float = 0.02) -> EpisodeSpec:
        """Draw cube pose, goal and initial joints; deterministic given ``rng``'s state."""
        (xl, xh), (yl, yh) = self.cube_region
        cube = rng.uniform((xl, yl), (xh, yh))
        yaw = float(rng.uniform(-self.cube_yaw_range, self.cube_yaw_range))
        (gxl, gxh), (gyl, gyh) = self.goal_region
        # Rejection sampling keeps the goal apart from the cube; bounded so a bad region cannot hang.
        for _ in range(1000):
            goal = rng.uniform((gxl, gyl), (gxh, gyh))
            if np.linalg.norm(goal - cube) >= self.min_goal_distance:
                break
        else:
            raise ValueError("goal_region leaves no spot min_goal_distance away from the cube; widen it")
        noise = rng.uniform(-qpos_noise, qpos_noise, size=7)
        q = np.asarray(REST_QPOS, dtype=np.float64).copy()
        q[:7] = np.clip(q[:7] + noise, ACTION_LOWER[:7], ACTION_UPPER[:7])
        return EpisodeSpec((float(cube[0]), float(cube[1])), yaw, (float(goal[0]), float(goal[1])),
                           tuple(float(v) for v in q))

    def evaluate(self, state: TaskState, reward_mode: RewardMode = "binary") -> tuple[F32, NDArray[np.bool_], dict[str, NDArray[np.generic]]]:
        """Reward (N,), success (N,) and metrics (each (N,)) for a batched state."""
        tcp_to_cube = np.linalg.norm(state.tcp_pos - state.cube_pos, axis=-1)
        cube_to_goal = np.linalg.norm(state.cube_pos[:, :2] - state.goal_pos[:, :2], axis=-1)
        height = state.cube_pos[:, 2] - self.cube_rest_z
        grasped = np.asarray(state.is_grasped, dtype=bool)
        reached = tcp_to_cube <= self.reach_tolerance
        lifted = grasped & (height >= self.lift_height)
        over_goal = grasped & (cube_to_goal <= self.goal_radius)
        resting = np.abs(height) <= self.rest_tolerance
        success = (cube_to_goal <= self.goal_radius) & resting & ~grasped

        if reward_mode == "binary":
            reward = success.astype(np.float32)
        elif reward_mode == "staged":
            s = self.stage_rewards
            reward = np.zeros(len(success), dtype=np.float32)
            # Stages are nested; the highest reached stage sets the reward (Markov in the state).
            for name, mask in (("reach", reached | grasped), ("grasp", grasped), ("lift", lifted),
                               ("over_goal", over_goal), ("success", success)):
                reward = np.where(mask, np.float32(s[name]), reward).astype(np.float32)
        elif reward_mode == "dense":
            # Shaped like ManiSkill's PickCube: reach + grasp + carry-to-goal, normalised to [0, 1].
            reach_r = 1.0 - np.tanh(5.0 * tcp_to_cube)
            goal3 = np.concatenate([state.goal_pos[:, :2], np.full((len(success), 1), self.cube_rest_z)], -1)
            place_r = 1.0 - np.tanh(5.0 * np.linalg.norm(state.cube_pos - goal3, axis=-1))
            raw = reach_r + grasped + grasped * place_r
            reward = np.where(success, 1.0, raw / 4.0).astype(np.float32)
        else:
            raise ValueError(f"unknown reward_mode {reward_mode!r}; use 'binary', 'staged' or 'dense'")
        metrics: dict[str, NDArray[np.generic]] = {
            "tcp_to_cube": tcp_to_cube.astype(np.float32),
            "cube_to_goal": cube_to_goal.astype(np.float32),
            "cube_height": height.astype(np.float32),
            "is_grasped": grasped,
            "reached": reached,
            "lifted": lifted,
            "over_goal": over_goal,
            "success": success,
        }
        return reward, success, metrics


PICK_PLACE: Final = register_task(PickPlaceTask())
