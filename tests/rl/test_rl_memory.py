"""The VLA-RL memory plan (crane_x7_vla_rl.memory) and the policy's activation-checkpointing option.

Parameter counts are checked against real modules (the tiny model, and the full openvla-7b tree built on the
meta device), the activation estimate against the tensors autograd actually saves, and check_fits' advice by
applying it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crane_x7_vla_rl.memory import (
    GIB,
    MemoryConfig,
    MemoryPlanError,
    ModelDims,
    activation_bytes_per_sample,
    check_fits,
    estimate,
)

INSTRUCTION = "pick up the object and place it"


@pytest.fixture(scope="module")
def tiny_vla(rl_tiny_ckpt: Path) -> Any:
    from crane_x7_vla.models import load_vla

    return load_vla(rl_tiny_ckpt, device="cpu")


@pytest.fixture(scope="module")
def dims_7b() -> ModelDims:
    from crane_x7_vla.models import OpenVLAConfig
    from crane_x7_vla.models.presets import OPENVLA_7B

    return ModelDims.from_openvla_config(OpenVLAConfig.from_dict(OPENVLA_7B))


def _policy(vla: Any, **kw: Any) -> Any:
    from crane_x7_vla_rl.policy import VLAActorCritic

    torch.manual_seed(0)
    return VLAActorCritic(copy.deepcopy(vla), lora_rank=4, lora_alpha=8, value_head_hidden=16, **kw)


def _batch(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- parameter counts --------------------------------------------------------------------------------------
def test_param_and_lora_counts_match_the_tiny_model(tiny_vla: Any) -> None:
    dims = ModelDims.from_openvla_config(tiny_vla.config)
    assert dims.total_params() == sum(p.numel() for p in tiny_vla.parameters())
    policy = _policy(tiny_vla)
    assert dims.lora_params(4) == sum(p.numel() for p in policy.lora_parameters())


def test_param_count_matches_the_full_openvla_7b_tree(dims_7b: ModelDims) -> None:
    from crane_x7_vla.models import OpenVLA, OpenVLAConfig
    from crane_x7_vla.models.presets import OPENVLA_7B

    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = OpenVLA(OpenVLAConfig.from_dict(OPENVLA_7B))
    assert dims_7b.total_params() == sum(p.numel() for p in model.parameters())
    assert 7.5e9 < dims_7b.total_params() < 7.6e9


# --- activations -------------------------------------------------------------------------------------------
def test_activation_estimate_matches_what_autograd_saves(tiny_vla: Any) -> None:
    policy = _policy(tiny_vla)
    policy.train()
    b, size = 4, tiny_vla.config.vision_towers[0].image_size
    images, instr = _batch(b, size), [INSTRUCTION] * b
    tokens = policy.act(images, instr, 1.0).tokens
    params = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:  # weights (e.g. the 256-row lm_head slice) are not activations
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        policy.evaluate_actions(images, instr, tokens, 1.0)
    measured = sum(saved.values()) / b
    prompt = tiny_vla.prepare_text([INSTRUCTION])[0].shape[1]
    cfg = MemoryConfig(model=ModelDims.from_openvla_config(tiny_vla.config), lora_rank=4, prompt_tokens=prompt,
                       act_bytes=4, weight_bytes=4)
    est = activation_bytes_per_sample(cfg)
    assert abs(est - measured) / measured < 0.15, (est, measured)
    ckpt = activation_bytes_per_sample(dataclasses.replace(cfg, activation_checkpointing=True))
    assert ckpt < 0.8 * est


def test_checkpointing_cuts_the_7b_activations(dims_7b: ModelDims) -> None:
    cfg = MemoryConfig(model=dims_7b)
    full = activation_bytes_per_sample(cfg)
    ckpt = activation_bytes_per_sample(dataclasses.replace(cfg, activation_checkpointing=True))
    assert 1.5 * GIB < full < 2.5 * GIB  # ~6 MB per token over ~300 tokens, plus the towers
    assert ckpt < 0.35 * full


# --- check_fits ----------------------------------------------------------------------------------------------
def test_a_big_update_on_80gb_names_the_knobs_and_the_advice_fits(dims_7b: ModelDims) -> None:
    cfg = MemoryConfig(model=dims_7b, num_parallel_envs=64, max_steps=8, num_rollouts_per_update=64,
                       minibatch_size=64)
    with pytest.raises(MemoryPlanError) as err:
        check_fits(cfg, 80 * GIB)
    msg = str(err.value)
    assert "activation checkpointing" in msg and "ppo.grad_accumulation_steps" in msg
    check_fits(dataclasses.replace(cfg, activation_checkpointing=True), 80 * GIB)
    steps = int(msg.split("raise ppo.grad_accumulation_steps to ")[1].split()[0])
    plan = check_fits(dataclasses.replace(cfg, grad_accumulation_steps=steps), 80 * GIB)
    assert plan.peak <= plan.usable
    # With minibatch 32 it fits an H200 (141 GB) as it is.
    assert check_fits(dataclasses.replace(cfg, minibatch_size=32), 141 * 10**9).fits


def test_too_many_envs_suggests_the_largest_env_count_that_fits(dims_7b: ModelDims) -> None:
    cfg = MemoryConfig(model=dims_7b, num_parallel_envs=512, max_steps=50, num_rollouts_per_update=512,
                       minibatch_size=8)
    with pytest.raises(MemoryPlanError, match=r"rollout\.num_parallel_envs to") as err:
        check_fits(cfg, 80 * GIB)
    n = int(str(err.value).split("rollout.num_parallel_envs to ")[1].split(";")[0].split(".")[0].split()[0])
    assert estimate(dataclasses.replace(cfg, num_parallel_envs=n), 80 * GIB).fits
    assert not estimate(dataclasses.replace(cfg, num_parallel_envs=n + 1), 80 * GIB).fits


def test_the_rollout_engine_is_persistent_and_can_be_turned_off(dims_7b: ModelDims) -> None:
    cfg = MemoryConfig(model=dims_7b, num_parallel_envs=64, max_steps=8, num_rollouts_per_update=64,
                       minibatch_size=32, rollout_engine=True)
    plan = estimate(cfg, 141 * 10**9)
    merged = sum(o * i for o, i in dims_7b.layer_linear_shapes()) * dims_7b.num_layers * 2
    assert merged < plan.engine < merged + 12 * GIB  # + the static KV cache of 64 rows and one prefill's pool
    assert plan.peak > estimate(dataclasses.replace(cfg, rollout_engine=False), 141 * 10**9).peak
    # On a GPU where only the engine is too much, the advice is to turn it off.
    tight = int(estimate(dataclasses.replace(cfg, rollout_engine=False), 1).peak / 0.9) + GIB
    with pytest.raises(MemoryPlanError, match=r"set rollout\.engine: off"):
        check_fits(cfg, tight)


def test_weights_that_cannot_fit_say_so(dims_7b: ModelDims) -> None:
    with pytest.raises(MemoryPlanError, match=r"frozen weights alone need 14\.0 GiB"):
        check_fits(MemoryConfig(model=dims_7b), 12 * GIB)


def test_components_follow_the_knobs(dims_7b: ModelDims) -> None:
    base = MemoryConfig(model=dims_7b, simulator="maniskill", sim_on_gpu=True)
    p0 = estimate(base, 141 * GIB)
    assert estimate(dataclasses.replace(base, minibatch_size=64), 141 * GIB).update_activations > p0.update_activations
    assert estimate(dataclasses.replace(base, grad_accumulation_steps=4), 141 * GIB).update_activations < \
        p0.update_activations
    assert estimate(dataclasses.replace(base, num_parallel_envs=16), 141 * GIB).simulator > p0.simulator
    assert estimate(dataclasses.replace(base, sim_on_gpu=False), 141 * GIB).simulator == 0
    # Frames: 2 segments x 4 envs x 100 steps x 224 x 224 x 3 bytes, plus a few bytes per step.
    assert 2 * 4 * 100 * 224 * 224 * 3 <= p0.rollout_buffers < 1.01 * 2 * 4 * 100 * 224 * 224 * 3
    assert p0.weights == dims_7b.total_params() * 2
    assert p0.lora_and_optimizer == dims_7b.lora_params(32) * 16


def test_from_train_config_and_bad_input(dims_7b: ModelDims) -> None:
    from crane_x7_vla_rl.config import TrainConfig

    tc = TrainConfig.model_validate({"device": "cuda", "rollout": {"num_parallel_envs": 8, "backend": "gpu"},
                                     "ppo": {"minibatch_size": 16, "grad_accumulation_steps": 4}})
    cfg = MemoryConfig.from_train_config(tc, dims_7b, activation_checkpointing=True)
    assert (cfg.num_parallel_envs, cfg.micro_batch, cfg.segments, cfg.weight_bytes) == (8, 4, 1, 2)
    assert cfg.sim_on_gpu and cfg.activation_checkpointing
    cpu = MemoryConfig.from_train_config(tc.model_copy(update={"device": "cpu"}), dims_7b)
    assert cpu.weight_bytes == 4
    with pytest.raises(ValueError, match="minibatch_size must be >= 1"):
        MemoryConfig(model=dims_7b, minibatch_size=0)
    with pytest.raises(ValueError, match="device's memory in bytes"):
        check_fits(MemoryConfig(model=dims_7b), 0)


# --- activation checkpointing in the policy ------------------------------------------------------------------
def _loss_and_grads(policy: Any, images: np.ndarray, tokens: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    policy.train()
    policy.zero_grad(set_to_none=True)
    ev = policy.evaluate_actions(images, [INSTRUCTION] * len(images), tokens, 1.0)
    loss = -ev.log_prob.mean() + (ev.value - 1.0).pow(2).mean() - 0.01 * ev.entropy.mean()
    loss.backward()
    grads = [p.grad.detach().clone() for p in [*policy.lora_parameters(), *policy.value_head.parameters()]
             if p.grad is not None]
    return float(loss.detach()), grads


def test_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_vla: Any) -> None:
    plain, ckpt = _policy(tiny_vla), _policy(tiny_vla, gradient_checkpointing=True)
    size = tiny_vla.config.vision_towers[0].image_size
    images = _batch(3, size)
    tokens = plain.act(images, [INSTRUCTION] * 3, 1.0, generator=torch.Generator().manual_seed(1)).tokens

    calls = {"n": 0}
    layer0 = ckpt.vla.language_model.model.layers[0]
    # A pre-hook: the recompute stops early once the last saved tensor exists (inside the MLP).
    handle = layer0.mlp.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    loss_c, grads_c = _loss_and_grads(ckpt, images, tokens)
    handle.remove()
    loss_p, grads_p = _loss_and_grads(plain, images, tokens)
    assert calls["n"] == 2  # forward + recompute in backward: checkpointing really ran
    assert loss_c == pytest.approx(loss_p, rel=1e-6)
    assert len(grads_c) == len(grads_p) > 0
    for gc, gp in zip(grads_c, grads_p, strict=True):
        torch.testing.assert_close(gc, gp, rtol=1e-5, atol=1e-7)

    # Acting in training mode must still use the KV cache: the same tokens and log-probs as without.
    a = ckpt.act(images, [INSTRUCTION] * 3, 1.0, generator=torch.Generator().manual_seed(2))
    b = plain.act(images, [INSTRUCTION] * 3, 1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.log_prob, b.log_prob)
    assert ckpt.vla.language_model.model.layers[0].gradient_checkpointing  # restored after acting
    ckpt.set_gradient_checkpointing(False)
    assert not ckpt.gradient_checkpointing and not layer0.gradient_checkpointing
