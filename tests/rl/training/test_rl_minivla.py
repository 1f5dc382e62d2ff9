"""VLA-RL with tiny MiniVLA policies on MuJoCo: binning (8 tokens) and history2 VQ (7 tokens -> 8-step chunks).

Train runs through the CLI in a subprocess (as test_rl_train_cli.py); evaluate loads the written checkpoint
in-process. The collector test checks what a history2 policy is fed and that the update re-evaluates it exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco")

CLI = [sys.executable, "-m", "crane_x7_vla_rl.training.cli"]
LEN_TOKENIZER = 151921  # the tiny tokenizer has the real Qwen2.5 + 256 extras layout
CFG = ("device: cpu\neval_interval: 1\nnum_eval_episodes: 1\nlora_rank: 4\n"
       "rollout:\n  max_steps: 3\n  image_size: [56, 56]\nppo:\n  minibatch_size: 4\n  num_epochs: 1\n")
# kind -> (checkpoint kwargs, tokens per action, first action id, chunk length)
KINDS: dict[str, tuple[dict[str, Any], int, int, int]] = {
    "bin": ({"seed": 0}, 8, LEN_TOKENIZER - 256, 1),
    "vq_history2": ({"vq": True, "image_sequence_len": 2, "seed": 1}, 7, LEN_TOKENIZER - 128, 8),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    from crane_x7_vla.models import make_tiny_minivla_checkpoint

    kind = request.param
    out = tmp_path_factory.mktemp(f"rl_minivla_{kind}")
    ckpt = make_tiny_minivla_checkpoint(out / "tiny", action_dim=8, **KINDS[kind][0])
    (out / "cfg.yaml").write_text(CFG)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for k in ("LIFT_SIMULATOR", "LIFT_BACKEND"):
        env.pop(k, None)
    proc = subprocess.run([*CLI, "train", "--config", str(out / "cfg.yaml"), "--pretrained", str(ckpt),
                           "--simulator", "mujoco", "--backend", "cpu", "--num-parallel-envs", "1",
                           "--num-updates", "1", "--num-rollouts", "2", "--output-dir", str(out / "runs")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return kind, ckpt, out / "runs" / "crane_x7_vla_rl"


def test_train_then_evaluate_loads_the_checkpoint(trained: tuple[str, Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from crane_x7_vla_rl.training.cli import main

    _, _, run = trained
    latest = run / "checkpoint_latest"
    for f in ("adapter_model.safetensors", "value_head.safetensors", "trainer_state.json", "dataset_statistics.json"):
        assert (latest / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["charts/num_transitions"] == 6  # 2 rollouts x 3 steps
    # The update re-evaluated exactly the inputs (and token count) that were sampled: ratio 1 at the start.
    assert rows[0]["losses/first_ratio_dev"] < 1e-4
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(latest), "--num-episodes", "1", "--simulator", "mujoco"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_episodes"] == 1 and result["episodes"][0]["length"] == 3


def test_policy_uses_the_models_token_count(trained: tuple[str, Path, Path]) -> None:
    from crane_x7_vla.models import load_vla
    from crane_x7_vla_rl.policy import VLAActorCritic

    kind, ckpt, run = trained
    _, n_tokens, first_id, chunk = KINDS[kind]
    vla = load_vla(ckpt)
    policy = VLAActorCritic(vla, lora_rank=4, lora_alpha=8)  # LoRA goes into ``vla`` in place
    policy.load_adapter(run / "checkpoint_latest")
    assert (policy.num_action_tokens, policy.chunk_size, policy.action_dim) == (n_tokens, chunk, 8)
    image = np.random.default_rng(0).integers(0, 255, (1, 56, 56, 3), dtype=np.uint8)
    out = policy.act(image, ["pick"], 1.0)
    assert tuple(out.tokens.shape) == (1, n_tokens)
    assert int(out.tokens.min()) >= first_id and int(out.tokens.max()) < LEN_TOKENIZER  # never counted from 32000
    action = policy.decode_actions(out.tokens)
    assert action.shape == (1, 8)  # the env executes step 0 of the chunk
    np.testing.assert_array_equal(action, vla.decode_action_chunk(out.tokens)[:, 0])


def test_history2_collector_feeds_previous_and_current_frames(tmp_path: Path) -> None:
    import torch

    from crane_x7_vla.lift.registry import create_simulator
    from crane_x7_vla.lift.types import SimulatorConfig
    from crane_x7_vla.models import load_vla, make_tiny_minivla_checkpoint
    from crane_x7_vla_rl.policy import VLAActorCritic
    from crane_x7_vla_rl.rollout.collector import RolloutCollector

    ckpt = make_tiny_minivla_checkpoint(tmp_path / "h2", action_dim=8, **KINDS["vq_history2"][0])
    torch.manual_seed(0)
    policy = VLAActorCritic(load_vla(ckpt), lora_rank=4, lora_alpha=8)
    assert policy.history == 2
    sim = create_simulator("mujoco", SimulatorConfig(num_envs=2, image_size=(56, 56), max_episode_steps=3))
    try:
        collector = RolloutCollector(sim, policy, instruction="pick", max_steps=3, temperature=1.0,
                                     device=torch.device("cpu"))
        seg = collector.collect(7, torch.Generator().manual_seed(0), lambda s: 0)
    finally:
        sim.close()
    imgs = seg.images  # [T, N, 2, H, W, 3]
    assert tuple(imgs.shape) == (3, 2, 2, 56, 56, 3) and tuple(seg.tokens.shape) == (3, 2, 7)
    assert torch.equal(imgs[0, :, 0], imgs[0, :, 1])  # episode start: the reset frame is repeated
    assert torch.equal(imgs[1:, :, 0], imgs[:-1, :, 1])  # t-1 of each step = t of the previous one
    t_idx, e_idx = torch.nonzero(seg.valid, as_tuple=True)
    ev = policy.evaluate_actions(imgs[t_idx, e_idx].numpy(), ["pick"] * len(t_idx), seg.tokens[t_idx, e_idx], 1.0)
    torch.testing.assert_close(ev.log_prob, seg.log_probs[t_idx, e_idx], atol=1e-4, rtol=1e-4)


def test_wrist_minivla_is_refused_with_a_reason(tmp_path: Path) -> None:
    from crane_x7_vla.models import load_vla, make_tiny_minivla_checkpoint
    from crane_x7_vla_rl.policy import VLAActorCritic

    vla = load_vla(make_tiny_minivla_checkpoint(tmp_path / "wrist", action_dim=8, use_wrist_image=True))
    with pytest.raises(ValueError, match="one camera"):
        VLAActorCritic(vla, lora_rank=4, lora_alpha=8)


def test_engine_on_for_a_minivla_is_a_clear_error(trained: tuple[str, Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from crane_x7_vla_rl.training.cli import main

    _, ckpt, _ = trained
    assert main(["evaluate", "--checkpoint", str(ckpt), "--simulator", "mujoco", "--engine", "on",
                 "--num-episodes", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "OpenVLA (Llama) models only" in err and "rollout.engine: off" in err
