"""End to end through the CLI on MuJoCo: train (2 updates) -> checkpoints + logs -> evaluate -> export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mujoco")

CLI = [sys.executable, "-m", "crane_x7_vla_rl.training.cli"]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    for k in ("LIFT_SIMULATOR", "LIFT_BACKEND"):
        full_env.pop(k, None)
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=full_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def trained(rl_tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rl_e2e")
    cfg = out / "cfg.yaml"
    cfg.write_text("device: cpu\neval_interval: 2\nnum_eval_episodes: 2\nmax_eval_videos: 1\nlora_rank: 4\n"
                   "rollout:\n  max_steps: 3\n  image_size: [56, 56]\n"
                   "ppo:\n  minibatch_size: 4\n  grad_accumulation_steps: 2\n  num_epochs: 2\n")
    _run(["train", "--config", str(cfg), "--pretrained", str(rl_tiny_ckpt), "--simulator", "mujoco",
          "--backend", "cpu", "--num-parallel-envs", "2", "--num-updates", "2", "--num-rollouts", "2",
          "--output-dir", str(out), "--use-wandb"], env={"WANDB_DIR": str(out / "wandb")})
    return out


def test_train_writes_checkpoints_logs_and_videos(trained: Path) -> None:
    run = trained / "crane_x7_vla_rl"
    latest = run / "checkpoint_latest"
    for f in ("config.yaml", "adapter_config.json", "adapter_model.safetensors", "value_head.safetensors",
              "trainer_state.pt", "trainer_state.json", "dataset_statistics.json"):
        assert (latest / f).is_file(), f
    assert (run / "checkpoint_best" / "adapter_model.safetensors").is_file()
    assert json.loads((latest / "trainer_state.json").read_text())["update"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    for key in ("charts/success_rate", "charts/episode_return", "losses/policy_loss", "losses/value_loss",
                "losses/entropy", "losses/approx_kl", "losses/clipfrac", "charts/SPS", "time/rollout_s"):
        assert key in rows[-1], key
    assert rows[0]["losses/first_ratio_dev"] < 1e-4  # first minibatch of the first epoch: ratio == 1
    assert rows[0]["losses/entropy"] > 0
    assert "eval/success_rate" in rows[1]
    assert list((run / "videos").glob("eval_u0002_ep00_*.mp4"))
    assert list((run / "tensorboard").iterdir())
    assert list((trained / "wandb").rglob("*.wandb"))  # offline W&B run under WANDB_DIR
    saved = (latest / "config.yaml").read_text()
    assert "hf_" not in saved and "token" not in saved.lower()


def test_evaluate_prints_json_last(trained: Path) -> None:
    ckpt = trained / "crane_x7_vla_rl" / "checkpoint_latest"
    # --sim-workers 2: the checkpoint's 2 envs are stepped in 2 processes (the trainer stepped them in-process)
    proc = _run(["evaluate", "--checkpoint", str(ckpt), "--num-episodes", "2", "--simulator", "mujoco",
                 "--sim-workers", "2"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["success_rate"] <= 1.0
    assert result["num_episodes"] == 2 and len(result["episodes"]) == 2
    assert result["ci95_low"] <= result["success_rate"] <= result["ci95_high"]
    assert all(set(ep["stages"]) <= {"reached", "is_grasped", "lifted", "over_goal"} for ep in result["episodes"])
    assert all(0.0 < v <= 1.0 for v in result["stage_rates"].values())


def test_export_merges_into_a_loadable_checkpoint(trained: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch

    from crane_x7_vla.models.loading import load_vla
    from crane_x7_vla_rl.policy import VLAActorCritic
    from crane_x7_vla_rl.training.checkpoint import load_config

    ckpt = trained / "crane_x7_vla_rl" / "checkpoint_latest"
    _run(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "merged")])
    merged = load_vla(tmp_path / "merged")
    cfg = load_config(ckpt)
    policy = VLAActorCritic(load_vla(cfg.checkpoint_source), lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)
    policy.load_adapter(ckpt)
    image = [np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)]
    tokens = policy.act(image, ["pick"], 0.0).tokens
    inputs = merged.prepare_inputs(image, ["pick"])
    assert torch.equal(merged.sample_action_tokens(inputs, 0.0).tokens, tokens)
    # the adapter is not a no-op: the RL update changed the weights
    assert any(float(p.detach().abs().sum()) > 0 for n, p in policy.vla.named_parameters() if "lora_B" in n)


def test_config_template(tmp_path: Path) -> None:
    out = tmp_path / "fast.yaml"
    _run(["config", "--template", "fast", "-o", str(out)])
    from crane_x7_vla_rl.config import resolve

    cfg = resolve(out, environ={})
    assert (cfg.num_updates, cfg.rollout.num_parallel_envs) == (100, 2)


def test_bad_yaml_key_fails_with_its_name(tmp_path: Path, rl_tiny_ckpt: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("rollout:\n  num_parralel_envs: 2\n")
    proc = subprocess.run([*CLI, "train", "--config", str(cfg), "--pretrained", str(rl_tiny_ckpt)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "rollout.num_parralel_envs" in proc.stderr and "rollout.num_parallel_envs" in proc.stderr


def test_train_through_the_engine_stores_the_log_probs_ppo_recomputes(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    """rollout.engine: on (CPU runs the engine's static path without graphs): the first PPO ratio is still 1,
    i.e. the engine sampled from exactly the distribution the update re-scores."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("device: cpu\neval_interval: 100\nlora_rank: 4\n"
                   "rollout:\n  max_steps: 3\n  image_size: [56, 56]\n  engine: on\n"  # YAML's bare on
                   "ppo:\n  minibatch_size: 4\n  num_epochs: 1\n")
    _run(["train", "--config", str(cfg), "--pretrained", str(rl_tiny_ckpt), "--simulator", "mujoco",
          "--num-parallel-envs", "2", "--num-updates", "2", "--num-rollouts", "2", "--output-dir", str(tmp_path)])
    run = tmp_path / "crane_x7_vla_rl"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    # Update 2's rollout ran on adapters the first update changed: the engine re-merged them.
    assert all(r["losses/first_ratio_dev"] < 1e-4 for r in rows), [r["losses/first_ratio_dev"] for r in rows]
    from crane_x7_vla_rl.training.checkpoint import load_config

    assert load_config(run / "checkpoint_latest").rollout.engine == "on"


