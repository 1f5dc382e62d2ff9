"""ParallelSimulator: the split/merge rules, the conformance suite, and bit-identity with in-process MuJoCo."""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import signal
from collections.abc import Iterator

import numpy as np
import pytest
from conformance import SimFactory, SimulatorConformance

from crane_x7_vla.lift import (
    ActionError,
    Observation,
    Simulator,
    SimulatorConfig,
    SimulatorUnavailableError,
    create_simulator,
)
from crane_x7_vla.lift.parallel import (
    ParallelSimulator,
    env_bounds,
    merge_dicts,
    merge_observations,
    merge_values,
    route_env_idx,
    split_counts,
)

needs_mujoco = pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="mujoco not installed")
TINY = SimulatorConfig(num_envs=3, image_size=(32, 32), max_episode_steps=50)


# ----------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------
def test_split_counts_is_even_and_never_empty() -> None:
    assert split_counts(3, 2) == [2, 1]
    assert split_counts(7, 3) == [3, 2, 2]
    assert split_counts(4, 4) == [1, 1, 1, 1]
    assert split_counts(2, 8) == [1, 1]  # never more workers than envs
    assert split_counts(5, 1) == [5]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        split_counts(3, 0)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        split_counts(0, 2)


def test_env_bounds_and_routing() -> None:
    bounds = env_bounds([2, 1])
    assert bounds == [(0, 2), (2, 3)]
    routes = route_env_idx(np.array([2, 0]), bounds)
    assert [m.tolist() for m, _ in routes] == [[False, True], [True, False]]
    assert [local.tolist() for _, local in routes] == [[0], [0]]
    assert [local.tolist() for _, local in route_env_idx(np.array([1]), bounds)] == [[1], []]
    assert [local.tolist() for _, local in route_env_idx(np.array([], dtype=np.int64), bounds)] == [[], []]
    with pytest.raises(ValueError, match="out of range for num_envs=3"):
        route_env_idx(np.array([3]), bounds)
    with pytest.raises(ValueError, match="out of range"):
        route_env_idx(np.array([-1]), bounds)


def test_merge_values() -> None:
    counts = [2, 1]
    np.testing.assert_array_equal(merge_values([np.array([1, 2]), np.array([3])], counts), [1, 2, 3])
    assert merge_values([["a", "b"], ("c",)], counts) == ["a", "b", "c"]  # per-env sequences
    assert merge_values(["pick", "pick"], counts) == "pick"  # a batch-level value all workers agree on
    assert merge_values([None, None], counts) is None
    assert merge_values([0.5, 0.5], counts) == 0.5
    np.testing.assert_array_equal(merge_values([1, 3], counts), [1, 1, 3])  # disagreeing numbers: per env
    assert merge_values(["a", "b"], counts) == ["a", "a", "b"]
    merged = merge_values([{"x": np.zeros(2), "n": 1}, {"x": np.ones(1), "n": 1}], counts)
    np.testing.assert_array_equal(merged["x"], [0, 0, 1])
    assert merged["n"] == 1
    with pytest.raises(ValueError, match="'x'"):
        merge_values([np.zeros(2), 1.0], counts, "'x'")


def test_merge_dicts_needs_the_same_keys_and_keeps_their_order() -> None:
    merged = merge_dicts([{"b": np.zeros(1), "a": np.ones(1)}, {"a": np.ones(2), "b": np.zeros(2)}], [1, 2])
    assert list(merged) == ["b", "a"] and merged["a"].shape == (3,)
    with pytest.raises(ValueError, match="worker 1 returns keys"):
        merge_dicts([{"a": 1}, {"b": 1}], [1, 1])


def test_merge_observations() -> None:
    def obs(n: int, v: float, depth: bool) -> Observation:
        return Observation(rgb_image=np.full((n, 2, 2, 3), v, np.uint8), qpos=np.full((n, 8), v, np.float32),
                           qvel=np.zeros((n, 8), np.float32),
                           depth_image=np.zeros((n, 2, 2), np.float32) if depth else None,
                           extra={"cube_pos": np.full((n, 3), v)})

    merged = merge_observations([obs(2, 1, False), obs(1, 2, False)], [2, 1])
    assert merged.rgb_image.shape == (3, 2, 2, 3) and merged.depth_image is None
    np.testing.assert_array_equal(merged.qpos[:, 0], [1, 1, 2])
    np.testing.assert_array_equal(merged.extra["cube_pos"][:, 0], [1, 1, 2])
    assert merge_observations([obs(1, 1, True), obs(1, 2, True)], [1, 1]).depth_image.shape == (2, 2, 2)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="depth"):
        merge_observations([obs(1, 1, True), obs(1, 2, False)], [1, 1])


