"""The ONE conformance suite every Lift backend passes (Gymnasium's ``check_env`` idea, as a pytest mixin).

Use it from a backend's test module::

    from conformance import SimFactory, SimulatorConformance  # tests/lift is on sys.path (rootdir import)

    class TestMyBackend(SimulatorConformance):
        @pytest.fixture(scope="class")
        def make_sim(self) -> SimFactory:
            return lambda config: create_simulator("mybackend", config)

``make_sim(config)`` must build a fresh simulator for a :class:`SimulatorConfig`. The suite builds only two
simulators per backend (class scope): a 2-env one with images and a 1-env state-only one, and resets them
before each check, so it stays cheap. Every check is also a plain function (``check_*``) so scripts can run
them without pytest.

Contract checked here (besides the interface types): ``Observation.extra`` carries ``tcp_pos`` (N,3),
``cube_pos`` (N,3), ``cube_quat`` (N,4, wxyz), ``goal_pos`` (N,3) and ``is_grasped`` (N,) bool; ``info`` of
``reset``/``step`` has ``success`` (N,) bool and the task metrics; the wrist image shows the red cube at the
start pose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.lift.errors import ActionError
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.tasks import get_task
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult

SimFactory = Callable[[SimulatorConfig], Simulator]

EXTRA_KEYS = {"tcp_pos": (3,), "cube_pos": (3,), "cube_quat": (4,), "goal_pos": (3,), "is_grasped": ()}
IMAGE_CONFIG = SimulatorConfig(num_envs=2, max_episode_steps=4, image_size=(96, 96))
STATE_CONFIG = SimulatorConfig(num_envs=1, max_episode_steps=4, render_images=False)


# ----------------------------------------------------------------------------------------------
# Plain checks (no pytest fixtures): each raises AssertionError with a message on failure.
# ----------------------------------------------------------------------------------------------
def check_observation(obs: Observation, config: SimulatorConfig) -> None:
    n = config.num_envs
    h, w = config.image_size
    assert obs.qpos.shape == (n, 8) and obs.qpos.dtype == np.float32, (obs.qpos.shape, obs.qpos.dtype)
    assert obs.qvel.shape == (n, 8) and obs.qvel.dtype == np.float32, (obs.qvel.shape, obs.qvel.dtype)
    assert np.isfinite(obs.qpos).all() and np.isfinite(obs.qvel).all()
    assert obs.rgb_image.dtype == np.uint8, obs.rgb_image.dtype
    if config.render_images:
        assert obs.rgb_image.shape == (n, h, w, 3), obs.rgb_image.shape
    else:
        assert obs.rgb_image.shape[0] == n and obs.rgb_image.shape[-1] == 3, obs.rgb_image.shape
    for key, shape in EXTRA_KEYS.items():
        assert key in obs.extra, f"Observation.extra lacks {key!r}"
        assert obs.extra[key].shape == (n, *shape), (key, obs.extra[key].shape)
    assert obs.extra["is_grasped"].dtype == np.bool_


def check_step_result(result: StepResult, config: SimulatorConfig) -> None:
    n = config.num_envs
    check_observation(result.observation, config)
    assert result.reward.shape == (n,) and result.reward.dtype == np.float32, (result.reward.shape, result.reward.dtype)
    for name in ("terminated", "truncated"):
        arr = getattr(result, name)
        assert arr.shape == (n,) and arr.dtype == np.bool_, (name, arr.shape, arr.dtype)
    assert "success" in result.info and result.info["success"].shape == (n,)
    assert result.info["success"].dtype == np.bool_
    np.testing.assert_array_equal(result.terminated, result.info["success"])


def hold_action(sim: Simulator) -> np.ndarray:
    """(N, 8) targets = the current qpos: a valid, harmless action in pd_joint_pos mode."""
    return np.asarray(sim.get_qpos(), dtype=np.float64)


def check_reset_and_step(sim: Simulator) -> None:
    obs, info = sim.reset(seed=0)
    check_observation(obs, sim.config)
    assert "success" in info
    result = sim.step(hold_action(sim))
    check_step_result(result, sim.config)


def check_reset_determinism(sim: Simulator) -> None:
    obs_a, _ = sim.reset(seed=123)
    obs_b, _ = sim.reset(seed=123)
    np.testing.assert_array_equal(obs_a.qpos, obs_b.qpos)
    np.testing.assert_array_equal(obs_a.extra["cube_pos"], obs_b.extra["cube_pos"])
    np.testing.assert_array_equal(obs_a.extra["goal_pos"], obs_b.extra["goal_pos"])
    np.testing.assert_array_equal(obs_a.rgb_image, obs_b.rgb_image)
    obs_c, _ = sim.reset(seed=124)
    assert not np.allclose(obs_a.extra["cube_pos"], obs_c.extra["cube_pos"]), "seed does not change the episode"
    if sim.num_envs > 1:
        # env i is seeded with seed + i: envs of one reset differ from each other.
        assert not np.allclose(obs_a.extra["cube_pos"][0], obs_a.extra["cube_pos"][1])
        # ... and env 1 of seed 123 is env 0 of seed 124.
        np.testing.assert_allclose(obs_a.extra["cube_pos"][1], obs_c.extra["cube_pos"][0], atol=1e-6)


def check_episode_matches_task(sim: Simulator) -> None:
    """Cube and goal come from the shared task's ``sample_episode`` (same seed -> same episode everywhere)."""
    obs, _ = sim.reset(seed=7)
    task = get_task(sim.config.env_id)
    spec = task.sample_episode(np.random.default_rng(7), sim.config.robot_init_qpos_noise)  # type: ignore[attr-defined]
    np.testing.assert_allclose(obs.extra["cube_pos"][0, :2], spec.cube_xy, atol=2e-3)
    np.testing.assert_allclose(obs.extra["goal_pos"][0, :2], spec.goal_xy, atol=1e-6)
    np.testing.assert_allclose(obs.qpos[0, :7], spec.init_qpos[:7], atol=2e-3)


