"""The scripted expert on MuJoCo (success rate), the expert CLI contract and the isaacsim stub."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from crane_x7_vla import cli, robot
from crane_x7_vla.lift import SimulatorConfig, SimulatorUnavailableError, create_simulator
from crane_x7_vla.lift.dataset import DemoDataset
from crane_x7_vla.lift.expert import ScriptedExpert
from crane_x7_vla.lift.expert_cli import run_episode

needs_mujoco = pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="mujoco not installed")


@needs_mujoco
def test_expert_solves_pick_place_on_mujoco() -> None:
    sim = create_simulator("mujoco", SimulatorConfig(render_images=False, max_episode_steps=150))
    expert = ScriptedExpert(1, sim.config.sim_rate)
    try:
        results = [run_episode(sim, expert, seed, record=False) for seed in range(20)]
    finally:
        sim.close()
    rate = np.mean([r["success"] for r in results])
    assert rate >= 0.8, results


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    if importlib.util.find_spec("mujoco") is None:
        pytest.skip("mujoco not installed")
    out = tmp_path_factory.mktemp("demos") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["expert", "--simulator", "mujoco", "--episodes", "2", "--seed", "11", "--record", str(out),
                       "--image-size", "64"])
    assert rc == 0
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 3  # two progress lines, then the JSON object last
    return out, json.loads(lines[-1])


def test_expert_cli_prints_one_json_object_last(recorded: tuple[Path, dict[str, object]]) -> None:
    _, summary = recorded
    assert summary["episodes"] == 2 and summary["simulator"] == "mujoco"
    results = summary["results"]
    assert isinstance(results, list) and [r["seed"] for r in results] == [11, 12]
    assert summary["success_rate"] == sum(r["success"] for r in results) / 2


def test_recorded_demos_read_back(recorded: tuple[Path, dict[str, object]]) -> None:
    root, summary = recorded
    ds = DemoDataset(root)
    assert len(ds) == 2 and ds.meta["fps"] == 30.0 and ds.meta["camera"] == "wrist"
    ep = ds.episode(0)
    t = len(ep)
    assert ep.images.shape == (t, 64, 64, 3) and ep.images.dtype == np.uint8
    assert ep.actions.shape == (t, 8) and ep.actions.dtype == np.float32
    assert ep.instruction == "pick up the object and place it"
    results = summary["results"]
    assert isinstance(results, list) and ep.success == results[0]["success"] and t == results[0]["steps"]
    # Actions are absolute joint targets within the limits; the gripper closes to GRIPPER_GRASP mid-episode.
    assert (ep.actions >= np.array(robot.ACTION_LOWER, dtype=np.float32) - 1e-6).all()
    assert np.isclose(ep.actions[:, 7], robot.GRIPPER_GRASP, atol=1e-6).any()
    assert sum(1 for _ in ds.steps()) == ds.num_steps


def test_expert_workers_record_what_a_sequential_run_records(recorded: tuple[Path, dict[str, object]],
                                                             tmp_path: Path) -> None:
    """``--workers 2`` runs the episodes in 2 processes; the recording and the results are those of one."""
    root, summary = recorded
    out = tmp_path / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["expert", "--simulator", "mujoco", "--episodes", "2", "--seed", "11", "--record", str(out),
                       "--image-size", "64", "--workers", "2"])
    assert rc == 0
    lines = buf.getvalue().strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["episode 0", "episode 1"]
    parallel = json.loads(lines[-1])
    assert parallel["results"] == summary["results"]
    seq, par = DemoDataset(root), DemoDataset(out)
    assert len(par) == len(seq) == 2
    assert json.loads((out / "meta.json").read_text())["episodes"] == json.loads((root / "meta.json").read_text())[
        "episodes"]
    for i in range(2):
        a, b = seq.episode(i), par.episode(i)
        assert (a.seed, a.success, a.instruction) == (b.seed, b.success, b.instruction)
        for name in ("images", "actions", "qpos"):
            np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=f"episode {i} {name}")


def test_expert_cli_json_only_and_bad_backend(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["expert", "--simulator", "mujoco", "--backend", "gpu", "--episodes", "1", "--json"])
    assert rc == 2
    assert "CPU only" in capsys.readouterr().err
    # ... also when the simulators are built in --workers processes; and --workers must be >= 1.
    rc = cli.main(["expert", "--simulator", "mujoco", "--backend", "gpu", "--episodes", "2", "--workers", "2"])
    assert rc == 2
    assert "CPU only" in capsys.readouterr().err
    assert cli.main(["expert", "--episodes", "1", "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_isaacsim_fails_fast_with_what_to_do() -> None:
    with pytest.raises(SimulatorUnavailableError, match="maniskill") as info:
        create_simulator("isaacsim", SimulatorConfig())
    assert "Isaac Sim" in str(info.value)


@needs_mujoco
def test_action_noise_perturbs_the_states_but_records_clean_expert_labels() -> None:
    sim = create_simulator("mujoco", SimulatorConfig(render_images=False, max_episode_steps=12))
    expert = ScriptedExpert(1, sim.config.sim_rate)
    try:
        clean = run_episode(sim, expert, 3, record=True)["trajectory"]
        noisy = run_episode(sim, expert, 3, record=True, action_noise=0.01)["trajectory"]
        again = run_episode(sim, expert, 3, record=True, action_noise=0.01)["trajectory"]
    finally:
        sim.close()
    _, clean_actions, clean_qpos = clean
    _, noisy_actions, noisy_qpos = noisy
    assert np.array_equal(noisy_qpos, again[2])  # the noise is a function of the episode seed
    assert np.array_equal(noisy_actions[0], clean_actions[0])  # label of the untouched first state
    assert not np.allclose(noisy_qpos[2:, :7], clean_qpos[2:, :7], atol=1e-3)  # executed noise moved the arm
    # Labels come from the expert's own (noise-free) command chain: they stay on the nominal path.
    assert np.abs(noisy_actions[:, :7] - clean_actions[:, :7]).max() < 0.05


def test_expert_cli_rejects_a_huge_action_noise(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["expert", "--episodes", "1", "--action-noise", "0.5"]) == 2
    assert "--action-noise must be in [0, 0.2]" in capsys.readouterr().err


@needs_mujoco
def test_expert_records_the_chosen_camera(tmp_path: Path) -> None:
    views = {}
    for camera in ("wrist", "third_person"):
        out = tmp_path / camera
        assert cli.main(["expert", "--episodes", "1", "--max-steps", "2", "--record", str(out), "--camera", camera,
                         "--image-size", "64", "--json"]) == 0
        ds = DemoDataset(out)
        assert json.loads((out / "meta.json").read_text())["camera"] == camera
        views[camera] = ds.episode(0).images[0]
    assert views["wrist"].shape == views["third_person"].shape == (64, 64, 3)
    assert np.abs(views["wrist"].astype(int) - views["third_person"].astype(int)).mean() > 10  # other viewpoint
