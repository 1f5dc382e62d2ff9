"""Multi-process PPO on CPU (gloo): 2 ranks give the same update as 1 process over the combined batch.

The data split is exactly checkable: a fixed synthetic rollout of 4 episodes with unequal lengths (4 and 5 valid
transitions per rank) goes through ``Trainer.update_policy`` once in this process over all 4 episodes, and once
in each of 2 spawned ranks over 2 episodes each. With one minibatch per epoch (minibatch_size >= the global
count), the loss weighting, the advantage normalisation, the grad-norm clip and the KL must all be global for the
LoRA + value-head weights to agree, while the per-rank micro-batching differs (only float summation order may).
"""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import pytest
import rl_bandit_sim
import torch
import torch.multiprocessing as mp

from crane_x7_vla_rl.config import TrainConfig, validate
from crane_x7_vla_rl.rollout.buffer import RolloutBatch
from crane_x7_vla_rl.training import distributed
from crane_x7_vla_rl.training.distributed import DistributedError
from crane_x7_vla_rl.training.trainer import Trainer

LENGTHS = (3, 1, 2, 3)  # valid steps of the 4 episodes: rank 0 gets 0-1 (4 transitions), rank 1 gets 2-3 (5)
T = max(LENGTHS)


def _config(ckpt: Path, out: Path, algorithm: str = "ppo") -> TrainConfig:
    return validate({
        "distributed": {"timeout_minutes": 3},  # a desync fails the test instead of hanging it
        "device": "cpu", "pretrained_checkpoint": str(ckpt), "output_dir": str(out), "lora_rank": 4,
        "lora_alpha": 8, "use_tensorboard": False, "save_eval_videos": False,
        "rollout": {"simulator": rl_bandit_sim.NAME, "num_parallel_envs": 2, "max_steps": T,
                    "image_size": [56, 56]},
        # 2 epochs of one global minibatch each; a tight grad clip so the global grad norm matters.
        "ppo": {"learning_rate": 1e-2, "num_epochs": 2, "minibatch_size": 64, "grad_accumulation_steps": 2,
                "target_kl": None, "max_grad_norm": 0.05, "entropy_coef": 0.01, "algorithm": algorithm},
    })


def _synthetic_batch(trainer: Trainer) -> RolloutBatch:
    """The same 4-episode rollout in every process: fixed images/rewards, tokens sampled by the (identical)
    initial policy with a fixed generator, so the stored log-probs are the policy's own."""
    g = torch.Generator().manual_seed(1234)
    e = len(LENGTHS)
    images = torch.randint(0, 256, (T, e, 56, 56, 3), generator=g, dtype=torch.uint8)  # [T, E, H, W, 3]
    instr = list(rl_bandit_sim.INSTRUCTIONS)
    instruction_ids = torch.tensor([0, 1, 1, 0])  # [E]
    flat_instr = [instr[int(instruction_ids[i % e])] for i in range(T * e)]
    trainer.policy.eval()
    out = trainer.policy.act(images.reshape(T * e, 56, 56, 3).numpy(), flat_instr, 1.0,
                             torch.Generator().manual_seed(99))
    valid = torch.tensor([[t < n for n in LENGTHS] for t in range(T)])  # [T, E]
    terminated = torch.tensor([[t == n - 1 and i != 3 for i, n in enumerate(LENGTHS)] for t in range(T)])
    truncated = torch.tensor([[t == n - 1 and i == 3 for i, n in enumerate(LENGTHS)] for t in range(T)])
    rewards = torch.rand((T, e), generator=g) * valid  # [T, E]
    return RolloutBatch(
        images=images, tokens=out.tokens.reshape(T, e, -1), log_probs=out.log_prob.reshape(T, e),
        values=out.value.reshape(T, e), next_values=torch.rand((T, e), generator=g), rewards=rewards,
        terminated=terminated, truncated=truncated, valid=valid, instruction_ids=instruction_ids,
        group_ids=torch.arange(e), episode_returns=rewards.sum(0), episode_lengths=torch.tensor(LENGTHS),
        episode_success=torch.tensor([True, False, False, True]), instructions=instr)


def _columns(batch: RolloutBatch, cols: list[int]) -> RolloutBatch:
    c = torch.tensor(cols)
    per_time = ("images", "tokens", "log_probs", "values", "next_values", "rewards", "terminated", "truncated",
                "valid")
    per_ep = ("instruction_ids", "group_ids", "episode_returns", "episode_lengths", "episode_success")
    kw: dict[str, Any] = {k: getattr(batch, k)[:, c] for k in per_time}
    kw.update({k: getattr(batch, k)[c] for k in per_ep})
    return RolloutBatch(**kw, instructions=batch.instructions)


