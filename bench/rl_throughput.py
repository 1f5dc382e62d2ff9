"""VLA-RL throughput: ONE full PPO update cycle (rollout + update) with the RL package's own pieces.

    # CPU / CI-like machine: the tiny model in MuJoCo
    PYTHONPATH=src python bench/rl_throughput.py --model tiny --simulator mujoco --num-envs 2 --steps 4
    # GPU: the learning run's ~53M `small` model (scripts/learn_pick_place.py), its update under the profiler
    PYTHONPATH=src:bench python bench/rl_throughput.py --model small --simulator none --num-envs 32 --steps 100 \
        --minibatch-size 128 --num-epochs 2 --profile-update
    # GPU: the full openvla-7b architecture (random bf16 weights, nothing downloaded)
    PYTHONPATH=src python bench/rl_throughput.py --model openvla-7b --simulator maniskill --backend gpu --num-envs 64
    PYTHONPATH=src python bench/rl_throughput.py --model openvla-7b --simulator none --num-envs 64 --steps 8

Rollout: ``RolloutCollector.collect`` (one batched ``VLAActorCritic.act`` per step over all envs, bf16 autocast
on CUDA) on a real simulator, or with ``--simulator none`` on synthetic 224x224 frames generated on the GPU and
handed over as the numpy batch the Lift API defines (the same host copy ManiSkill's numpy API makes), so the
policy side can be measured where no simulator runs. Update: GAE (``algorithms.compute_gae``) then PPO epochs
of ``VLAActorCritic.evaluate_actions`` + ``algorithms.ppo_loss`` + AdamW over LoRA and the value head, split in
minibatches and micro-batches. The update loop is an adapter written here rather than ``Trainer.update_policy``
because that method needs a whole ``Trainer`` (a checkpoint on disk to load, a run directory, loggers and the
distributed state); it follows the same steps (including the host copy of the buffered frames).

``--profile-update`` runs the same update once more under ``torch.profiler`` and reports the CUDA kernel time
against that run's wall time: a device busy for a small part of the wall clock means the update is bound by
the host (Python, launches, synchronisations), not by the GPU.

Reported (one JSON object): env-steps/s end to end, update samples/s, the time split (sim, render, policy
preprocessing, policy inference, PPO update; render is separated where the backend exposes its renderer), peak
GPU memory (torch allocator and device-wide) next to ``crane_x7_vla_rl.memory``'s plan, and model FLOP
utilisation over the cycle against ``--peak-tflops`` (989 = H200 bf16 dense).

FLOP accounting (model FLOPs, as in MFU papers): a forward costs 2 x (weights applied) x tokens, per component
with its own token count: the vision towers' run blocks over their patch + prefix tokens, the projector over the
patches, the Llama layers over the sequence, the 256-row LM-head slice where action logits are taken.
Acting = one prefill of (patches + prompt) plus D-1 KV-cached tokens; a value call = one prefill; an update
sample = forward over (patches + prompt + D-1) tokens, and backward = 2x forward, so x3. Attention-score FLOPs
(~2% at ~300 tokens), activation-checkpointing recompute and preprocessing are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult
from crane_x7_vla_rl.algorithms import compute_gae, ppo_loss
from crane_x7_vla_rl.memory import GIB, MemoryConfig, ModelDims, estimate
from crane_x7_vla_rl.policy import VLAActorCritic
from crane_x7_vla_rl.rollout.buffer import RolloutBatch
from crane_x7_vla_rl.rollout.collector import RolloutCollector
from crane_x7_vla_rl.training.trainer import acts_through_engine

INSTRUCTION = "pick up the object and place it"
ACTION_DIM = 8


# --- timing ----------------------------------------------------------------------------------------------------
class Timer:
    """Accumulates wall time per phase; synchronises CUDA so asynchronous kernels land in the right phase."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, name: str, count: int = 0) -> Iterator[None]:
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - t0
            self.counts[name] += count


