"""Task semantics (pure): episode sampling, reachability, rewards/success, registry."""

from __future__ import annotations

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.lift.ik import down_rotation, solve_ik, tcp_jacobian
from crane_x7_vla.lift.tasks import ENV_ID, PICK_PLACE, TaskState, get_task


def test_sample_episode_is_deterministic_and_in_regions() -> None:
    a = PICK_PLACE.sample_episode(np.random.default_rng(3))
    b = PICK_PLACE.sample_episode(np.random.default_rng(3))
    assert a == b
    rng = np.random.default_rng(0)
    (xl, xh), (yl, yh) = PICK_PLACE.cube_region
    for _ in range(200):
        ep = PICK_PLACE.sample_episode(rng, qpos_noise=0.05)
        assert xl <= ep.cube_xy[0] <= xh and yl <= ep.cube_xy[1] <= yh
        assert np.hypot(ep.goal_xy[0] - ep.cube_xy[0], ep.goal_xy[1] - ep.cube_xy[1]) >= PICK_PLACE.min_goal_distance
        assert abs(ep.cube_yaw) <= PICK_PLACE.cube_yaw_range
        q = np.asarray(ep.init_qpos)
        assert q.shape == (8,) and np.abs(q[:7] - robot.REST_ARM_QPOS).max() <= 0.05 + 1e-12


def test_analytic_jacobian_matches_finite_differences() -> None:
    q = np.random.default_rng(1).uniform(robot.ARM_LOWER, robot.ARM_UPPER, size=(4, 7))
    p, _, jac = tcp_jacobian(q)
    np.testing.assert_allclose(p, robot.tcp_pose(q)[:, :3, 3], atol=1e-12)
    np.testing.assert_allclose(jac[:, :3], robot.position_jacobian(q), atol=1e-6)


def test_region_corners_are_reachable_with_the_gripper_down() -> None:
    corners = []
    for (xl, xh), (yl, yh) in (PICK_PLACE.cube_region, PICK_PLACE.goal_region):
        for x in (xl, xh):
            for y in (yl, yh):
                for z in (PICK_PLACE.cube_half_size, 0.12):  # grasp height and carry height
                    corners.append((x, y, z))
    target = np.array(corners)
    n = len(target)
    rot = down_rotation(np.full(n, np.pi / 2))
    q0 = np.broadcast_to(np.array(robot.REST_ARM_QPOS), (n, 7))
    q = q0
    for _ in range(5):  # a few warm-started solves, as the expert does over successive ticks
        q, err = solve_ik(q, target, rot, iterations=50)
    assert err.max() < 2e-3, err
    pose = robot.tcp_pose(q)
    np.testing.assert_allclose(pose[:, :3, 2], np.broadcast_to([0.0, 0.0, -1.0], (n, 3)), atol=0.02)
    assert (q >= np.array(robot.ARM_LOWER) - 1e-9).all() and (q <= np.array(robot.ARM_UPPER) + 1e-9).all()


def _state(cube: list[list[float]], tcp: list[list[float]], grasped: list[bool]) -> TaskState:
    n = len(cube)
    return TaskState(tcp_pos=np.array(tcp, dtype=float), cube_pos=np.array(cube, dtype=float),
                     goal_pos=np.tile([0.3, 0.1, 0.0], (n, 1)), gripper_q=np.full(n, 0.4),
                     is_grasped=np.array(grasped))


def test_evaluate_success_and_stages() -> None:
    h = PICK_PLACE.cube_half_size
    state = _state(
        cube=[[0.3, -0.05, h], [0.3, -0.05, h], [0.3, -0.05, h + 0.06], [0.3, 0.11, h + 0.06],
              [0.305, 0.1, h], [0.305, 0.1, h], [0.3, 0.2, h]],
        tcp=[[0.2, 0.0, 0.3], [0.3, -0.05, h + 0.01], [0.3, -0.05, h + 0.07], [0.3, 0.11, h + 0.07],
             [0.305, 0.1, h + 0.01], [0.3, 0.1, 0.2], [0.3, 0.2, 0.2]],
        grasped=[False, False, True, True, True, False, False],
    )
    _, success, metrics = PICK_PLACE.evaluate(state, "binary")
    # Only the released cube resting on the goal (index 5) succeeds; held over/at the goal does not.
    assert success.tolist() == [False, False, False, False, False, True, False]
    staged, _, _ = PICK_PLACE.evaluate(state, "staged")
    s = PICK_PLACE.stage_rewards
    assert staged.tolist() == pytest.approx([0.0, s["reach"], s["lift"], s["over_goal"], s["over_goal"], 1.0, 0.0])
    dense, _, _ = PICK_PLACE.evaluate(state, "dense")
    assert dense.dtype == np.float32 and ((dense >= 0) & (dense <= 1)).all()
    assert dense[1] > dense[0] and dense[3] > dense[2] and dense[5] == 1.0
    assert metrics["lifted"].tolist() == [False, False, True, True, False, False, False]
    with pytest.raises(ValueError, match="reward_mode"):
        PICK_PLACE.evaluate(state, "sparse")  # type: ignore[arg-type]


def test_task_registry() -> None:
    assert get_task(ENV_ID) is PICK_PLACE
    with pytest.raises(ValueError, match="Did you mean 'PickPlace-CRANE-X7'"):
        get_task("PickPlace-CRANE-X6")