def test_max_seconds_stops_at_an_update_with_it_saved_and_resume_finishes(rl_tiny_ckpt: Path,
                                                                          tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    # save_interval 10: the update the time limit stops at is saved by the stop itself
    cfg.write_text("device: cpu\neval_interval: 10\nsave_interval: 10\nlora_rank: 4\n"
                   "rollout:\n  max_steps: 2\n  image_size: [56, 56]\nppo:\n  minibatch_size: 4\n  num_epochs: 1\n")
    common = ["--simulator", "mujoco", "--backend", "cpu", "--num-parallel-envs", "2", "--num-updates", "3",
              "--num-rollouts", "2", "--output-dir", str(tmp_path)]
    proc = _run(["train", "--config", str(cfg), "--pretrained", str(rl_tiny_ckpt), *common, "--max-seconds", "0.01"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["out_of_time"] is True and out["updates"] == 1 and out["num_updates"] == 3  # the first always runs
    latest = tmp_path / "crane_x7_vla_rl" / "checkpoint_latest"
    assert json.loads((latest / "trainer_state.json").read_text())["update"] == 1
    assert "past --max-seconds" in proc.stderr  # the log says why it stopped
    assert "max_seconds:" not in (latest / "config.yaml").read_text()  # a limit of that invocation only

    proc = _run(["train", "--config", str(cfg), "--resume", str(latest), *common, "--max-seconds", "3600"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["out_of_time"] is False and out["updates"] == 3
    assert json.loads((latest / "trainer_state.json").read_text())["update"] == 3


def test_max_seconds_must_be_positive(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "train", "--pretrained", str(rl_tiny_ckpt), "--max-seconds", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--max-seconds must be > 0" in proc.stderr
