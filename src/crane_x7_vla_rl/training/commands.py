"""Implementations of ``train``, ``evaluate``, ``config`` and ``export`` (argparse namespace -> exit code).

Torch, the VLA runtime and the simulators are imported inside the functions, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from crane_x7_vla_rl.config import ConfigError, resolve, template

log = logging.getLogger("crane_x7_vla_rl")


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)


def _fail(msg: str) -> int:
    print(f"crane_x7_vla_rl: error: {msg}", file=sys.stderr)
    return 2


def train(args: argparse.Namespace) -> int:
    _setup_logging()
    from crane_x7_vla_rl.training import checkpoint as ckpt

    if args.max_seconds is not None and args.max_seconds <= 0:
        return _fail(f"--max-seconds must be > 0, got {args.max_seconds}")
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "max_seconds")}
    resume = Path(args.resume) if args.resume else None
    try:
        base: dict[str, Any] | None = None
        if resume is not None:
            base = ckpt.load_config_dict(resume)  # the run continues with its own config ...
        config = resolve(args.config, flags, base=base)  # ... unless YAML / env / flags say otherwise
    except (ConfigError, FileNotFoundError) as exc:
        return _fail(str(exc))
    from crane_x7_vla_rl.training import distributed
    from crane_x7_vla_rl.training.trainer import Trainer

    try:  # under torchrun / accelerate launch every rank runs this; the trainer joins the process group
        try:
            trainer = Trainer(config, resume=resume, progress=sys.stderr.isatty())
        except (distributed.DistributedError, ValueError) as exc:  # ValueError: config vs model/GPU (memory plan)
            log.debug("trainer setup failed", exc_info=True)
            return _fail(str(exc))
        if trainer.dist.is_main:
            log.info("run directory: %s (%d rank(s))", trainer.run_dir, trainer.dist.world_size)
        last = trainer.train(deadline=deadline)
        if trainer.dist.is_main:  # one summary line per run, not per rank
            print(json.dumps({"run_dir": str(trainer.run_dir), "updates": trainer.state.update,
                              "num_updates": config.num_updates, "out_of_time": trainer.out_of_time,
                              "best_success": trainer.state.best_success, "world_size": trainer.dist.world_size,
                              **{k: v for k, v in last.items() if k.startswith(("charts/", "eval/"))}}))
    finally:
        distributed.shutdown()
    return 0


def evaluate(args: argparse.Namespace) -> int:
    _setup_logging()
    import torch

    from crane_x7_vla_rl.policy import VLAActorCritic
    from crane_x7_vla_rl.rollout.collector import RolloutCollector
    from crane_x7_vla_rl.training import checkpoint as ckpt
    from crane_x7_vla_rl.training.evaluate import evaluate_policy, save_videos, summarize
    from crane_x7_vla_rl.training.trainer import build_policy, make_simulator, resolve_device

    path = Path(args.checkpoint)
    if not path.is_dir():
        return _fail(f"--checkpoint {str(path)!r} is not a directory")
    rl = ckpt.is_rl_checkpoint(path)
    try:
        # An RL checkpoint brings its config; any other VLA checkpoint is evaluated with the defaults.
        base = ckpt.load_config_dict(path) if rl else {"pretrained_checkpoint": str(path)}
        flags = {"simulator": args.simulator, "env_id": args.env_id, "backend": args.backend,
                 "num_parallel_envs": args.num_parallel_envs, "render": args.render, "camera": args.camera,
                 "sim_workers": args.sim_workers, "engine": args.engine}
        config = resolve(None, flags, base=base)
        if args.device:
            config = config.model_copy(update={"device": args.device})
    except (ConfigError, FileNotFoundError) as exc:
        return _fail(str(exc))
    device = resolve_device(config.device)
    torch.manual_seed(args.seed)
    try:
        policy: VLAActorCritic = build_policy(config, device)
    except ValueError as exc:  # e.g. rollout.engine: on for a model the engine does not run
        return _fail(str(exc))
    if rl:
        policy.load_adapter(path)
    policy.eval()
    sim = make_simulator(config)
    temperature = config.eval_temperature if args.temperature is None else args.temperature
    try:
        collector = RolloutCollector(sim, policy, instruction=args.instruction or config.language_instruction,
                                     max_steps=config.rollout.max_steps, temperature=temperature, device=device)
        results = evaluate_policy(collector, args.num_episodes, args.seed, temperature=temperature,
                                  num_videos=args.num_videos, camera=config.video_camera,
                                  one_per_outcome=args.video_per_outcome)
    finally:
        sim.close()
    summary = summarize(results)
    videos = (save_videos(results, Path(args.video_dir), None, fps=10.0)
              if args.num_videos or args.video_per_outcome else [])
    for ep in summary.episodes:
        log.info("episode %d seed %d: %s return %.3f length %d", ep["episode"], ep["seed"],
                 "success" if ep["success"] else "failure", ep["return"], ep["length"])
    out = {"checkpoint": str(path), "simulator": config.rollout.simulator, "env_id": config.rollout.env_id,
           "seed": args.seed, "temperature": temperature, **summary.to_dict(),
           "videos": [str(v) for v in videos]}
    print(json.dumps(out))  # the LAST line of stdout: one JSON object
    return 0


def config(args: argparse.Namespace) -> int:
    from crane_x7_vla.utils.atomic import write_text_atomic

    cfg = template(args.template)
    header = (f"# crane_x7_vla_rl config ({args.template} template). Precedence: command-line flags > env "
              "(LIFT_SIMULATOR, LIFT_BACKEND, WANDB_PROJECT) > this file > defaults.\n"
              "# Secrets (HF_TOKEN, WANDB_API_KEY) come from the environment only.\n")
    write_text_atomic(args.output, header + cfg.to_yaml())
    print(f"wrote {args.output} ({args.template}: {cfg.num_updates} updates, "
          f"{cfg.rollout.num_parallel_envs} envs)")
    return 0


def export(args: argparse.Namespace) -> int:
    _setup_logging()
    from crane_x7_vla.models.loading import save_pretrained
    from crane_x7_vla_rl.training import checkpoint as ckpt
    from crane_x7_vla_rl.training.trainer import build_policy

    path = Path(args.checkpoint)
    try:
        config = ckpt.load_config(path)
    except (ConfigError, FileNotFoundError) as exc:
        return _fail(str(exc))
    import torch

    device = torch.device(args.device or "cpu")
    policy = build_policy(config.model_copy(update={"device": str(device)}), device, acting=False)
    policy.load_adapter(path)
    # save_pretrained folds the unmerged LoRA deltas into the weights: a plain OpenVLA checkpoint results.
    out = save_pretrained(policy.vla, args.output)  # type: ignore[arg-type]
    print(json.dumps({"exported": str(out), "from": str(path), "base": config.checkpoint_source}))
    return 0


__all__ = ["config", "evaluate", "export", "train"]
