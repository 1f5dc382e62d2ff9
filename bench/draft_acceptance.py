"""How often does the robot's previous action draft its next action tokens? (scripted expert, MuJoCo Lift)

    python bench/draft_acceptance.py [--episodes 20] [--seed 0] [--sim-rate 30] [--max-steps 200] [--all-episodes]

``OpenVLAEngine.generate(draft=...)`` drafts one robot's D action tokens with the tokens of its previous control
step. The prefill verifies the draft: it gets token k right for free when the draft's tokens 0..k-1 are the
greedy ones, i.e. ``min(L + 1, D)`` tokens where L is the number of leading dimensions (dimension 0 first, the
model's token order) whose token equals the previous step's; Jacobi verify passes handle the rest.

This rolls out the scripted expert (:class:`crane_x7_vla.lift.expert.ScriptedExpert`, stepped by the
``crane-x7-vla expert`` CLI's own ``run_episode``) in the MuJoCo Lift env, state only, at the Lift control rate
(``SimulatorConfig.sim_rate``, the fps the SFT demos are recorded at). Its actions are turned into tokens
exactly as SFT does (``crane_x7_vla_rl.sft.dataset``): 8 absolute joint targets (7 arm + gripper finger, rad),
BOUNDS_Q99 normalisation with q01/q99 computed over the successful episodes' steps, OpenVLA's 256-bin
``ActionTokenizer``. Over every consecutive step pair within an episode it prints one JSON object: per dimension
the fraction of unchanged tokens and the mean / p90 of |token delta|, the histogram of L (0..D), the predicted
free tokens ``min(L + 1, D)``, and the same split by moving steps (some arm token changes by more than one
bin) vs holding steps.

Limits: the expert is a perfect imitation policy at that control rate (smooth, noise-free targets); a trained
model's greedy tokens jitter more, so real acceptance should be lower. The first step of an episode (whose draft
would be the previous episode's last action) is left out, and the Jacobi passes after the prefill are not
modelled.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crane_x7_vla import robot
from crane_x7_vla.lift import SimulatorConfig, create_simulator
from crane_x7_vla.lift.expert import ScriptedExpert
from crane_x7_vla.lift.expert_cli import run_episode
from crane_x7_vla.models.action_tokenizer import ActionTokenizer
from crane_x7_vla.models.normalization import ActionStats
from crane_x7_vla_rl.sft.dataset import DEFAULT_UNNORM_KEY, action_token_ids, dataset_statistics

VOCAB_SIZE = 32000  # OpenVLA's unpadded Llama-2 vocabulary (token equality does not depend on it)
DIM_LABELS = [j.label for j in robot.ALL_JOINTS[: robot.ACTION_DIM]]  # J1..J7, gripper (the token order)
I64 = NDArray[np.int64]


def rollout(config: SimulatorConfig, episodes: int, seed: int) -> list[dict[str, Any]]:
    """Expert episodes (seeds seed .. seed + episodes - 1): {"seed", "success", "steps", "actions", "qpos"} each."""
    sim = create_simulator("mujoco", config)
    expert = ScriptedExpert(1, config.sim_rate)
    out = []
    try:
        for s in range(seed, seed + episodes):
            res = run_episode(sim, expert, s, record=True)
            _, actions, qpos = res.pop("trajectory")  # (T, 8) each, as the demo recorder stores them
            out.append({**res, "actions": actions, "qpos": qpos})
    finally:
        sim.close()
    return out


def leading_match_length(equal: NDArray[np.bool_]) -> I64:
    """(N, D) per-dimension equality -> (N,) number of leading True, dimension 0 first."""
    return np.cumprod(equal, axis=1).sum(axis=1).astype(np.int64)


def pair_stats(prev: I64, cur: I64) -> dict[str, Any]:
    """Draft statistics of (N, D) token pairs: the previous step's tokens as the draft of the current ones."""
    n, d = cur.shape
    if n == 0:
        return {"pairs": 0}
    delta = np.abs(cur - prev)
    lead = leading_match_length(delta == 0)
    free = np.minimum(lead + 1, d)
    return {
        "pairs": int(n),
        "match_fraction": np.round((delta == 0).mean(0), 4).tolist(),
        "mean_abs_delta": np.round(delta.mean(0), 3).tolist(),
        "p90_abs_delta": np.percentile(delta, 90, axis=0).tolist(),
        "leading_match_hist": np.bincount(lead, minlength=d + 1).tolist(),  # index L = 0..D
        "free_tokens_hist": np.bincount(free, minlength=d + 1)[1:].tolist(),  # index k-1 for k = 1..D free
        "mean_free_tokens": round(float(free.mean()), 3),
        "fraction_free_gt1": round(float((free > 1).mean()), 4),
        "fraction_all_free": round(float((free == d).mean()), 4),
    }


def draft_report(tokens: list[I64], arm_dims: int = robot.NUM_ARM_JOINTS) -> dict[str, Any]:
    """All / moving / holding statistics over consecutive steps within each episode's (T, D) tokens."""
    prev = np.concatenate([t[:-1] for t in tokens])
    cur = np.concatenate([t[1:] for t in tokens])
    moving = (np.abs(cur - prev)[:, :arm_dims] > 1).any(axis=1)
    return {
        "all": pair_stats(prev, cur),
        "moving_fraction": round(float(moving.mean()), 4),
        "moving": pair_stats(prev[moving], cur[moving]),
        "holding": pair_stats(prev[~moving], cur[~moving]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default 0)")
    parser.add_argument("--sim-rate", type=float, default=SimulatorConfig.sim_rate,
                        help=f"control ticks per second (default {SimulatorConfig.sim_rate:g}, the Lift envs' rate)")
    parser.add_argument("--max-steps", type=int, default=200, help="episode horizon (default 200, the expert CLI's)")
    parser.add_argument("--all-episodes", action="store_true",
                        help="use failed episodes too (default: successful only, as SFT does)")
    args = parser.parse_args()
    start = time.perf_counter()
    config = SimulatorConfig(sim_rate=args.sim_rate, max_episode_steps=args.max_steps, render_images=False)
    results = rollout(config, args.episodes, args.seed)
    used = [r for r in results if r["success"] or args.all_episodes]
    if not used:
        raise SystemExit("no successful episode to measure; pass --all-episodes or more --episodes")
    actions = [r["actions"] for r in used]
    stats = dataset_statistics(np.concatenate(actions), np.concatenate([r["qpos"] for r in used]), len(used))
    action_stats = ActionStats.from_stats(stats[DEFAULT_UNNORM_KEY])
    tokenizer = ActionTokenizer(VOCAB_SIZE)
    tokens = [action_token_ids(a, action_stats, tokenizer) for a in actions]
    report = {
        "simulator": "mujoco",
        "sim": {"env_id": config.env_id, "sim_rate_hz": config.sim_rate, "control_mode": config.control_mode,
                "max_episode_steps": config.max_episode_steps, "robot_init_qpos_noise": config.robot_init_qpos_noise,
                "render_images": config.render_images},
        "seed": args.seed,
        "episodes": len(results),
        "successes": sum(r["success"] for r in results),
        "episodes_used": len(used),
        "steps": int(sum(len(a) for a in actions)),
        "action_dim": int(action_stats.dim),
        "dims": DIM_LABELS,
        "q01": np.round(action_stats.q01, 4).tolist(),
        "q99": np.round(action_stats.q99, 4).tolist(),
        "bin_width_rad": np.round((action_stats.q99 - action_stats.q01) / (tokenizer.n_bins - 1), 5).tolist(),
        **draft_report(tokens),
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