class TimedPolicy:
    """The collector's Policy protocol around a VLAActorCritic, timing each call and counting samples."""

    def __init__(self, policy: VLAActorCritic, timer: Timer) -> None:
        self.policy, self.timer = policy, timer
        vla = policy.vla
        prepare = vla.prepare_inputs

        def timed_prepare(images: Any, instructions: Sequence[str]) -> Any:
            with timer("policy_preprocess"):
                return prepare(images, instructions)

        vla.prepare_inputs = timed_prepare  # instance attribute: shadows the method for this benchmark only

    def act(self, images: Any, instructions: Sequence[str], temperature: float,
            generator: torch.Generator | None = None) -> Any:
        with self.timer("policy_act", len(instructions)):
            return self.policy.act(images, instructions, temperature, generator)

    def value(self, images: Any, instructions: Sequence[str]) -> torch.Tensor:
        with self.timer("policy_value", len(instructions)):
            return self.policy.value(images, instructions)

    def decode_actions(self, tokens: torch.Tensor) -> np.ndarray:
        with self.timer("policy_decode"):
            return self.policy.decode_actions(tokens)


class TimedSim:
    """Delegates to a Lift simulator, timing reset/step, and its renderer where the backend exposes one."""

    def __init__(self, sim: Any, timer: Timer) -> None:
        self.sim, self.timer = sim, timer
        self.render_split = False
        if hasattr(sim, "_render"):  # MuJoCo renders every camera image through _render
            self._wrap(sim, "_render")
        for env in getattr(sim, "envs", []):  # ManiSkill: sensor capture + image fetch inside env.step
            for name in ("capture_sensor_data", "get_sensor_images", "get_sensor_obs"):
                if hasattr(env, name):
                    self._wrap(env, name)

    def _wrap(self, obj: Any, name: str) -> None:
        fn = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.timer("render"):
                return fn(*args, **kwargs)

        setattr(obj, name, timed)
        self.render_split = True

    @property
    def num_envs(self) -> int:
        return int(self.sim.num_envs)

    def reset(self, seed: int | None = None, env_idx: Any = None) -> tuple[Observation, dict[str, Any]]:
        with self.timer("sim_reset"):
            return self.sim.reset(seed=seed, env_idx=env_idx)  # type: ignore[no-any-return]

    def step(self, action: Any) -> StepResult:
        with self.timer("sim_step", self.num_envs):
            return self.sim.step(action)  # type: ignore[no-any-return]

    def get_observation(self) -> Observation:
        return self.sim.get_observation()  # type: ignore[no-any-return]

    def render(self, camera: str = "third_person") -> Any:
        return self.sim.render(camera)

    def close(self) -> None:
        self.sim.close()


class SyntheticSimulator:
    """``--simulator none``: random 224x224 frames made on the device, handed over as the Lift numpy batch."""

    def __init__(self, config: SimulatorConfig, device: torch.device, timer: Timer) -> None:
        self.config, self.device, self.timer = config, device, timer
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.render_split = True
        self.t = 0

    @property
    def num_envs(self) -> int:
        return self.config.num_envs

    def _obs(self) -> Observation:
        h, w = self.config.image_size
        with self.timer("render"):
            frames = torch.randint(0, 256, (self.num_envs, h, w, 3), dtype=torch.uint8, device=self.device,
                                   generator=self.gen)  # [N, H, W, 3]
            rgb = frames.cpu().numpy()
        q = np.zeros((self.num_envs, 8), np.float32)
        return Observation(rgb_image=rgb, qpos=q, qvel=q.copy())

    def reset(self, seed: int | None = None, env_idx: Any = None) -> tuple[Observation, dict[str, Any]]:
        with self.timer("sim_reset"):
            self.t = 0
            return self._obs(), {}

    def step(self, action: Any) -> StepResult:
        with self.timer("sim_step", self.num_envs):
            if np.asarray(action).shape != (self.num_envs, 8):
                raise ValueError(f"action must be ({self.num_envs}, 8), got {np.shape(action)}")
            self.t += 1
            n = self.num_envs
            reward = np.random.default_rng(self.t).random(n).astype(np.float32)
            trunc = np.full(n, self.t >= self.config.max_episode_steps)
            obs = self._obs()
        return StepResult(obs, reward, np.zeros(n, bool), trunc, {"success": np.zeros(n, bool)})

    def get_observation(self) -> Observation:
        return self._obs()

    def close(self) -> None:
        pass


