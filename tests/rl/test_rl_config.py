"""Config schema: defaults match the documented YAML, unknown keys are named, precedence is flags>env>YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crane_x7_vla_rl.config import ConfigError, TrainConfig, resolve, template


def test_defaults_match_documented_yaml() -> None:
    c = TrainConfig()
    assert (c.experiment_name, c.seed, c.device, c.pretrained_checkpoint) == (
        "crane_x7_vla_rl", 42, "cuda", "openvla/openvla-7b")
    assert (c.lora_rank, c.lora_alpha, c.num_updates, c.eval_interval, c.save_interval) == (32, 16, 1000, 50, 100)
    assert (c.rollout.simulator, c.rollout.num_parallel_envs, c.rollout.num_rollouts_per_update) == ("maniskill", 4, 8)
    assert (c.rollout.max_steps, c.rollout.temperature, c.rollout.effective_reward_mode) == (100, 1.0, "binary")
    assert (c.ppo.learning_rate, c.ppo.clip_ratio, c.ppo.minibatch_size, c.ppo.target_kl) == (1e-5, 0.2, 32, 0.02)


@pytest.mark.parametrize(("name", "updates", "envs"), [("fast", 100, 2), ("default", 1000, 4), ("full", 5000, 8)])
def test_templates(name: str, updates: int, envs: int) -> None:
    c = template(name)
    assert (c.num_updates, c.rollout.num_parallel_envs) == (updates, envs)
    assert TrainConfig.model_validate(yaml.safe_load(c.to_yaml())) == c  # round-trips through YAML


def test_unknown_key_named_with_suggestion(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("ppo:\n  learning_rte: 0.1\n")
    with pytest.raises(ConfigError, match=r"'ppo\.learning_rte'.*Did you mean 'ppo\.learning_rate'"):
        resolve(p, environ={})
    p.write_text("num_update: 3\n")
    with pytest.raises(ConfigError, match=r"'num_update'.*Did you mean 'num_updates'"):
        resolve(p, environ={})


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("rollout:\n  num_parallel_envs: 0\n")
    with pytest.raises(ConfigError, match=r"rollout\.num_parallel_envs"):
        resolve(p, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(tmp_path / "missing.yaml", environ={})


def test_precedence_flags_over_env_over_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("rollout:\n  simulator: genesis\n  backend: gpu\nseed: 7\nsft_checkpoint: /sft\n")
    c = resolve(p, environ={})
    assert (c.rollout.simulator, c.rollout.backend, c.seed, c.checkpoint_source) == ("genesis", "gpu", 7, "/sft")
    c = resolve(p, environ={"LIFT_SIMULATOR": "mujoco", "LIFT_BACKEND": "cpu"})
    assert (c.rollout.simulator, c.rollout.backend) == ("mujoco", "cpu")
    c = resolve(p, flags={"simulator": "maniskill", "seed": 1, "pretrained": "x/y", "use_wandb": False},
                environ={"LIFT_SIMULATOR": "mujoco"})
    assert (c.rollout.simulator, c.seed, c.checkpoint_source, c.use_wandb) == ("maniskill", 1, "x/y", False)


def test_grpo_group_size_must_divide_envs() -> None:
    with pytest.raises(ConfigError, match="grpo_group_size"):
        resolve(flags={"num_parallel_envs": 3}, base={"ppo": {"algorithm": "grpo", "grpo_group_size": 2}},
                environ={})


def test_sim_workers_from_yaml_and_flags(tmp_path: Path) -> None:
    from crane_x7_vla_rl.training.cli import build_parser

    assert TrainConfig().rollout.sim_workers == 0  # in-process by default
    p = tmp_path / "c.yaml"
    p.write_text("rollout:\n  sim_workers: 4\n")
    assert resolve(p, environ={}).rollout.sim_workers == 4
    for argv in (["train", "--sim-workers", "2"], ["evaluate", "--checkpoint", "x", "--sim-workers", "2"]):
        flags = vars(build_parser().parse_args(argv))
        assert resolve(p, flags={"sim_workers": flags["sim_workers"]}, environ={}).rollout.sim_workers == 2
    p.write_text("rollout:\n  sim_workers: -1\n")
    with pytest.raises(ConfigError, match=r"rollout\.sim_workers: Input should be greater than or equal to 0"):
        resolve(p, environ={})
