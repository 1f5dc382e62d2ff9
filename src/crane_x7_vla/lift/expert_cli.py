"""``crane-x7-vla expert``: run the scripted expert on a simulator, optionally recording demonstrations.

Prints one line per episode (unless ``--json``) and always ONE JSON object last::

    {"simulator": ..., "episodes": N, "successes": k, "success_rate": k / N, "results": [{"seed", "success",
     "steps"}, ...], "record": DIR | null, "seconds": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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


def main(args: argparse.Namespace) -> int:
    from crane_x7_vla.lift import SimulatorConfig, SimulatorUnavailableError, create_simulator
    from crane_x7_vla.lift.dataset import DemoWriter, Episode
    from crane_x7_vla.lift.expert import ScriptedExpert
    from crane_x7_vla.lift.tasks import get_task

    if args.episodes < 1:
        print("crane-x7-vla expert: --episodes must be >= 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.action_noise <= 0.2:
        print(f"crane-x7-vla expert: --action-noise must be in [0, 0.2] rad, got {args.action_noise}", file=sys.stderr)
        return 2
    record = args.record is not None
    config = SimulatorConfig(
        env_id=args.env_id, backend=args.backend, max_episode_steps=args.max_steps, num_envs=1,
        render_images=record, image_size=(args.image_size, args.image_size), camera=args.camera,
    )
    try:
        task = get_task(args.env_id)
        sim = create_simulator(args.simulator, config)
    except (SimulatorUnavailableError, ValueError) as exc:
        print(f"crane-x7-vla expert: {exc}", file=sys.stderr)
        return 2
    writer = DemoWriter(args.record, args.env_id, config.camera, config.sim_rate, config.image_size) if record else None
    expert = ScriptedExpert(1, config.sim_rate)
    results = []
    start = time.perf_counter()
    try:
        for i in range(args.episodes):
            res = run_episode(sim, expert, args.seed + i, record, args.action_noise)
            if writer is not None:
                images, actions, qpos = res.pop("trajectory")
                writer.add(Episode(images, actions, qpos, task.instruction, res["success"], res["seed"]))
            results.append(res)
            if not args.json:
                print(f"episode {i}: seed {res['seed']} success {res['success']} steps {res['steps']}", flush=True)
    finally:
        sim.close()
    successes = sum(r["success"] for r in results)
    summary = {
        "simulator": args.simulator, "env_id": args.env_id, "episodes": len(results), "successes": successes,
        "success_rate": successes / len(results), "results": results, "record": args.record,
        "seconds": round(time.perf_counter() - start, 3),
    }
    print(json.dumps(summary))
    return 0