def _use_sgd(trainer: Trainer) -> Trainer:
    """Swap AdamW for plain SGD over the same parameter groups.

    Adam's first step is ~lr * sign(g): a gradient element near zero flips with the last bit of a float sum, and
    the 2-rank and 1-process sums are ordered differently, so an Adam comparison is flaky. SGD is linear in the
    gradient, so any real difference in the averaged gradient still shows, while rounding stays at rounding level.
    """
    groups = [{"params": g["params"], "lr": g["lr"] * 100} for g in trainer.optimizer.param_groups]
    trainer.optimizer = torch.optim.SGD(groups)
    return trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    try:
        trainer = _use_sgd(Trainer(_config(Path(ckpt), Path(out) / f"rank{rank}"), progress=False))
        full = _synthetic_batch(trainer)
        stats = trainer.update_policy(_columns(full, [2 * rank, 2 * rank + 1]), update=0)
        # Episode metrics over unequal shards: rank 0 holds 3 episodes (1 success), rank 1 one (1 success).
        metrics, valid = trainer.episode_metrics(_columns(full, [0, 1, 2] if rank == 0 else [3]))
        params = {k: v.clone() for k, v in trainer.policy.trainable_state_dict().items()}
        # GRPO (no critic): the value head is out of the loss, so DDP must not wait for its gradients. Each
        # rank's 2 episodes form one group, as they do in the combined batch (group = one segment's 2 envs).
        grpo = _use_sgd(Trainer(_config(Path(ckpt), Path(out) / f"grpo{rank}", "grpo"), progress=False))
        grpo.update_policy(_columns(_synthetic_batch(grpo), [2 * rank, 2 * rank + 1]), update=0)
        torch.save({"params": params, "stats": stats, "metrics": metrics, "valid": valid,
                    "rank_seed": trainer.rank_seed, "grpo_lora": {k: v.clone() for k, v in
                                                                  grpo.policy.trainable_state_dict().items()}},
                   Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def two_rank_results(rl_tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("rl_dist")
    mp.start_processes(_rank_main, args=(2, _free_port(), str(rl_tiny_ckpt), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_ranks_match_one_process_over_the_combined_batch(
        two_rank_results: list[dict[str, Any]], rl_tiny_ckpt: Path, tmp_path: Path) -> None:
    single = _use_sgd(Trainer(_config(rl_tiny_ckpt, tmp_path), progress=False))
    assert not single.dist.enabled
    before = {k: v.clone() for k, v in single.policy.trainable_state_dict().items()}
    stats = single.update_policy(_synthetic_batch(single), update=0)
    after = single.policy.trainable_state_dict()
    r0, r1 = two_rank_results
    assert r0["params"].keys() == after.keys()
    moved = max(float((after[k] - before[k]).abs().max()) for k in after)
    assert moved > 1e-3  # the update really changed the weights, so agreement below is meaningful
    for k in after:
        torch.testing.assert_close(r0["params"][k], after[k], rtol=1e-4, atol=1e-6, msg=k)
        assert torch.equal(r0["params"][k], r1["params"][k]), k  # DDP keeps the replicas identical
    assert r0["stats"]["charts/num_transitions"] == stats["charts/num_transitions"] == sum(LENGTHS)
    assert math.isclose(r0["stats"]["losses/approx_kl"], stats["losses/approx_kl"], rel_tol=1e-3, abs_tol=1e-7)
    assert math.isclose(r0["stats"]["losses/explained_variance"], stats["losses/explained_variance"],
                        rel_tol=1e-5)
    assert r0["stats"] == r1["stats"]  # every logged number is reduced: all ranks agree


def test_grpo_two_ranks_match_one_process(two_rank_results: list[dict[str, Any]], rl_tiny_ckpt: Path,
                                         tmp_path: Path) -> None:
    single = _use_sgd(Trainer(_config(rl_tiny_ckpt, tmp_path, "grpo"), progress=False))
    before = {k: v.clone() for k, v in single.policy.trainable_state_dict().items()}
    single.update_policy(_synthetic_batch(single), update=0)
    after = single.policy.trainable_state_dict()
    assert max(float((after[k] - before[k]).abs().max()) for k in after if "lora_" in k) > 1e-3
    for k in after:
        torch.testing.assert_close(two_rank_results[0]["grpo_lora"][k], after[k], rtol=1e-4, atol=1e-6, msg=k)
        assert torch.equal(two_rank_results[0]["grpo_lora"][k], two_rank_results[1]["grpo_lora"][k]), k


def test_episode_metrics_are_totals_over_ranks_not_means_of_rank_means(
        two_rank_results: list[dict[str, Any]]) -> None:
    for r in two_rank_results:
        assert r["metrics"]["charts/success_rate"] == pytest.approx(2 / 4)  # not (1/3 + 1/1) / 2
        assert r["metrics"]["charts/episode_length"] == pytest.approx(sum(LENGTHS) / 4)
        assert r["valid"] == sum(LENGTHS)
    assert two_rank_results[1]["rank_seed"] == 42 + distributed.RANK_SEED_PRIME
    assert two_rank_results[0]["rank_seed"] == 42


def test_launch_env_parsing_and_errors() -> None:
    assert distributed.launch_env({}) is None
    env = distributed.launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert env is not None and (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    with pytest.raises(DistributedError, match="WORLD_SIZE is not set"):
        distributed.launch_env({"RANK": "0"})
    with pytest.raises(DistributedError, match="inconsistent"):
        distributed.launch_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_fsdp_is_refused_clearly_on_cpu() -> None:
    with pytest.raises(DistributedError, match=r"needs CUDA GPUs.*use 'ddp'"):
        distributed.init_distributed("cpu", strategy="fsdp", environ={"RANK": "0", "WORLD_SIZE": "1"})


def test_minibatch_count_is_global_and_never_leaves_a_rank_empty() -> None:
    assert distributed.num_minibatches(64, 32, 30) == 2
    assert distributed.num_minibatches(9, 4, 2) == 2  # 3 wanted, but the smallest rank holds 2 transitions
    assert distributed.num_minibatches(5, 64, 1) == 1
    assert distributed.episodes_per_rank(2, 2) == 1 and distributed.episodes_per_rank(5, 2) == 3


def test_explained_variance_from_sums_matches_the_direct_formula() -> None:
    from crane_x7_vla_rl.algorithms import explained_variance

    g = torch.Generator().manual_seed(0)
    y, pred = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    d = y - pred
    got = distributed.explained_variance_from_sums(50, float(y.sum()), float((y * y).sum()), float(d.sum()),
                                                   float((d * d).sum()))
    assert got == pytest.approx(explained_variance(pred, y), rel=1e-9)
