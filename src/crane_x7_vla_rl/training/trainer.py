"""The VLA-RL training loop: collect -> advantages -> PPO (or GRPO) epochs -> log / evaluate / checkpoint.

Design: the trainer orchestrates, the math lives in :mod:`crane_x7_vla_rl.algorithms`. Every random stream
of an update is derived from (run seed, update index): simulator reset seeds, the action-sampling generator
and the minibatch permutation. Resuming therefore needs no simulator state, and N updates + resume + M
updates reproduce N+M uninterrupted updates exactly on CPU (weights, optimizer and metrics); the global
torch / numpy / python RNG states are saved and restored as well, for anything else that draws from them.

Under ``torchrun`` (see :mod:`crane_x7_vla_rl.training.distributed`) each rank runs this same loop on its own env
shard with streams derived from ``seed + rank * prime``; gradients, advantage statistics, the KL stop and the
metrics are reduced across ranks, rank 0 alone evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.utils.atomic import write_text_atomic
from crane_x7_vla_rl.algorithms import compute_gae, explained_variance, group_relative_advantages, ppo_loss
from crane_x7_vla_rl.config import TrainConfig
from crane_x7_vla_rl.policy import VLAActorCritic
from crane_x7_vla_rl.rollout.buffer import RolloutBatch
from crane_x7_vla_rl.rollout.collector import RolloutCollector
from crane_x7_vla_rl.training import checkpoint as ckpt
from crane_x7_vla_rl.training import distributed
from crane_x7_vla_rl.training.evaluate import EvalSummary, evaluate_policy, save_videos, summarize
from crane_x7_vla_rl.training.metrics import MetricsLogger

log = logging.getLogger(__name__)

_TRAIN_SEED_BASE = 1_000_000  # training episodes' reset seeds start here; eval seeds (eval_seed) stay below
_SEED_STRIDE = 1_000_003  # a prime: derived seeds of different updates never collide for sane run lengths


def resolve_device(requested: str) -> torch.device:
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available; training on CPU", requested)
        return torch.device("cpu")
    return torch.device(requested)


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def build_policy(config: TrainConfig, device: torch.device, *, acting: bool = True) -> VLAActorCritic:
    """Load the starting VLA (local dir, Hub id or LoRA adapter dir) and wrap it with LoRA + value head.

    With ``acting`` the policy acts through the static-cache engine where ``rollout.engine`` allows it."""
    from crane_x7_vla.models.loading import load_vla

    # bf16 weights on GPU (7B fits), fp32 on CPU (exact resume, and CPU bf16 matmuls are slow).
    dtype = torch.bfloat16 if device.type == "cuda" and config.bf16 else torch.float32
    vla = load_vla(config.checkpoint_source, device=device, dtype=dtype, unnorm_key=config.unnorm_key,
                   hf_token=hf_token(), merge_lora=True)
    policy = VLAActorCritic(vla, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                            lora_dropout=config.lora_dropout, value_head_hidden=config.value_head_hidden,
                            base_source=_absolute_if_local(config.checkpoint_source))
    if acting and acts_through_engine(config.rollout.engine, device, vla):
        policy.enable_engine(config.rollout.num_parallel_envs)  # "on" with MiniVLA: a ValueError naming the key
    return policy


def acts_through_engine(mode: str, device: torch.device, vla: Any) -> bool:
    """``rollout.engine`` resolved: "on", or "auto" for an OpenVLA on CUDA."""
    from crane_x7_vla.models.openvla import OpenVLA

    return mode == "on" or (mode == "auto" and device.type == "cuda" and isinstance(vla, OpenVLA))


def _absolute_if_local(source: str) -> str:
    # adapter_config.json's base_model_name_or_path must still resolve when the checkpoint is moved or
    # loaded from another working directory; Hub ids stay as they are.
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else source


def make_simulator(config: TrainConfig, num_envs: int | None = None,
                   device: torch.device | None = None) -> Simulator:
    from crane_x7_vla.lift.registry import create_simulator
    from crane_x7_vla.lift.types import SimulatorConfig

    r = config.rollout
    sim_cfg = SimulatorConfig(
        env_id=r.env_id, backend=r.backend, render_mode=r.render_mode, max_episode_steps=r.max_steps,
        robot_init_qpos_noise=r.robot_init_qpos_noise, num_envs=num_envs or r.num_parallel_envs,
        reward_mode=r.effective_reward_mode, camera=r.camera, image_size=tuple(r.image_size),  # type: ignore[arg-type]
        device=(str(device) if device is not None and device.type == "cuda"  # a rank's own GPU
                else config.device if config.device.startswith("cuda") and device is None else "cpu"),
    )
    return create_simulator(r.simulator, sim_cfg, workers=r.sim_workers)


def derived_seed(seed: int, update: int, stream: int) -> int:
    return (seed * _SEED_STRIDE + update * 7919 + stream) % (2**31 - 1)


class Trainer:
    def __init__(self, config: TrainConfig, *, resume: Path | None = None, progress: bool = True) -> None:
        self.config = config
        self.resume = resume
        self.progress = progress
        d = config.distributed
        self.dist = distributed.init_distributed(config.device, strategy=d.strategy,
                                                 timeout_minutes=d.timeout_minutes)
        self.device = self.dist.device if self.dist.enabled else resolve_device(config.device)
        self.rank_seed = distributed.rank_seed(config.seed, self.dist.rank)  # == seed in a single process
        self.run_dir = Path(config.output_dir) / config.experiment_name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Seed the global RNGs before any module is built (LoRA A and value-head init draw from them); the
        # same seed on every rank, so all ranks start from identical weights.
        torch.manual_seed(config.seed)
        np.random.seed(config.seed % (2**32))
        import random

        random.seed(config.seed)
        self.policy = build_policy(config, self.device)
        if self.device.type == "cuda":
            self._check_memory(config)
        if self.dist.rank > 0:
            distributed.seed_global_rngs(self.rank_seed)  # from here on, each rank draws its own streams
        self.sim = make_simulator(config, device=self.device if self.dist.enabled else None)
        self.group_size = config.ppo.grpo_group_size if config.ppo.algorithm == "grpo" else 1
        self.collector = RolloutCollector(self.sim, self.policy, instruction=config.language_instruction,
                                          max_steps=config.rollout.max_steps,
                                          temperature=config.rollout.temperature, device=self.device,
                                          group_size=self.group_size,
                                          progress_gamma=config.ppo.gamma if config.rollout.progress_reward
                                          and config.rollout.effective_reward_mode != "binary" else None)
        p = config.ppo
        groups: list[dict[str, Any]] = [{"params": self.policy.lora_parameters(), "lr": p.learning_rate}]
        if p.algorithm == "ppo":
            groups.append({"params": list(self.policy.value_head.parameters()),
                           "lr": p.value_learning_rate or 10 * p.learning_rate})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0, eps=1e-5)
        total = config.num_updates
        if p.lr_schedule == "linear":
            self.scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda u: max(0.0, 1.0 - u / total))
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda u: 1.0)
        self.state = ckpt.TrainerState()
        if resume is not None:
            self.policy.load_adapter(resume)
            self.state = ckpt.load_trainer_state(
                resume, self.optimizer, self.scheduler, rank=self.dist.rank, world_size=self.dist.world_size,
                rederive_rng=lambda u: distributed.seed_global_rngs(derived_seed(self.rank_seed, u, 3)))
            log.info("resumed from %s at update %d", resume, self.state.update)
        self.instructions: list[str] = []
        self.out_of_time = False  # train() stopped at its deadline
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" and config.bf16 else nullcontext())
        self.dist.wrap(self.policy, d.strategy, train_value_head=p.algorithm == "ppo")
        self.logger: MetricsLogger | distributed.NullLogger = distributed.NullLogger()
        if self.dist.is_main:
            self.logger = MetricsLogger(
                self.run_dir, resume_update=self.state.update if resume is not None else None,
                use_tensorboard=config.use_tensorboard, use_wandb=config.use_wandb,
                wandb_project=config.wandb_project, wandb_entity=config.wandb_entity,
                run_name=config.experiment_name, config=config.model_dump(mode="json"))
            write_text_atomic(self.run_dir / "config.yaml", config.to_yaml())

    # --- rollout ---------------------------------------------------------------------------------------------
    def _instruction_index(self, text: str) -> int:
        if text not in self.instructions:
            self.instructions.append(text)
        return self.instructions.index(text)

    def collect(self, update: int) -> RolloutBatch:
        r = self.config.rollout
        n = self.sim.num_envs
        # num_rollouts_per_update is global: each rank collects its share on its own env shard.
        per_rank = distributed.episodes_per_rank(r.num_rollouts_per_update, self.dist.world_size)
        num_segments = max(1, math.ceil(per_rank / n))
        gen = torch.Generator(device=self.device).manual_seed(derived_seed(self.rank_seed, update, 1))
        segments = []
        for s in range(num_segments):
            # Env i of segment s gets seed + i: consecutive, never reused within a run, far from eval seeds.
            seed = (_TRAIN_SEED_BASE + self.rank_seed * 100_000 + (update * num_segments + s) * n) % (2**31 - 1)
            with self.autocast:
                segments.append(self.collector.collect(seed, gen, self._instruction_index))
        return RolloutBatch.from_segments(segments, self.instructions)

    # --- update ----------------------------------------------------------------------------------------------
    def advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.config.ppo
        if p.algorithm == "grpo":
            # Group ids are per segment; offset them so groups of different segments never merge.
            n = self.sim.num_envs
            seg = torch.arange(batch.group_ids.shape[0], device=batch.group_ids.device) // n
            gid = seg * (n + 1) + batch.group_ids
            ep_adv = group_relative_advantages(batch.episode_returns, gid)  # [E]
            adv = ep_adv[None, :].expand_as(batch.values).clone()  # [T, E]
            return adv, batch.values  # no critic: returns unused
        return compute_gae(batch.rewards, batch.values, batch.next_values, batch.terminated, batch.truncated,
                           p.gamma, p.gae_lambda)

    def update_policy(self, batch: RolloutBatch, update: int) -> dict[str, float]:
        p = self.config.ppo
        temp = self.config.rollout.temperature
        advantages, returns = self.advantages(batch)
        t_idx, e_idx = batch.flat_valid()  # [B]
        b_adv, b_ret = advantages[t_idx, e_idx], returns[t_idx, e_idx]
        b_logp, b_val = batch.log_probs[t_idx, e_idx], batch.values[t_idx, e_idx]
        b_tokens = batch.tokens[t_idx, e_idx]  # [B, D]
        b_images = batch.images[t_idx, e_idx].cpu().numpy()  # [B, H, W, 3]
        b_instr = [batch.instructions[int(i)] for i in batch.instruction_ids[e_idx].tolist()]
        size = b_adv.shape[0]
        mb = min(p.minibatch_size, size)
        micro = max(1, math.ceil(mb / p.grad_accumulation_steps))
        self.policy.train()
        if p.recompute_log_probs:
            b_logp = self._learner_log_probs(b_images, b_instr, b_tokens, temp, micro)
        gen = torch.Generator().manual_seed(derived_seed(self.rank_seed, update, 2))
        ddp = self.dist.enabled
        if ddp:
            # ppo.minibatch_size is global: every rank splits its share into the same number of chunks.
            global_size, min_size = self.dist.sum([size])[0], self.dist.min([size])[0]
            num_mb = distributed.num_minibatches(int(global_size), p.minibatch_size, int(min_size))
        use_critic = p.algorithm == "ppo"
        params = [q for g in self.optimizer.param_groups for q in g["params"]]
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl",
                                                         "old_approx_kl", "clipfrac", "grad_norm")}
        first_ratio_dev = float("nan")
        # epochs_done counts passes over the data in optimizer steps (2.5 = two passes and half of a third): a KL
        # stop inside the first epoch shows as a fraction, i.e. part of the rollout was never trained on.
        early_stop, steps_taken, chunks_per_epoch = False, 0, 1
        for _epoch in range(p.num_epochs):
            perm = torch.randperm(size, generator=gen)
            chunks = (torch.tensor_split(perm, num_mb) if ddp
                      else [perm[start:start + mb] for start in range(0, size, mb)])
            chunks_per_epoch = len(chunks)
            for mb_idx in chunks:
                self.optimizer.zero_grad(set_to_none=True)
                kls: list[float] = []
                # The minibatch is the union of every rank's chunk: weights, advantage statistics and the KL
                # are taken over that union (in a single process: over this chunk).
                mb_count = self.dist.sum([mb_idx.numel()])[0]
                if ddp:
                    micro = max(1, math.ceil(mb_idx.numel() / p.grad_accumulation_steps))
                # Advantages are normalised over the whole minibatch, not per micro-batch.
                adv_mean, adv_std = self.dist.mean_std(b_adv[mb_idx.to(self.device)])
                for m0 in range(0, mb_idx.numel(), micro):
                    idx = mb_idx[m0:m0 + micro]
                    dev_idx = idx.to(self.device)
                    with self.autocast:
                        ev = self.dist.evaluate_actions(
                            self.policy, b_images[idx.numpy()], [b_instr[i] for i in idx.tolist()],
                            b_tokens[dev_idx], temp, sync=m0 + micro >= mb_idx.numel())
                    adv = b_adv[dev_idx]
                    if p.normalize_advantages and p.algorithm == "ppo" and mb_count > 1:
                        adv = (adv - adv_mean) / (adv_std + 1e-8)
                    out = ppo_loss(ev.log_prob, b_logp[dev_idx], adv, ev.entropy,
                                   ev.value if use_critic else None, b_val[dev_idx] if use_critic else None,
                                   b_ret[dev_idx] if use_critic else None,
                                   clip_coef=p.clip_ratio, value_coef=p.value_loss_coef, entropy_coef=p.entropy_coef,
                                   clip_value_loss=p.clip_value_loss, value_clip_range=p.value_clip_range,
                                   normalize_advantages=False)
                    if math.isnan(first_ratio_dev):
                        first_ratio_dev = float((out.ratio - 1.0).abs().max())
                    # DDP averages gradients over ranks, hence * world_size: the step is the mean over the union.
                    weight = idx.numel() / mb_count
                    (out.loss * (weight * self.dist.world_size)).backward()
                    kls.append(float(out.approx_kl) * weight)
                    stats["policy_loss"].append(float(out.policy_loss))
                    stats["value_loss"].append(float(out.value_loss))
                    stats["entropy"].append(float(out.entropy))
                    stats["old_approx_kl"].append(float(out.old_approx_kl))
                    stats["clipfrac"].append(float(out.clip_fraction))
                approx_kl = self.dist.sum([sum(kls)])[0]  # the same on every rank: they stop together
                stats["approx_kl"].append(approx_kl)
                if p.target_kl is not None and approx_kl > p.target_kl:
                    # The policy already moved too far from the one that collected the data: drop this step.
                    early_stop = True
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                grad_norm = torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
                stats["grad_norm"].append(float(grad_norm))
                self.optimizer.step()
                steps_taken += 1
            if early_stop:
                break
        self.scheduler.step()
        ev_val = explained_variance(b_val, b_ret) if use_critic else float("nan")
        if use_critic and ddp:
            diff = (b_ret - b_val).double()  # [B]
            y = b_ret.double()  # [B]
            ev_val = distributed.explained_variance_from_sums(*self.dist.sum(
                [size, float(y.sum()), float((y * y).sum()), float(diff.sum()), float((diff * diff).sum())]))
        out_stats = {f"losses/{k}": (float(np.mean(v)) if v else float("nan")) for k, v in stats.items()}
        out_stats.update({"losses/first_ratio_dev": first_ratio_dev,
                          "charts/epochs_done": steps_taken / chunks_per_epoch, "charts/early_stop": float(early_stop),
                          "charts/optimizer_steps": float(steps_taken),
                          "charts/num_transitions": float(size)})
        out_stats = distributed.reduce_update_stats(self.dist, out_stats)
        out_stats["losses/explained_variance"] = ev_val
        return out_stats

    @torch.no_grad()
    def _learner_log_probs(self, images: np.ndarray, instructions: list[str], tokens: torch.Tensor,
                           temperature: float, micro: int) -> torch.Tensor:
        """Log-probs [B] of the rollout's tokens under the update's own forward (same mode, autocast and
        micro-batch size), the "old" policy of the PPO ratio in place of the sampler's numbers."""
        parts = []
        for m0 in range(0, len(instructions), micro):
            with self.autocast:
                ev = self.policy.evaluate_actions(images[m0:m0 + micro], instructions[m0:m0 + micro],
                                                  tokens[m0:m0 + micro], temperature)
            parts.append(ev.log_prob.float())
        return torch.cat(parts)

    def episode_metrics(self, batch: RolloutBatch) -> tuple[dict[str, float], int]:
        """Episode metrics of the update and its transition count, over all ranks."""
        if not self.dist.enabled:
            return {"charts/episode_return": float(batch.episode_returns.mean()),
                    "charts/success_rate": float(batch.episode_success.float().mean()),
                    "charts/episode_length": float(batch.episode_lengths.float().mean())}, batch.num_valid
        ret, succ, length, episodes, valid = self.dist.sum([
            float(batch.episode_returns.sum()), float(batch.episode_success.sum()),
            float(batch.episode_lengths.sum()), batch.episode_returns.numel(), batch.num_valid])
        return distributed.episode_metrics(ret, succ, length, episodes), int(valid)

    # --- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, update: int | None) -> EvalSummary:
        c = self.config
        self.policy.eval()
        videos = c.max_eval_videos if c.save_eval_videos else 0
        with self.autocast:
            results = evaluate_policy(self.collector, c.num_eval_episodes, c.eval_seed,
                                      temperature=c.eval_temperature, num_videos=videos, camera=c.video_camera)
        if videos:
            try:
                save_videos(results, self.run_dir / "videos", update, fps=10.0)
            except Exception as exc:  # a missing ffmpeg must not stop training
                log.warning("could not write evaluation videos: %s", exc)
        return summarize(results)

    # --- main loop -------------------------------------------------------------------------------------------
    def train(self, deadline: float | None = None) -> dict[str, Any]:
        """Run updates until ``num_updates`` (or the stop rule); with ``deadline`` (``time.monotonic()``), stop
        before an update that would end past it, as long as the last one took, with that update saved."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        c = self.config
        last: dict[str, Any] = {}
        progress = Progress(TextColumn("[bold]VLA-RL"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.description}"), disable=not (self.progress and self.dist.is_main))
        try:
            with progress:
                task = progress.add_task("", total=c.num_updates, completed=self.state.update)
                while self.state.update < c.num_updates:
                    update = self.state.update
                    t0 = time.perf_counter()
                    self.policy.eval()
                    batch = self.collect(update)
                    t1 = time.perf_counter()
                    upd = self.update_policy(batch, update)
                    t2 = time.perf_counter()
                    self.state.update += 1
                    episode, num_valid = self.episode_metrics(batch)
                    self.state.global_step += num_valid
                    metrics: dict[str, Any] = {
                        "global_step": self.state.global_step,
                        **episode,
                        "charts/learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                        **upd,
                        "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
                        "charts/SPS": num_valid / max(t2 - t0, 1e-9),
                    }
                    is_best = False
                    if self.state.update % c.eval_interval == 0 or self.state.update == c.num_updates:
                        # Rank 0 evaluates; every rank needs its result to take the same best / stop decisions.
                        summary = self.dist.broadcast(self.evaluate(self.state.update) if self.dist.is_main else None)
                        metrics.update({"eval/success_rate": summary.success_rate,
                                        "eval/ci95_low": summary.ci95_low, "eval/ci95_high": summary.ci95_high,
                                        "eval/episode_return": summary.mean_return})
                        if summary.success_rate > self.state.best_success:
                            self.state.best_success = summary.success_rate
                            self.state.best_update = self.state.update
                            is_best = True
                    self.logger.log(self.state.update, metrics)
                    last = metrics
                    numbered = self.state.update % c.save_interval == 0
                    if numbered or is_best or self.state.update == c.num_updates:
                        self.save(numbered=numbered, best=is_best)
                    desc = (f"success {metrics['charts/success_rate']:.2f} "
                            f"return {metrics['charts/episode_return']:.2f} kl {upd['losses/approx_kl']:.4f}")
                    progress.update(task, advance=1, description=desc)
                    stop = (c.stop_success_rate is not None and "eval/success_rate" in metrics
                            and metrics["eval/success_rate"] >= c.stop_success_rate)
                    if deadline is not None and self.state.update < c.num_updates:
                        # every rank decides alike (a sum of votes), so they leave the loop together
                        late = float(time.monotonic() + (time.perf_counter() - t0) > deadline)
                        self.out_of_time = self.dist.sum([late])[0] > 0
                    if (stop or self.out_of_time) and not (numbered or is_best or self.state.update == c.num_updates):
                        self.save(numbered=False, best=False)
                    log_now = self.state.update % c.log_interval == 0 or self.state.update == c.num_updates or stop
                    if log_now and self.dist.is_main:
                        log.info("update %d/%d %s sps %.1f", self.state.update, c.num_updates, desc,
                                 metrics["charts/SPS"])
                    if stop and self.dist.is_main:
                        log.info("eval success %.2f >= stop_success_rate %.2f: stopping",
                                 metrics["eval/success_rate"], c.stop_success_rate)
                    if self.out_of_time and self.dist.is_main:
                        log.info("stopping at update %d: the next one would end past --max-seconds (the "
                                 "checkpoint is saved; --resume continues)", self.state.update)
                    if stop or self.out_of_time:
                        break
        finally:
            self.logger.close()
            self.sim.close()
        return last

    def _check_memory(self, config: TrainConfig) -> None:
        """Fail with the knob to turn (not an OOM trace mid-update) when the run cannot fit this GPU."""
        from crane_x7_vla.models.config import OpenVLAConfig
        from crane_x7_vla_rl.memory import MemoryConfig, ModelDims, check_fits

        vla_config = getattr(self.policy.vla, "config", None)
        if not isinstance(vla_config, OpenVLAConfig):
            return  # the plan models OpenVLA; other families are not estimated
        total = torch.cuda.get_device_properties(self.device).total_memory
        plan_config = MemoryConfig.from_train_config(
            config, ModelDims.from_openvla_config(vla_config),
            activation_checkpointing=self.policy.gradient_checkpointing, rollout_engine=self.policy.engine_enabled,
            num_rollouts_per_update=max(1, config.rollout.num_rollouts_per_update // self.dist.world_size),
        )
        plan = check_fits(plan_config, total)
        log.info("memory plan: %s", plan.summary())

    def save(self, *, numbered: bool, best: bool) -> None:
        """Write the checkpoint once (rank 0) with every rank's RNG states; all ranks leave together."""
        rngs = self.dist.gather(ckpt.rng_state())  # a collective: every rank takes part
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir, policy=self.policy, optimizer=self.optimizer,
                                 scheduler=self.scheduler, config=self.config, state=self.state,
                                 dataset_statistics=dict(getattr(self.policy.vla, "norm_stats", {})),
                                 numbered=numbered, best=best, rng_by_rank=rngs if self.dist.enabled else None)
        self.dist.barrier()  # nobody reads or resumes from a checkpoint rank 0 is still writing
