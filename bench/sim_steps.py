"""Simulator throughput: control steps per second of a Lift backend, state-only and with a camera image.

    python bench/sim_steps.py --simulator mujoco [--num-envs 1] [--steps 300] [--image-size 224] [--workers 0]

Prints one JSON object: {"simulator", "num_envs", "workers", "sim_rate", "results": [{"render_images",
"image_size", "steps_per_s", "env_steps_per_s", "ms_per_step"}, ...]}. Actions are small random walks around
the rest pose (a realistic PD load), the same for every backend. ``--workers N`` (N > 1) steps the envs in N
processes (``create_simulator(..., workers=N)``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.lift import SimulatorConfig, create_simulator


def measure(simulator: str, config: SimulatorConfig, steps: int, seed: int = 0,
            workers: int = 0) -> dict[str, object]:
    sim = create_simulator(simulator, config, workers=workers)
    try:
        sim.reset(seed=seed)
        rng = np.random.default_rng(seed)
        rest = np.asarray(robot.REST_QPOS)
        actions = np.clip(rest + rng.normal(0.0, 0.05, size=(steps, config.num_envs, 8)),
                          robot.ACTION_LOWER, robot.ACTION_UPPER)
        for a in actions[:10]:  # warm-up (renderer contexts, caches)
            sim.step(a)
        start = time.perf_counter()
        for a in actions:
            sim.step(a)
        elapsed = time.perf_counter() - start
    finally:
        sim.close()
    return {
        "render_images": config.render_images,
        "image_size": list(config.image_size) if config.render_images else None,
        "steps_per_s": round(steps / elapsed, 1),
        "env_steps_per_s": round(steps * config.num_envs / elapsed, 1),
        "ms_per_step": round(1000 * elapsed / steps, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulator", default="mujoco")
    parser.add_argument("--backend", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=0, help="simulator processes (default 0: in this one)")
    args = parser.parse_args()
    results = []
    for render in (False, True):
        config = SimulatorConfig(backend=args.backend, num_envs=args.num_envs, render_images=render,
                                 image_size=(args.image_size, args.image_size), max_episode_steps=10**6)
        results.append(measure(args.simulator, config, args.steps, workers=args.workers))
    print(json.dumps({"simulator": args.simulator, "backend": args.backend, "num_envs": args.num_envs,
                      "workers": args.workers,
                      "sim_rate": SimulatorConfig().sim_rate, "results": results}))


if __name__ == "__main__":
    main()