def test_create_simulator_validates_workers() -> None:
    with pytest.raises(ValueError, match="workers must be >= 0"):
        create_simulator("mujoco", TINY, workers=-1)
    with pytest.raises(ValueError, match="workers must be an integer"):
        create_simulator("mujoco", TINY, workers=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown simulator 'mujocoo'.*Did you mean 'mujoco'"):
        create_simulator("mujocoo", TINY, workers=2)  # fails before any worker starts


# ----------------------------------------------------------------------------------------------
# On MuJoCo
# ----------------------------------------------------------------------------------------------
@needs_mujoco
class TestParallelConformance(SimulatorConformance):
    """The shared suite: 2 workers for the 2-env simulator (the 1-env ones stay in-process by design)."""

    @pytest.fixture(scope="class")
    def make_sim(self) -> SimFactory:
        return lambda config: create_simulator("mujoco", config, workers=2)

    def test_the_image_sim_is_parallel(self, image_sim: ParallelSimulator) -> None:
        assert isinstance(image_sim, ParallelSimulator) and image_sim.workers == 2


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[ParallelSimulator, Simulator]]:
    """A 3-env MuJoCo simulator in 2 workers (2 + 1 envs) and the same one in-process."""
    if importlib.util.find_spec("mujoco") is None:
        pytest.skip("mujoco not installed")
    par = create_simulator("mujoco", TINY, workers=2)
    ref = create_simulator("mujoco", TINY)
    assert isinstance(par, ParallelSimulator) and par.counts == [2, 1]
    yield par, ref
    par.close()
    ref.close()


def assert_same_observation(a: Observation, b: Observation) -> None:
    np.testing.assert_array_equal(a.rgb_image, b.rgb_image)
    np.testing.assert_array_equal(a.qpos, b.qpos)
    np.testing.assert_array_equal(a.qvel, b.qvel)
    assert a.qpos.dtype == b.qpos.dtype and a.rgb_image.shape == b.rgb_image.shape
    assert list(a.extra) == list(b.extra)
    for key in b.extra:
        np.testing.assert_array_equal(a.extra[key], b.extra[key], err_msg=key)
        assert a.extra[key].dtype == b.extra[key].dtype, key