def check_partial_reset(sim: Simulator) -> None:
    if sim.num_envs < 2:
        return
    sim.reset(seed=5)
    target = hold_action(sim)
    target[:, 0] += 0.2  # turn J1 in every env
    for _ in range(3):
        sim.step(target)
    moved = sim.get_qpos().copy()
    obs, _ = sim.reset(seed=50, env_idx=np.array([1]))
    np.testing.assert_allclose(obs.qpos[0], moved[0], atol=1e-6, err_msg="env 0 changed on a reset of env 1 only")
    assert abs(obs.qpos[1, 0] - moved[1, 0]) > 0.05, "env 1 was not reset"
    fresh, _ = sim.reset(seed=50)
    # A partial reset of env i with seed s gives env i the episode of seed s + i, as a full reset does.
    np.testing.assert_allclose(obs.extra["cube_pos"][1], fresh.extra["cube_pos"][1], atol=1e-6)


def check_truncation(sim: Simulator) -> None:
    sim.reset(seed=1)
    steps = sim.config.max_episode_steps
    for t in range(steps):
        result = sim.step(hold_action(sim))
        assert not result.terminated.any(), "holding still at the start must not succeed"
        if t < steps - 1:
            assert not result.truncated.any(), f"truncated early at step {t + 1} of {steps}"
    assert result.truncated.all(), "not truncated at max_episode_steps"


def check_pd_joint_pos_tracks(sim: Simulator) -> None:
    sim.reset(seed=2)
    target = hold_action(sim)
    target[:, 0] += 0.15
    target[:, 3] -= 0.1
    target[:, 7] = robot.GRIPPER_GRASP
    for _ in range(30):
        sim.step(target)
    np.testing.assert_allclose(sim.get_qpos(), target, atol=0.02)


def check_pd_joint_delta_pos(make_sim: SimFactory) -> None:
    config = dataclasses.replace(STATE_CONFIG, control_mode="pd_joint_delta_pos", max_episode_steps=50)
    sim = make_sim(config)
    try:
        sim.reset(seed=3)
        q0 = sim.get_qpos().astype(np.float64)
        delta = np.zeros((1, 8))
        delta[0, 0] = 0.01
        for _ in range(20):
            sim.step(delta)
        q1 = sim.get_qpos()
        # Each target is qpos + 0.01, so J1 moves forward but never more than 20 * 0.01 (PD lag may slow it).
        assert 0.02 < q1[0, 0] - q0[0, 0] <= 0.2 + 0.005, (q0[0, 0], q1[0, 0])
        np.testing.assert_allclose(q1[0, 1:7], q0[0, 1:7], atol=0.02)
        with pytest.raises(ActionError):
            sim.step(np.full((1, 8), 100.0))
    finally:
        sim.close()


def check_bad_actions(sim: Simulator) -> None:
    sim.reset(seed=4)
    n = sim.num_envs
    good = hold_action(sim)
    nan = good.copy()
    nan[0, 2] = np.nan
    inf = good.copy()
    inf[-1, 7] = np.inf
    beyond = good.copy()
    beyond[0, 3] = robot.ACTION_UPPER[3] + 0.5
    cases = {
        "wrong length": np.zeros((n, 7)),
        "wrong batch": np.zeros((n + 1, 8)),
        "nan": nan,
        "inf": inf,
        "beyond limits": beyond,
    }
    q_before = sim.get_qpos().copy()
    for name, action in cases.items():
        with pytest.raises(ActionError) as info:
            sim.step(action)
        assert isinstance(info.value, ValueError), name
        assert str(info.value), f"{name}: empty error message"
    np.testing.assert_array_equal(sim.get_qpos(), q_before, err_msg="a rejected action changed the state")
    result = sim.step(good)  # the sim still works
    assert np.isfinite(result.observation.qpos).all()


