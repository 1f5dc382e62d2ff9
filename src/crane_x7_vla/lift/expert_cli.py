"""``crane-x7-vla expert``: run the scripted expert on a simulator, optionally recording demonstrations.

Prints one line per episode (unless ``--json``) and always ONE JSON object last::

    {"simulator": ..., "episodes": N, "successes": k, "success_rate": k / N, "results": [{"seed", "success",
     "steps"}, ...], "record": DIR | null, "seconds": ...}

With ``--workers N`` the episodes run in N processes (``spawn``), each with its own simulator and expert; the
parent prints and records them in seed order, so the output equals a sequential run's (an episode is a
function of its seed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Generator
from typing import Any

import numpy as np

SIMULATORS = ("mujoco", "maniskill", "genesis")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--simulator", choices=SIMULATORS, default="mujoco", help="Lift backend (default mujoco)")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default 0)")
    parser.add_argument("--record", metavar="DIR", default=None, help="write demonstrations to DIR (format v1)")
    parser.add_argument("--backend", choices=("cpu", "gpu"), default="cpu", help="simulator backend (default cpu)")
    parser.add_argument("--env-id", default="PickPlace-CRANE-X7")
    parser.add_argument("--max-steps", type=int, default=200, help="episode horizon (default 200)")
    parser.add_argument("--image-size", type=int, default=224, help="square camera image size when recording")
    parser.add_argument("--camera", choices=("wrist", "third_person"), default="wrist",
                        help="camera recorded with --record (default wrist; train and evaluate with the same one)")
    parser.add_argument("--action-noise", type=float, default=0.0, metavar="RAD",
                        help="DART-style: execute the expert's arm targets plus N(0, RAD^2) noise but record the "
                             "clean targets, so demos show how to recover from small errors (default 0)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the episodes in N processes (default 1: in this process); the results and the "
                             "recording are the same as with 1, in seed order")
    parser.add_argument("--json", action="store_true", help="print only the final JSON object")


def run_episode(sim: Any, expert: Any, seed: int, record: bool, action_noise: float = 0.0) -> dict[str, Any]:
    """One expert episode on a 1-env simulator; returns the result and (if ``record``) the trajectory.

    With ``action_noise`` the arm joints (not the gripper) are executed with Gaussian noise while the recorded
    label stays the expert's clean target: the expert's own command does not follow the noise, so its absolute
    targets lead back to the nominal path (DART, Laskey et al. 2017)."""
    from crane_x7_vla.lift.actions import clip_to_limits

    rng = np.random.default_rng(seed)
    obs, _ = sim.reset(seed=seed)
    expert.reset()
    images, actions, qpos = [], [], []
    success, steps = False, 0
    for steps in range(1, sim.config.max_episode_steps + 1):  # noqa: B007 (steps is reported)
        action = expert.act(obs)
        if record:
            images.append(obs.rgb_image[0])
            actions.append(action[0])
            qpos.append(obs.qpos[0])
        executed = action
        if action_noise > 0:
            executed = action.copy()
            executed[:, :-1] += rng.normal(0.0, action_noise, size=executed[:, :-1].shape).astype(action.dtype)
            executed = clip_to_limits(executed)  # noise must not push a target past a joint limit
        result = sim.step(executed)
        obs = result.observation
        if result.terminated[0] or result.truncated[0]:
            success = bool(result.terminated[0])
            break
    out: dict[str, Any] = {"seed": seed, "success": success, "steps": steps}
    if record:
        out["trajectory"] = (np.stack(images), np.stack(actions), np.stack(qpos))
    return out


class WorkerSetupError(RuntimeError):
    """A ``--workers`` process could not build its simulator (the message says why)."""


_WORKER: dict[str, Any] = {}  # the simulator and expert of a --workers process


def _init_worker(simulator: str, config: Any, record: bool, action_noise: float) -> None:
    """Pool initializer: build this process's simulator and expert once (an error is kept for the first task)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it terminates the pool
    from crane_x7_vla.lift import create_simulator
    from crane_x7_vla.lift.expert import ScriptedExpert

    try:
        sim = create_simulator(simulator, config)
    except Exception as exc:  # raising here would make the pool restart the worker forever
        _WORKER["error"] = f"{exc}"
        return
    _WORKER.update(sim=sim, expert=ScriptedExpert(1, config.sim_rate), record=record, action_noise=action_noise)