def assert_same_info(a: dict[str, object], b: dict[str, object]) -> None:
    assert list(a) == list(b)
    for key in b:
        if isinstance(b[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # type: ignore[arg-type]
        else:
            assert a[key] == b[key], key


@needs_mujoco
def test_bit_identical_to_the_in_process_simulator(pair: tuple[ParallelSimulator, Simulator]) -> None:
    par, ref = pair
    assert not isinstance(ref, ParallelSimulator)
    sims = (par, ref)
    (obs_p, info_p), (obs_r, info_r) = (s.reset(seed=21) for s in sims)
    assert_same_observation(obs_p, obs_r)
    assert_same_info(info_p, info_r)
    first, first_copy = obs_p.rgb_image, obs_p.rgb_image.copy()  # frames come through shared memory ...
    rng = np.random.default_rng(0)
    target = obs_r.qpos.astype(np.float64)
    for t in range(4):
        action = np.clip(target + rng.normal(0, 0.05, target.shape), -1.5, 1.5)
        action[:, 7] = 0.0
        rp, rr = (s.step(action) for s in sims)
        assert_same_observation(rp.observation, rr.observation)
        assert_same_info(rp.info, rr.info)
        for name in ("reward", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(rp, name), getattr(rr, name), err_msg=f"{name} at step {t}")
    np.testing.assert_array_equal(first, first_copy)  # ... but what was returned is the caller's: no later change
    # A partial reset spanning both workers, then one touching worker 0 only: the full batch comes back.
    for idx in (np.array([2, 1]), np.array([0])):
        (obs_p, info_p), (obs_r, info_r) = (s.reset(seed=5, env_idx=idx) for s in sims)
        assert_same_observation(obs_p, obs_r)
        assert_same_info(info_p, info_r)
        rp, rr = (s.step(obs_r.qpos) for s in sims)
        assert_same_observation(rp.observation, rr.observation)
        np.testing.assert_array_equal(rp.info["elapsed_steps"], rr.info["elapsed_steps"])
    # set_qpos on some envs, gripper poses and the other camera.
    q = np.tile(np.asarray(obs_r.qpos[0], dtype=np.float64), (2, 1))
    q[:, 0] += (0.3, -0.2)
    for s in sims:
        s.set_qpos(q, env_idx=np.array([2, 0]))
    assert_same_observation(par.get_observation(), ref.get_observation())
    np.testing.assert_array_equal(par.gripper_pose(), ref.gripper_pose())
    np.testing.assert_array_equal(par.get_qvel(), ref.get_qvel())
    third = par.render("third_person")
    assert third.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(third, ref.render("third_person"))
    assert par.render("wrist", height=16, width=24).shape == (3, 16, 24, 3)  # backend keywords pass through


@needs_mujoco
def test_errors_keep_their_type(pair: tuple[ParallelSimulator, Simulator]) -> None:
    par, _ = pair
    par.reset(seed=0)
    q = par.get_qpos().copy()
    bad = q.astype(np.float64)
    bad[2, 3] = np.nan  # env 2 lives in worker 1: worker 0 must not step either
    with pytest.raises(ActionError, match="env 2"):
        par.step(bad)
    with pytest.raises(ActionError, match=r"shape \(3, 8\)"):
        par.step(np.zeros((2, 8)))
    np.testing.assert_array_equal(par.get_qpos(), q)
    with pytest.raises(ValueError, match=r"simulator worker 0 \(envs 0-1\).*unknown camera 'top'"):
        par.render("top")  # raised inside the workers, re-raised here with the same type
    with pytest.raises(ValueError, match="set_qpos needs finite"):
        par.set_qpos(np.zeros((2, 8)), env_idx=np.array([0]))
    with pytest.raises(ValueError, match="out of range"):
        par.reset(seed=0, env_idx=np.array([3]))
    assert np.isfinite(par.step(q).observation.qpos).all()  # still usable


@needs_mujoco
def test_a_bad_config_fails_in_the_workers_with_its_type() -> None:
    with pytest.raises(SimulatorUnavailableError, match=r"simulator worker \d .*CPU only"):
        ParallelSimulator("mujoco", dataclasses.replace(TINY, backend="gpu"), workers=2)


@needs_mujoco
def test_close_ends_the_workers_and_a_dead_worker_is_an_error() -> None:
    sim = create_simulator("mujoco", dataclasses.replace(TINY, render_images=False), workers=3)
    assert isinstance(sim, ParallelSimulator) and sim.counts == [1, 1, 1]
    procs = list(sim._procs)
    sim.reset(seed=0)
    sim.close()
    sim.close()  # idempotent
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        sim.reset(seed=0)

    sim = create_simulator("mujoco", dataclasses.replace(TINY, render_images=False), workers=2)
    assert isinstance(sim, ParallelSimulator)
    procs = list(sim._procs)
    sim.reset(seed=0)
    q = sim.get_qpos()
    procs[1].kill()
    procs[1].join(5)
    with pytest.raises(RuntimeError, match=rf"simulator worker 1 \(env 2\).*killed by signal {int(signal.SIGKILL)}"):
        sim.step(q)
    assert not any(p.is_alive() for p in procs)  # the others were closed with it
    with pytest.raises(RuntimeError, match="closed"):
        sim.get_observation()

    sim = create_simulator("mujoco", dataclasses.replace(TINY, render_images=False), workers=2)
    assert isinstance(sim, ParallelSimulator)
    procs = list(sim._procs)
    del sim
    gc.collect()
    for p in procs:
        p.join(15)
    assert not any(p.is_alive() for p in procs)  # garbage collection closes the workers
