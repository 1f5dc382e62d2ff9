"""The multi-GPU command contract on CPU: ``torchrun --standalone --nproc_per_node 2 -m
crane_x7_vla_rl.training.cli train ...`` on MuJoCo with gloo, then a resume of that checkpoint in ONE process
(a different world size), which must re-derive its RNG streams and say so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mujoco")

pytestmark = pytest.mark.slow
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("LIFT_SIMULATOR", "LIFT_BACKEND", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def test_torchrun_two_ranks_then_resume_on_one(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    if not TORCHRUN.is_file() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed next to this python")
    torchrun = str(TORCHRUN) if TORCHRUN.is_file() else "torchrun"
    cfg = tmp_path / "small.yaml"  # the contract's flags, plus a config that keeps the CPU run short
    cfg.write_text("device: cpu\nnum_eval_episodes: 1\nsave_eval_videos: false\nuse_tensorboard: false\n"
                   "lora_rank: 4\nrollout:\n  max_steps: 2\n  image_size: [56, 56]\n"
                   "ppo:\n  minibatch_size: 4\n  num_epochs: 1\n")
    out = tmp_path / "D"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "crane_x7_vla_rl.training.cli", "train",
         "--pretrained", str(rl_tiny_ckpt), "--simulator", "mujoco", "--backend", "cpu", "--num-parallel-envs",
         "1", "--num-updates", "1", "--num-rollouts", "2", "--output-dir", str(out), "--config", str(cfg)],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, proc.stdout  # rank 0 alone prints the run summary
    assert summaries[0]["world_size"] == 2 and summaries[0]["updates"] == 1
    run = out / "crane_x7_vla_rl"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1]  # written once, by rank 0
    assert rows[0]["charts/num_transitions"] >= 2  # both ranks' episodes (one each, >= 1 step each)
    blob = torch.load(run / "checkpoint_latest" / "trainer_state.pt", weights_only=False)
    assert blob["world_size"] == 2 and sorted(blob["rng_by_rank"]) == [0, 1]
    assert not torch.equal(blob["rng_by_rank"][0]["torch"], blob["rng_by_rank"][1]["torch"])  # own streams
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary (half-written) dirs

    resumed = subprocess.run(
        [sys.executable, "-m", "crane_x7_vla_rl.training.cli", "train", "--resume",
         str(run / "checkpoint_latest"), "--num-updates", "2"],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "written by 2 rank(s), this run has 1: re-deriving rank 0's RNG" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["updates"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
