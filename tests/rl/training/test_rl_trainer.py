"""Trainer behaviour on the contextual bandit (in process, the production code path end to end):
exact resume, and a learning test where the rewarded action depends on both the image and the instruction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rl_bandit_sim
import torch
from safetensors.torch import load_file

from crane_x7_vla_rl.config import TrainConfig, validate
from crane_x7_vla_rl.training.trainer import Trainer


def _config(ckpt: Path, out: Path, **over: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "device": "cpu", "pretrained_checkpoint": str(ckpt), "output_dir": str(out), "lora_rank": 8,
        "lora_alpha": 16, "eval_interval": 2, "save_interval": 100, "num_eval_episodes": 8,
        "save_eval_videos": False, "use_tensorboard": False,
        "rollout": {"simulator": rl_bandit_sim.NAME, "num_parallel_envs": 8, "num_rollouts_per_update": 16,
                    "max_steps": 1, "image_size": [56, 56]},
        "ppo": {"learning_rate": 3e-3, "num_epochs": 2, "minibatch_size": 8, "target_kl": None,
                "entropy_coef": 0.0},
    }
    for k, v in over.items():
        if isinstance(v, dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return validate(base)


def _deterministic_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "charts/SPS"} for r in rows]


def test_resume_is_exact(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    full = Trainer(_config(rl_tiny_ckpt, tmp_path / "full", num_updates=4), progress=False)
    full.train()
    part = Trainer(_config(rl_tiny_ckpt, tmp_path / "part", num_updates=2), progress=False)
    part.train()
    latest = tmp_path / "part" / "crane_x7_vla_rl" / "checkpoint_latest"
    resumed = Trainer(_config(rl_tiny_ckpt, tmp_path / "part", num_updates=4), resume=latest, progress=False)
    assert resumed.state.update == 2
    resumed.train()
    a = _deterministic_rows(tmp_path / "full" / "crane_x7_vla_rl")
    b = _deterministic_rows(tmp_path / "part" / "crane_x7_vla_rl")
    assert [r["update"] for r in b] == [1, 2, 3, 4]
    assert a == b
    wa = load_file(str(tmp_path / "full" / "crane_x7_vla_rl" / "checkpoint_latest" / "adapter_model.safetensors"))
    wb = load_file(str(latest / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(float(v.abs().sum()) > 0 for k, v in wa.items() if "lora_B" in k)  # training moved the weights


def test_ppo_learns_instruction_and_image_dependent_action(rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    # 4 contexts (2 colours x 2 instructions), rewarded half = colour XOR instruction: chance is 50%.
    cfg = _config(rl_tiny_ckpt, tmp_path, num_updates=30, eval_interval=3, num_eval_episodes=16,
                  stop_success_rate=0.95, seed=3,
                  rollout={"num_rollouts_per_update": 32}, ppo={"minibatch_size": 32, "num_epochs": 4})
    trainer = Trainer(cfg, progress=False)
    before = trainer.evaluate(None).success_rate
    assert before <= 0.7, f"the untrained policy should be near chance, got {before}"
    trainer.train()
    rows = trainer.logger.rows
    evals = [r["eval/success_rate"] for r in rows if r.get("eval/success_rate") is not None]
    assert max(evals) >= 0.9, f"eval success by update: {evals}"
    assert trainer.state.best_success >= 0.9
    assert (tmp_path / "crane_x7_vla_rl" / "checkpoint_best" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("algorithm", ["grpo"])
def test_grpo_runs_and_groups_share_initial_states(rl_tiny_ckpt: Path, tmp_path: Path, algorithm: str) -> None:
    cfg = _config(rl_tiny_ckpt, tmp_path, num_updates=1, ppo={"algorithm": algorithm, "grpo_group_size": 4})
    trainer = Trainer(cfg, progress=False)
    obs, instructions = trainer.collector.reset(123)
    for g in range(2):
        members = range(4 * g, 4 * g + 4)
        assert len({instructions[i] for i in members}) == 1
        assert len({int(obs.rgb_image[i, 0, 0, 2]) for i in members}) == 1
    trainer.train()
    assert "losses/policy_loss" in trainer.logger.rows[-1]


def test_make_simulator_spreads_the_envs_over_sim_workers() -> None:
    pytest.importorskip("mujoco")
    from crane_x7_vla.lift.parallel import ParallelSimulator
    from crane_x7_vla_rl.training.trainer import make_simulator

    config = validate({"device": "cpu", "rollout": {"simulator": "mujoco", "backend": "cpu", "num_parallel_envs": 3,
                                                     "sim_workers": 2, "image_size": [32, 32]}})
    sim = make_simulator(config)
    try:
        assert isinstance(sim, ParallelSimulator) and sim.counts == [2, 1]
        obs, _ = sim.reset(seed=0)
        assert obs.rgb_image.shape == (3, 32, 32, 3)
    finally:
        sim.close()
    sim = make_simulator(config.model_copy(update={"rollout": config.rollout.model_copy(update={"sim_workers": 1})}))
    try:
        assert not isinstance(sim, ParallelSimulator)  # 0 or 1: in this process
    finally:
        sim.close()


@pytest.mark.parametrize("recompute", [True, False])
def test_update_rescores_a_sampler_whose_log_probs_differ(rl_tiny_ckpt: Path, tmp_path: Path, recompute: bool) -> None:
    # A sampler with other numerics than the learner (the CUDA-graph engine over merged bf16 weights) stores
    # log-probs that are off by a little; here they are shifted by +-0.1 nat. Re-scored, the first ratio is 1.
    cfg = _config(rl_tiny_ckpt, tmp_path, num_updates=1, ppo={"recompute_log_probs": recompute})
    trainer = Trainer(cfg, progress=False)
    batch = trainer.collect(0)
    shift = 0.1 * (torch.arange(batch.log_probs.numel()).reshape(batch.log_probs.shape) % 2 * 2 - 1)
    batch.log_probs = batch.log_probs + shift
    dev = trainer.update_policy(batch, 0)["losses/first_ratio_dev"]
    if recompute:
        assert dev < 1e-4
    else:
        assert dev > 0.09  # exp(0.1) - 1: the sampler's numbers reach the ratio


@pytest.mark.parametrize(("target_kl", "epochs", "steps"), [(None, 2.0, 4.0), (1e-12, 0.5, 1.0)])
def test_epochs_done_counts_the_optimizer_steps_a_kl_stop_left(rl_tiny_ckpt: Path, tmp_path: Path,
                                                               target_kl: float | None, epochs: float,
                                                               steps: float) -> None:
    # 16 transitions in minibatches of 8, 2 epochs: 4 steps. With a KL limit no step can meet, the first minibatch
    # (ratio exactly 1, KL 0) steps, the second one stops the update half-way through the first epoch.
    cfg = _config(rl_tiny_ckpt, tmp_path, num_updates=1, ppo={"target_kl": target_kl})
    trainer = Trainer(cfg, progress=False)
    stats = trainer.update_policy(trainer.collect(0), 0)
    assert stats["charts/num_transitions"] == 16
    assert stats["charts/epochs_done"] == epochs
    assert stats["charts/optimizer_steps"] == steps
    assert stats["charts/early_stop"] == float(target_kl is not None)
