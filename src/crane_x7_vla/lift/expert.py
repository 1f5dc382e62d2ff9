"""A scripted PickPlace expert that acts from state, in the VLA's action space (8 absolute joint targets).

Per env, a phase machine (approach, descend, grasp, lift, carry, place, release, retreat) moves a Cartesian
TCP waypoint towards the phase goal at a bounded speed; damped-least-squares IK (:mod:`crane_x7_vla.lift.ik`)
turns it into 7 joint targets with the gripper pointing down and the fingers across a pair of cube faces.
Phases advance on the *measured* state (TCP near the goal, gripper settled), so the expert works with any
backend's PD lag. Pure numpy: no simulator import.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla.lift.ik import down_rotation, solve_ik
from crane_x7_vla.lift.tasks import PICK_PLACE, PickPlaceTask
from crane_x7_vla.lift.types import Observation
from crane_x7_vla.robot import GRIPPER_GRASP, GRIPPER_OPEN, gripper_pose

F64 = NDArray[np.float64]


class Phase(IntEnum):
    APPROACH = 0
    DESCEND = 1
    GRASP = 2
    LIFT = 3
    CARRY = 4
    PLACE = 5
    RELEASE = 6
    RETREAT = 7


@dataclass(frozen=True)
class ExpertConfig:
    hover_height: float = 0.10  # TCP above the cube centre before descending (m)
    carry_height: float = 0.12  # TCP height while carrying
    grasp_depth: float = -0.012  # TCP below the cube centre when closing (m): pads on the upper cube faces
    place_clearance: float = 0.004  # cube bottom above the table when letting go (m)
    speed: float = 0.6  # max TCP waypoint speed (m/s)
    fine_speed: float = 0.25  # near the cube / table
    tolerance: float = 0.012  # TCP distance to the phase goal that ends a precise phase (descend, place) (m)
    # Transit phases (approach, lift, carry) hand over to the next one this close to their goal, without
    # waiting to settle: a demo that hovers until converged makes "keep hovering" and "go on" look alike to a
    # camera policy, which then stalls at the hover pose (measured: 76% of SFT episodes stalled there).
    handoff_tolerance: float = 0.03
    grasp_ticks: int = 8  # control ticks to close the gripper
    release_ticks: int = 8
    gripper_grasp: float = GRIPPER_GRASP
    gripper_open: float = GRIPPER_OPEN


def grasp_heading(cube_quat: F64, current_heading: F64) -> F64:
    """Finger-opening direction (N,) across two cube faces, the one of the 4 nearest ``current_heading``."""
    w, z = cube_quat[:, 0], cube_quat[:, 3]
    yaw = 2.0 * np.arctan2(z, w)  # cubes stay upright here; roll/pitch are ignored
    # The gripper is symmetric under 180 deg and the cube under 90 deg: pick the candidate nearest now.
    candidates = yaw[:, None] + np.arange(4)[None, :] * (np.pi / 2)
    diff = (candidates - current_heading[:, None] + np.pi) % (2 * np.pi) - np.pi
    best = np.argmin(np.abs(diff), axis=1)
    return current_heading + diff[np.arange(len(best)), best]


class ScriptedExpert:
    """Batched state-based expert. ``act(obs)`` -> (N, 8) float32 joint targets; ``reset(env_idx)`` per episode."""

    def __init__(self, num_envs: int, control_rate: float, task: PickPlaceTask = PICK_PLACE,
                 config: ExpertConfig | None = None) -> None:
        self.num_envs = num_envs
        self.dt = 1.0 / control_rate
        self.task = task
        self.cfg = config or ExpertConfig()
        self.phase = np.zeros(num_envs, dtype=np.int64)
        self.ticks = np.zeros(num_envs, dtype=np.int64)
        self.waypoint = np.full((num_envs, 3), np.nan)
        self.heading = np.full(num_envs, np.nan)
        self.q_cmd = np.full((num_envs, 7), np.nan)
        self.gripper = np.full(num_envs, self.cfg.gripper_open)

    def reset(self, env_idx: NDArray[np.int64] | None = None) -> None:
        idx = np.arange(self.num_envs) if env_idx is None else np.asarray(env_idx)
        self.phase[idx] = Phase.APPROACH
        self.ticks[idx] = 0
        self.waypoint[idx] = np.nan
        self.heading[idx] = np.nan
        self.q_cmd[idx] = np.nan
        self.gripper[idx] = self.cfg.gripper_open

    def _goals(self, cube: F64, goal: F64) -> tuple[F64, F64]:
        """(phase goal (N, 3), speed (N,)) for the current phases."""
        c, h = self.cfg, self.task.cube_half_size
        target = np.empty_like(cube)
        speed = np.full(len(cube), c.speed)
        cube_grasp = cube.copy()
        cube_grasp[:, 2] = h - c.grasp_depth
        place = np.concatenate([goal[:, :2], np.full((len(goal), 1), h + c.place_clearance - c.grasp_depth)], -1)
        above_goal = place.copy()
        above_goal[:, 2] = c.carry_height
        for i, ph in enumerate(self.phase):
            if ph == Phase.APPROACH:
                target[i] = cube[i] + (0.0, 0.0, c.hover_height)
                target[i, 2] = h + c.hover_height
            elif ph in (Phase.DESCEND, Phase.GRASP):
                target[i], speed[i] = cube_grasp[i], c.fine_speed
            elif ph == Phase.LIFT:
                target[i] = self.waypoint[i]
                target[i, 2] = c.carry_height
            elif ph == Phase.CARRY:
                target[i] = above_goal[i]
            elif ph in (Phase.PLACE, Phase.RELEASE):
                target[i], speed[i] = place[i], c.fine_speed
            else:
                target[i] = self.waypoint[i]
                target[i, 2] = c.carry_height
        return target, speed

    def act(self, obs: Observation) -> NDArray[np.float32]:
        """Joint targets (N, 8) for the batched observation (uses ``qpos`` and the task state in ``extra``)."""
        c = self.cfg
        qpos = np.asarray(obs.qpos, dtype=np.float64)
        tcp = np.asarray(obs.extra["tcp_pos"], dtype=np.float64)
        cube = np.asarray(obs.extra["cube_pos"], dtype=np.float64)
        goal = np.asarray(obs.extra["goal_pos"], dtype=np.float64)
        fresh = np.isnan(self.waypoint[:, 0])
        if fresh.any():
            self.waypoint[fresh] = tcp[fresh]
            self.q_cmd[fresh] = qpos[fresh, :7]
            # Start from the heading the fingers have now (gripper x axis projected on the table).
            x_axis = gripper_pose(qpos[fresh])[:, :3, 0]
            now = np.arctan2(x_axis[:, 1], x_axis[:, 0])
            self.heading[fresh] = grasp_heading(np.asarray(obs.extra["cube_quat"], dtype=np.float64)[fresh], now)

        target, speed = self._goals(cube, goal)
        self._advance(tcp, target, cube)
        target, speed = self._goals(cube, goal)
        # Move the waypoint towards the phase goal at a bounded speed (smooth, learnable trajectories).
        delta = target - self.waypoint
        dist = np.linalg.norm(delta, axis=-1, keepdims=True)
        step = np.minimum(1.0, (speed[:, None] * self.dt) / np.maximum(dist, 1e-9))
        self.waypoint = self.waypoint + delta * step
        q, _ = solve_ik(self.q_cmd, self.waypoint, down_rotation(self.heading))
        self.q_cmd = q
        closing = np.isin(self.phase, (Phase.GRASP, Phase.LIFT, Phase.CARRY, Phase.PLACE))
        self.gripper = np.where(closing, c.gripper_grasp, c.gripper_open)
        return np.concatenate([q, self.gripper[:, None]], axis=-1).astype(np.float32)

    def _advance(self, tcp: F64, target: F64, cube: F64) -> None:
        c = self.cfg
        dist = np.linalg.norm(tcp - target, axis=-1)
        near = dist < c.tolerance
        wp_done = np.linalg.norm(self.waypoint - target, axis=-1) < 1e-3
        self.ticks += 1
        for i, ph in enumerate(self.phase.tolist()):
            nxt: int = ph
            settled = near[i] and wp_done[i] if ph in (Phase.DESCEND, Phase.PLACE) else dist[i] < c.handoff_tolerance
            if ph in (Phase.APPROACH, Phase.DESCEND, Phase.LIFT, Phase.CARRY, Phase.PLACE) and settled:
                nxt = ph + 1
            elif ph == Phase.GRASP and self.ticks[i] >= c.grasp_ticks:
                nxt = Phase.LIFT
            elif ph == Phase.RELEASE and self.ticks[i] >= c.release_ticks:
                nxt = Phase.RETREAT
            if nxt != ph:
                self.phase[i] = nxt
                self.ticks[i] = 0