def check_gripper_pose_matches_fk(sim: Simulator, samples: int = 5) -> None:
    sim.reset(seed=6)
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(robot.ACTION_LOWER), np.asarray(robot.ACTION_UPPER)
    for _ in range(samples):
        q = rng.uniform(lo, hi, size=(sim.num_envs, 8))
        sim.set_qpos(q)
        np.testing.assert_allclose(sim.get_qpos(), q, atol=1e-5)
        expected = robot.tcp_pose(q)[:, :3, 3]
        np.testing.assert_allclose(sim.get_observation().extra["tcp_pos"], expected, atol=1e-4)
    q = rng.uniform(lo, hi, size=(sim.num_envs, 8))
    sim.set_qpos(q)
    np.testing.assert_allclose(sim.gripper_pose(), robot.gripper_pose(q), atol=1e-4)


def cube_pixel_fraction(image: np.ndarray) -> float:
    """Share of pixels that look like the red cube (red clearly dominating green and blue)."""
    img = image.astype(np.int32)
    red = (img[..., 0] > 90) & (img[..., 0] > 2 * img[..., 1]) & (img[..., 0] > 2 * img[..., 2])
    return float(red.mean())


def check_images(sim: Simulator) -> None:
    if not sim.config.render_images:
        return
    obs, _ = sim.reset(seed=0)
    for i in range(sim.num_envs):
        img = obs.rgb_image[i]
        assert img.std() > 10, "wrist image is (nearly) uniform"
        assert cube_pixel_fraction(img) > 0.002, f"cube not visible in the wrist camera of env {i}"
    third = sim.render("third_person")
    assert third.dtype == np.uint8 and third.ndim == 4 and third.shape[0] == sim.num_envs and third.shape[-1] == 3
    assert third.std() > 10
    assert not np.array_equal(third[0], obs.rgb_image[0]) or third.shape != obs.rgb_image.shape


# ----------------------------------------------------------------------------------------------
# The pytest mixin
# ----------------------------------------------------------------------------------------------
class SimulatorConformance:
    """Subclass in a backend's test module and provide the class-scoped ``make_sim`` fixture."""

    @pytest.fixture(scope="class")
    def make_sim(self) -> SimFactory:  # pragma: no cover - overridden
        raise NotImplementedError("override make_sim in the backend's test class")

    @pytest.fixture(scope="class")
    def image_sim(self, make_sim: SimFactory) -> Iterator[Simulator]:
        sim = make_sim(IMAGE_CONFIG)
        yield sim
        sim.close()

    @pytest.fixture(scope="class")
    def state_sim(self, make_sim: SimFactory) -> Iterator[Simulator]:
        sim = make_sim(STATE_CONFIG)
        yield sim
        sim.close()

    def test_reset_and_step_types(self, image_sim: Simulator, state_sim: Simulator) -> None:
        check_reset_and_step(image_sim)
        check_reset_and_step(state_sim)

    def test_reset_is_deterministic(self, image_sim: Simulator) -> None:
        check_reset_determinism(image_sim)

    def test_episode_comes_from_the_task(self, state_sim: Simulator) -> None:
        check_episode_matches_task(state_sim)

    def test_partial_reset(self, image_sim: Simulator) -> None:
        check_partial_reset(image_sim)

    def test_truncation_at_max_episode_steps(self, image_sim: Simulator) -> None:
        check_truncation(image_sim)

    def test_pd_joint_pos_tracks_targets(self, state_sim: Simulator) -> None:
        check_pd_joint_pos_tracks(state_sim)

    def test_pd_joint_delta_pos(self, make_sim: SimFactory) -> None:
        check_pd_joint_delta_pos(make_sim)

    def test_bad_actions_rejected_without_breaking(self, image_sim: Simulator) -> None:
        check_bad_actions(image_sim)

    def test_gripper_pose_matches_fk(self, state_sim: Simulator) -> None:
        check_gripper_pose_matches_fk(state_sim)

    def test_wrist_camera_sees_the_cube(self, image_sim: Simulator) -> None:
        check_images(image_sim)


def run_all(make_sim: SimFactory) -> dict[str, Any]:
    """Run every check outside pytest (scripts, doctor); returns {check: "ok" | error message}."""
    results: dict[str, Any] = {}
    image, state = make_sim(IMAGE_CONFIG), make_sim(STATE_CONFIG)
    checks: dict[str, Callable[[], None]] = {
        "reset_and_step": lambda: [check_reset_and_step(s) for s in (image, state)] and None,
        "determinism": lambda: check_reset_determinism(image),
        "episode_from_task": lambda: check_episode_matches_task(state),
        "partial_reset": lambda: check_partial_reset(image),
        "truncation": lambda: check_truncation(image),
        "pd_joint_pos": lambda: check_pd_joint_pos_tracks(state),
        "pd_joint_delta_pos": lambda: check_pd_joint_delta_pos(make_sim),
        "bad_actions": lambda: check_bad_actions(image),
        "gripper_pose": lambda: check_gripper_pose_matches_fk(state),
        "images": lambda: check_images(image),
    }
    try:
        for name, check in checks.items():
            try:
                check()
                results[name] = "ok"
            except AssertionError as exc:
                results[name] = f"FAILED: {exc}"
    finally:
        image.close()
        state.close()
    return results