def _worker_episode(seed: int) -> dict[str, Any]:
    if "error" in _WORKER:
        raise WorkerSetupError(_WORKER["error"])
    return run_episode(_WORKER["sim"], _WORKER["expert"], seed, _WORKER["record"], _WORKER["action_noise"])


def _pool_episodes(args: argparse.Namespace, config: Any, seeds: list[int],
                   record: bool) -> Generator[dict[str, Any], None, None]:
    """Episode results in seed order from ``--workers`` processes (imap: only finished ones wait in memory)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(args.workers, len(seeds)), initializer=_init_worker,
                  initargs=(args.simulator, config, record, args.action_noise)) as pool:
        yield from pool.imap(_worker_episode, seeds, chunksize=1)


def _sequential_episodes(sim: Any, seeds: list[int], record: bool,
                         action_noise: float) -> Generator[dict[str, Any], None, None]:
    from crane_x7_vla.lift.expert import ScriptedExpert

    expert = ScriptedExpert(1, sim.config.sim_rate)
    for seed in seeds:
        yield run_episode(sim, expert, seed, record, action_noise)


def main(args: argparse.Namespace) -> int:
    from crane_x7_vla.lift import SimulatorConfig, SimulatorUnavailableError, create_simulator
    from crane_x7_vla.lift.dataset import DemoWriter, Episode
    from crane_x7_vla.lift.tasks import get_task

    if args.episodes < 1:
        print("crane-x7-vla expert: --episodes must be >= 1", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"crane-x7-vla expert: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if not 0.0 <= args.action_noise <= 0.2:
        print(f"crane-x7-vla expert: --action-noise must be in [0, 0.2] rad, got {args.action_noise}", file=sys.stderr)
        return 2
    record = args.record is not None
    config = SimulatorConfig(
        env_id=args.env_id, backend=args.backend, max_episode_steps=args.max_steps, num_envs=1,
        render_images=record, image_size=(args.image_size, args.image_size), camera=args.camera,
    )
    seeds = [args.seed + i for i in range(args.episodes)]
    sim = None
    try:
        task = get_task(args.env_id)
        if args.workers == 1:
            sim = create_simulator(args.simulator, config)
    except (SimulatorUnavailableError, ValueError) as exc:
        print(f"crane-x7-vla expert: {exc}", file=sys.stderr)
        return 2
    episodes = (_sequential_episodes(sim, seeds, record, args.action_noise) if sim is not None
                else _pool_episodes(args, config, seeds, record))  # the pool starts with the first episode
    results = []
    start = time.perf_counter()
    try:
        writer = (DemoWriter(args.record, args.env_id, config.camera, config.sim_rate, config.image_size)
                  if record else None)
        for i, res in enumerate(episodes):
            if writer is not None:
                images, actions, qpos = res.pop("trajectory")
                writer.add(Episode(images, actions, qpos, task.instruction, res["success"], res["seed"]))
            results.append(res)
            if not args.json:
                print(f"episode {i}: seed {res['seed']} success {res['success']} steps {res['steps']}", flush=True)
    except WorkerSetupError as exc:
        print(f"crane-x7-vla expert: {exc}", file=sys.stderr)
        return 2
    finally:
        episodes.close()  # ends the worker processes
        if sim is not None:
            sim.close()
    successes = sum(r["success"] for r in results)
    summary = {
        "simulator": args.simulator, "env_id": args.env_id, "episodes": len(results), "successes": successes,
        "success_rate": successes / len(results), "results": results, "record": args.record,
        "seconds": round(time.perf_counter() - start, 3),
    }
    print(json.dumps(summary))
    return 0