# --- model -----------------------------------------------------------------------------------------------------
def build_vla(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The tiny test model, the learning run's from-scratch ``small`` model, or the full openvla-7b tree with
    random weights (a locally built tokenizer with the real id layout, in which the prompt has the release's token
    count; 8-dim action statistics come from the tiny checkpoint)."""
    from crane_x7_vla.models import load_vla, make_tiny_checkpoint
    from crane_x7_vla.models.presets import OPENVLA_7B
    from crane_x7_vla.models.tiny import random_openvla

    tmp = Path(tempfile.mkdtemp())
    small = load_vla(make_tiny_checkpoint(tmp / "tiny", action_dim=ACTION_DIM), device="cpu")
    if name == "tiny":
        return small.to(device=device, dtype=dtype)
    if name == "small":
        from crane_x7_vla_rl.sft.trainer import SMALL_PRESETS, build_small_model

        key = next(iter(small.norm_stats))
        return build_small_model(SMALL_PRESETS["small"], small.norm_stats, key, seed=0).to(device=device, dtype=dtype)
    return random_openvla(OPENVLA_7B, small.norm_stats, INSTRUCTION, device=device, dtype=dtype)


def make_sim(args: argparse.Namespace, device: torch.device, timer: Timer) -> Any:
    cfg = SimulatorConfig(backend=args.backend, num_envs=args.num_envs, max_episode_steps=args.steps,
                          image_size=(args.image_size, args.image_size),
                          device=str(device) if device.type == "cuda" else "cuda")
    if args.simulator == "none":
        return SyntheticSimulator(cfg, device, timer)
    from crane_x7_vla.lift.registry import create_simulator

    return TimedSim(create_simulator(args.simulator, cfg), timer)


# --- the PPO update (adapter over the package's GAE, policy and PPO loss) -----------------------------------------
def ppo_update(policy: VLAActorCritic, optimizer: torch.optim.Optimizer, batch: RolloutBatch, args: argparse.Namespace,
               autocast: Callable[[], Any], device: torch.device) -> dict[str, float]:
    advantages, returns = compute_gae(batch.rewards, batch.values, batch.next_values, batch.terminated,
                                      batch.truncated, 0.99, 0.95)  # [T, E]
    t_idx, e_idx = batch.flat_valid()  # [B]
    b_adv, b_ret = advantages[t_idx, e_idx], returns[t_idx, e_idx]
    b_logp, b_val, b_tokens = batch.log_probs[t_idx, e_idx], batch.values[t_idx, e_idx], batch.tokens[t_idx, e_idx]
    b_images = batch.images[t_idx, e_idx].cpu().numpy()  # [B, H, W, 3], as the trainer does
    b_instr = [batch.instructions[int(i)] for i in batch.instruction_ids[e_idx].tolist()]
    size = b_adv.shape[0]
    mb = min(args.minibatch_size, size)
    micro = max(1, math.ceil(mb / args.grad_accumulation_steps))
    params = [q for g in optimizer.param_groups for q in g["params"]]
    gen = torch.Generator().manual_seed(0)
    samples, kls = 0, []
    policy.train()
    for _ in range(args.num_epochs):
        perm = torch.randperm(size, generator=gen)
        for start in range(0, size, mb):
            mb_idx = perm[start:start + mb]
            optimizer.zero_grad(set_to_none=True)
            mb_adv = b_adv[mb_idx.to(device)]
            for m0 in range(0, mb_idx.numel(), micro):
                idx = mb_idx[m0:m0 + micro]
                dev_idx = idx.to(device)
                with autocast():
                    ev = policy.evaluate_actions(b_images[idx.numpy()], [b_instr[i] for i in idx.tolist()],
                                                 b_tokens[dev_idx], 1.0)
                adv = (b_adv[dev_idx] - mb_adv.mean()) / (mb_adv.std() + 1e-8) if mb_adv.numel() > 1 else b_adv[dev_idx]
                out = ppo_loss(ev.log_prob, b_logp[dev_idx], adv, ev.entropy, ev.value, b_val[dev_idx],
                               b_ret[dev_idx], normalize_advantages=False)
                (out.loss * (idx.numel() / mb_idx.numel())).backward()
                kls.append(float(out.approx_kl))
                samples += idx.numel()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            optimizer.step()
    return {"samples": float(samples), "transitions": float(size), "approx_kl_mean": float(np.mean(kls))}


def profile_update(policy: VLAActorCritic, optimizer: torch.optim.Optimizer, batch: RolloutBatch,
                   args: argparse.Namespace, autocast: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """The update once more under torch.profiler: its wall time, CUDA kernel time (total and by kind), and the
    fraction of the wall clock the device was busy."""
    from torch.profiler import ProfilerActivity, profile

    from profile_engine import cuda_ms_by_kind  # type: ignore[import-not-found]

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        ppo_update(policy, optimizer, batch, args, autocast, device)
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3
    kinds = cuda_ms_by_kind(prof.key_averages())
    kernel_ms = sum(kinds.values())
    return {"wall_ms": round(wall_ms, 1), "cuda_kernel_ms": round(kernel_ms, 1),
            "device_busy": round(kernel_ms / wall_ms, 3) if cuda else None,
            "cuda_kernel_ms_by_kind": {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}}


# --- main --------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "small", "openvla-7b"), default="tiny",
                    help="small: the ~53M model of the learning run (224 px frames)")
    ap.add_argument("--simulator", default="mujoco", help="mujoco, maniskill, genesis, or none (synthetic frames)")
    ap.add_argument("--backend", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--num-envs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="rollout steps (the episode horizon)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--minibatch-size", type=int, default=32)
    ap.add_argument("--grad-accumulation-steps", type=int, default=1)
    ap.add_argument("--num-epochs", type=int, default=1)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H200 bf16 dense: 989)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up act + backward")
    ap.add_argument("--engine", choices=("auto", "on", "off"), default="auto",
                    help="act through the static-cache engine (auto: on CUDA), as rollout.engine")
    ap.add_argument("--profile-update", action="store_true",
                    help="run the update again under torch.profiler: CUDA kernel time against wall time "
                         "(needs PYTHONPATH=src:bench)")
    ap.add_argument("--peft-input-cast", action="store_true",
                    help="keep peft's cast of every adapter input to the fp32 LoRA dtype under autocast too "
                         "(the behaviour before VLAActorCritic skipped it), for comparison")
    args = ap.parse_args()
    if args.num_envs < 1 or args.steps < 1:
        ap.error("--num-envs and --steps must be >= 1")

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    timer = Timer(cuda)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    vla = build_vla(args.model, device, dtype)
    policy = VLAActorCritic(vla, lora_rank=args.lora_rank, lora_alpha=16, value_head_hidden=512,
                            gradient_checkpointing=args.activation_checkpointing)
    if args.peft_input_cast:
        for m in policy._lora_layers:
            setattr(m, "cast_input_dtype_enabled", True)  # noqa: B010 (a peft attribute)
        policy._match_lora_input_cast = lambda device: None  # type: ignore[method-assign]
    use_engine = acts_through_engine(args.engine, device, vla)
    if use_engine:
        policy.enable_engine(args.num_envs)  # graph captured by the warm-up act below
    build_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW([{"params": policy.lora_parameters(), "lr": 1e-5},
                                   {"params": list(policy.value_head.parameters()), "lr": 1e-4}],
                                  weight_decay=0.0, eps=1e-5)

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    sim = make_sim(args, device, timer)
    dims = ModelDims.from_openvla_config(vla.config)
    prompt_tokens = int(vla.prepare_text([INSTRUCTION])[0].shape[1])
    n = args.num_envs
    if not args.no_warmup:  # first-call costs (cuBLAS handles, kernel selection) stay out of the timings
        frames = np.zeros((n, args.image_size, args.image_size, 3), np.uint8)
        with autocast():
            tok = policy.act(frames, [INSTRUCTION] * n, 1.0).tokens
            k = min(n, math.ceil(args.minibatch_size / args.grad_accumulation_steps))
            policy.evaluate_actions(frames[:k], [INSTRUCTION] * k, tok[:k], 1.0).log_prob.sum().backward()
        optimizer.zero_grad(set_to_none=True)
        policy.eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    timed_policy = TimedPolicy(policy, timer)
    collector = RolloutCollector(sim, timed_policy, instruction=INSTRUCTION, max_steps=args.steps,  # type: ignore[arg-type]
                                 temperature=1.0, device=device)
    instructions: list[str] = []

    def index(text: str) -> int:
        if text not in instructions:
            instructions.append(text)
        return instructions.index(text)

    policy.eval()
    gen = torch.Generator(device=device).manual_seed(1)
    with timer("rollout"), autocast():
        batch = RolloutBatch.from_segments([collector.collect(1_000_000, gen, index)], instructions)
    rollout_peak = torch.cuda.max_memory_allocated() if cuda else 0
    with timer("update"):
        upd = ppo_update(policy, optimizer, batch, args, autocast, device)
    profiled = profile_update(policy, optimizer, batch, args, autocast, device) if args.profile_update else None
    sim.close()

    s = timer.seconds
    cycle = s["rollout"] + s["update"]
    env_steps = timer.counts["sim_step"]
    act_samples, value_samples = timer.counts["policy_act"], timer.counts["policy_value"]
    vision = dims.vision_forward_flops()
    act_flops = act_samples * (vision + dims.llm_forward_flops(dims.num_patches + prompt_tokens + ACTION_DIM - 1,
                                                                ACTION_DIM))
    value_flops = value_samples * (vision + dims.llm_forward_flops(dims.num_patches + prompt_tokens, 0))
    seq = dims.num_patches + prompt_tokens + ACTION_DIM - 1
    update_flops = int(upd["samples"]) * 3 * (vision + dims.llm_forward_flops(seq, ACTION_DIM))
    peak = args.peak_tflops * 1e12
    render = s.get("render", 0.0)
    sim_only = s["sim_step"] + s["sim_reset"] - (render if sim.render_split else 0.0)

    lora_bytes = next(iter(policy.lora_parameters())).element_size()
    total_mem = torch.cuda.get_device_properties(device).total_memory if cuda else 0
    plan = estimate(MemoryConfig(
        model=dims, num_parallel_envs=n, max_steps=args.steps, num_rollouts_per_update=n,
        image_size=(args.image_size, args.image_size), minibatch_size=args.minibatch_size,
        grad_accumulation_steps=args.grad_accumulation_steps, activation_checkpointing=args.activation_checkpointing,
        lora_rank=args.lora_rank, prompt_tokens=prompt_tokens, action_dim=ACTION_DIM,
        weight_bytes=2 if cuda else 4, act_bytes=2 if cuda else 4, lora_param_bytes=lora_bytes,
        simulator=args.simulator, sim_on_gpu=args.backend == "gpu" or args.simulator == "none",
        rollout_engine=use_engine), total_mem or 1)

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__, "peft": importlib.metadata.version("peft"),
        "lora_input_cast": "peft (always)" if args.peft_input_cast else "outside autocast only",
        "model": args.model, "params_b": round(dims.total_params() / 1e9, 4),
        "lora_params_m": round(dims.lora_params(args.lora_rank) / 1e6, 3), "lora_dtype": str(
            next(iter(policy.lora_parameters())).dtype), "simulator": args.simulator,
        "backend": args.backend if args.simulator != "none" else f"synthetic frames on {device.type}",
        "num_envs": n, "steps": args.steps, "prompt_tokens": prompt_tokens, "seq_tokens": seq,
        "minibatch_size": args.minibatch_size, "grad_accumulation_steps": args.grad_accumulation_steps,
        "num_epochs": args.num_epochs, "activation_checkpointing": args.activation_checkpointing,
        "rollout_engine": use_engine,
        "build_s": round(build_s, 2),
        "cycle_s": round(cycle, 3), "rollout_s": round(s["rollout"], 3), "update_s": round(s["update"], 3),
        "env_steps": env_steps, "transitions": int(upd["transitions"]),
        "env_steps_per_s_rollout": round(env_steps / s["rollout"], 2),
        "env_steps_per_s_end_to_end": round(env_steps / cycle, 2),
        "update_samples_per_s": round(upd["samples"] / s["update"], 2),
        "time_split_s": {
            "sim": round(sim_only, 3), "render": round(render, 3) if sim.render_split else None,
            "policy_preprocess": round(s["policy_preprocess"], 3),
            "policy_inference": round(s["policy_act"] + s["policy_value"] + s["policy_decode"], 3),
            "ppo_update": round(s["update"], 3),
        },
        "flops": {"act": act_flops, "value": value_flops, "update": update_flops},
        "tflops_per_s": round((act_flops + value_flops + update_flops) / cycle / 1e12, 3),
        "mfu_cycle": round((act_flops + value_flops + update_flops) / (cycle * peak), 5),
        "mfu_rollout": round((act_flops + value_flops) / (s["rollout"] * peak), 5),
        "mfu_update": round(update_flops / (s["update"] * peak), 5),
        "peak_tflops": args.peak_tflops,
        "memory_plan_gib": plan.breakdown_gib(),
    }
    if profiled is not None:
        result["update_profile"] = profiled
    if cuda:
        free, total = torch.cuda.mem_get_info()
        result.update({
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_allocated_rollout_gib": round(rollout_peak / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
            "device_used_gib_end": round((total - free) / GIB, 3),
            "plan_fits": plan.fits,
        })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
