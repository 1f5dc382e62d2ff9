#!/usr/bin/env python3
"""Does the pipeline learn the real task? Expert demos -> SFT of a small VLA -> eval -> PPO -> eval -> report.

Usage::

    python scripts/learn_pick_place.py --quick all            # CPU, reduced scale
    python scripts/learn_pick_place.py all --device cuda      # GPU, full scale
    python scripts/learn_pick_place.py --quick data sft       # only some steps

Steps (each skips work already done, and each invocation of a sub-command is limited to ``--step-seconds``,
about 10 minutes, after which it is stopped at a checkpoint; run the same command again to continue; on a GPU,
``eval-sft`` runs beside ``rl`` when both are asked for):

    data      scripted expert on MuJoCo, camera images recorded   -> WORK/demos
    sft       crane-x7-vla sft --init-small (resumable)           -> WORK/sft/checkpoint_latest
    eval-sft  >= 100 fixed-seed greedy episodes (Wilson 95% CI)   -> WORK/eval_sft.json (+ videos)
    rl        PPO from the SFT checkpoint (staged reward)         -> WORK/rl/pick_place_rl/checkpoint_latest
    eval-rl   the same episodes for the RL policy                 -> WORK/eval_rl.json (+ videos)
    report    table in docs/results.md, success-vs-update PNG, one success and one failure video

Moving a run to another machine (not part of ``all``): ``export --bundle DIR [--part-mb 15]`` writes what the
steps after SFT need (no demos, no SFT optimizer state; on CUDA the SFT weights in bf16, the dtype every CUDA
step loads them in) as size-capped tar parts with a checksummed manifest; ``import --bundle DIR`` checks and
unpacks it into an empty WORK, and later steps continue from there (e.g. ``import rl eval-rl report``).

Design: this script only orchestrates the project's own commands (``crane-x7-vla expert``, ``crane-x7-vla sft``,
``python -m crane_x7_vla_rl.training.cli train|evaluate``) as subprocesses, reading their final JSON line, so what
it measures is exactly what a user runs. Every artefact is written atomically, so a killed step never leaves a
half-written file and "done" is simply "the output exists".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crane_x7_vla.utils.atomic import atomic_path, write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
STEPS = ("data", "sft", "eval-sft", "rl", "eval-rl", "report")
ORDER = ("import", *STEPS, "export")  # every step in the order they run; `all` is STEPS
EVAL_SEED = 100_000  # evaluation seeds never overlap the demo seeds (0..) or the RL trainer's eval seeds (10000..)
RL_NAME = "pick_place_rl"
BEGIN, END = "<!-- learn_pick_place:begin -->", "<!-- learn_pick_place:end -->"


@dataclass(frozen=True)
class Scale:
    demos: int  # expert episodes recorded
    preset: str  # --init-small preset
    sft_steps: int
    batch_size: int
    lr: float
    eval_episodes: int
    eval_envs: int  # parallel envs during evaluation
    rl_updates: int
    rl_envs: int
    rl_rollouts: int  # episodes per update
    rl_lr: float
    max_steps: int  # episode horizon (the expert needs ~60 steps)
    action_noise: float = 0.005  # DART noise (rad) on the expert's executed arm targets while recording
    camera: str = "wrist"  # the camera of the demos, the RL rollouts and the evaluations ("third_person" too)
    workers: int = 1  # simulator processes: RL rollouts and evaluations (1 = in-process)
    # expert recording processes, 0 = one per CPU core: nothing else runs then, and the recording is the same for
    # any count (episodes are functions of their seeds, written in seed order)
    data_workers: int = 0
    engine: str = "auto"  # rollout.engine of RL and evaluation: the CUDA-graph engine on CUDA (auto), on, off
    # PPO passes over each rollout and the KL stop (of the whole 8-token action, a sum over tokens). ppo.target_kl's
    # default 0.02 stopped every update of the session-5 run inside its first epoch: part of each rollout unused.
    rl_epochs: int = 2
    rl_target_kl: float = 0.05


QUICK = Scale(demos=40, preset="small-cpu", sft_steps=400, batch_size=16, lr=3e-4, eval_episodes=100, eval_envs=10,
              rl_updates=4, rl_envs=2, rl_rollouts=2, rl_lr=1e-4, max_steps=100, camera="third_person", workers=1)
# Full scale: the third-person camera sees the arm and the cube at once (a wrist view cannot tell where the arm is,
# and absolute joint targets need that); the RL update count is a ceiling, a run stops at its time budget.
FULL = Scale(demos=800, preset="small", sft_steps=6000, batch_size=128, lr=3e-4, eval_episodes=500, eval_envs=25,
             rl_updates=300, rl_envs=32, rl_rollouts=32, rl_lr=1e-4, max_steps=100, camera="third_person",
             workers=8)  # 16-core host


class StepIncomplete(RuntimeError):
    """A sub-command hit the per-invocation time limit; its progress is checkpointed."""


def run(cmd: list[str], timeout: float, log_path: Path) -> dict[str, Any]:
    """Run one project command; its stderr goes to ``log_path``; returns its last-line JSON."""
    print("$", " ".join(cmd), flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as err:
        try:
            proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise StepIncomplete(f"stopped after {timeout:.0f} s (progress is checkpointed); run the same command "
                                 "again to continue") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} ... exited {proc.returncode}; see {log_path}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return result


class Workflow:
    def __init__(self, work: Path, scale: Scale, device: str, step_seconds: float, docs: Path,
                 bundle: Path | None = None, part_mb: float = 0.0) -> None:
        self.work, self.scale, self.device, self.step_seconds, self.docs = work, scale, device, step_seconds, docs
        self.bundle, self.part_mb = bundle, part_mb
        self.py = sys.executable
        self.cli = [self.py, "-m", "crane_x7_vla.cli"]
        self.rl_cli = [self.py, "-m", "crane_x7_vla_rl.training.cli"]
        self.logs = work / "logs"

    # ------------------------------------------------------------------ steps
    def data(self) -> None:
        if self._sft_done():  # e.g. an imported run: the demos were only ever needed to train the SFT policy
            print("data: not needed, the SFT has finished")
            return
        demos = self.work / "demos"
        have = len(json.loads((demos / "meta.json").read_text())["episodes"]) if (demos / "meta.json").is_file() else 0
        if have >= self.scale.demos:
            print(f"data: {have} episodes already in {demos}")
            return
        # Recording appends: continue at the next seed so every episode is distinct.
        out = run([*self.cli, "expert", "--simulator", "mujoco", "--episodes", str(self.scale.demos - have),
                   "--seed", str(have), "--record", str(demos), "--action-noise", str(self.scale.action_noise),
                   "--camera", self.scale.camera, "--workers", str(self.data_workers()), "--json"], self.step_seconds,
                  self.logs / "data.log")
        print(f"data: {out['successes']}/{out['episodes']} expert successes in {out['seconds']} s (only successful "
              "episodes are trained on)")

    def data_workers(self) -> int:
        return self.scale.data_workers or (os.cpu_count() or 1)

    def _sft_done(self) -> bool:
        return (checkpoint_progress(self.work / "sft" / "checkpoint_latest") or 0) >= self.scale.sft_steps

    def sft(self) -> None:
        run_dir = self.work / "sft"
        step = checkpoint_progress(run_dir / "checkpoint_latest")
        if self._sft_done():
            print(f"sft: done ({run_dir / 'checkpoint_latest'})")
            return
        budget = ["--max-seconds", str(max(self.step_seconds - 60, 30))]  # leave time to load and save
        if step is not None:
            cmd = [*self.cli, "sft", "--resume", str(run_dir), "--steps", str(self.scale.sft_steps), *budget]
        else:
            cmd = [*self.cli, "sft", "--demos", str(self.work / "demos"), "--init-small", self.scale.preset,
                   "--output", str(run_dir), "--steps", str(self.scale.sft_steps), "--batch-size",
                   str(self.scale.batch_size), "--lr", str(self.scale.lr), "--device", self.device, *budget]
        out = run(cmd, self.step_seconds + 120, self.logs / "sft.log")
        print(f"sft: step {out['step']}/{out['steps']} loss {out['loss']:.4f} ({out['seconds']} s)")
        if not out["done"]:
            raise StepIncomplete("sft stopped at its time budget; run the same command again to continue")

    def _evaluate(self, name: str, checkpoint: Path) -> None:
        target = self.work / f"{name}.json"
        progress = checkpoint_progress(checkpoint)
        if target.is_file():
            scored = json.loads(target.read_text()).get("checkpoint_progress")
            if scored == progress:
                print(f"{name}: done ({target})")
                return
            # e.g. `rl` ran on after the last `eval-rl`: the old result describes an earlier policy
            print(f"{name}: {target} scored the checkpoint at {scored}, it is now at {progress}: evaluating again")
        # The videos are the evaluation's own first success and first failure: a batch-1 replay of a seed runs
        # other bf16 kernels on a GPU and need not end the same way (session 6's "success" replay failed).
        videos = self.work / f"{name}_videos"
        shutil.rmtree(videos, ignore_errors=True)  # an earlier evaluation's videos describe an earlier policy
        out = run([*self._evaluate_cmd(checkpoint), "--video-per-outcome", "--video-dir", str(videos)],
                  self.step_seconds, self.logs / f"{name}.log")
        out["checkpoint"] = str(checkpoint)
        out["checkpoint_progress"] = progress
        out["videos"] = {outcome: path for path in out.get("videos", []) for outcome in ("success", "failure")
                         if Path(path).stem.endswith(outcome)}
        write_json_atomic(target, out)
        print(f"{name}: success {out['successes']}/{out['num_episodes']} = {out['success_rate']:.3f} "
              f"(95% CI {out['ci95_low']:.3f}-{out['ci95_high']:.3f})")

    def _evaluate_cmd(self, checkpoint: Path) -> list[str]:
        """The one evaluation of this workflow: MuJoCo, the scale's camera, greedy, fixed seeds from EVAL_SEED."""
        s = self.scale
        return [*self.rl_cli, "evaluate", "--checkpoint", str(checkpoint), "--simulator", "mujoco", "--camera",
                s.camera, "--backend", "cpu", "--num-episodes", str(s.eval_episodes), "--seed", str(EVAL_SEED),
                "--num-parallel-envs", str(s.eval_envs), "--sim-workers", str(s.workers), "--engine", s.engine,
                "--device", self.device]

    def eval_sft(self) -> None:
        self._evaluate("eval_sft", self.work / "sft" / "checkpoint_latest")

    def rl(self) -> None:
        out_dir = self.work / "rl"
        latest = out_dir / RL_NAME / "checkpoint_latest"
        if (checkpoint_progress(latest) or 0) >= self.scale.rl_updates:
            print(f"rl: done ({latest})")
            return
        s = self.scale
        config = self.work / "rl_config.yaml"
        if not config.is_file():
            with atomic_path(config) as tmp:
                tmp.write_text(rl_yaml(s, self.device))
        # The trainer stops itself at an update boundary, the checkpoint and the simulator processes closed; the
        # timeout is only the backstop (a killed trainer leaves its workers' shared memory behind).
        cmd = [*self.rl_cli, "train", "--config", str(config), "--output-dir", str(out_dir),
               "--experiment-name", RL_NAME, "--num-updates", str(s.rl_updates),
               "--max-seconds", str(max(self.step_seconds - 30, 30))]
        cmd += ["--resume", str(latest)] if latest.is_dir() else ["--sft-checkpoint", str(self.work / "sft" /
                                                                                      "checkpoint_latest")]
        out = run(cmd, self.step_seconds, self.logs / "rl.log")
        print(f"rl: {json.dumps({k: out.get(k) for k in ('run_dir', 'updates', 'best_success')})}")
        if out.get("out_of_time"):
            raise StepIncomplete(f"rl stopped at its time budget after update {out['updates']} of "
                                 f"{s.rl_updates}; run the same command again to continue")

    def eval_rl(self) -> None:
        self._evaluate("eval_rl", self.work / "rl" / RL_NAME / "checkpoint_latest")

    def export_bundle(self) -> None:
        from crane_x7_vla.utils.bundle import write_bundle

        if self.bundle is None:
            raise ValueError("export: name the bundle directory to write with --bundle DIR")
        sft = self.work / "sft" / "checkpoint_latest"
        if not self._sft_done():
            raise RuntimeError(f"export: the SFT in {sft} has not finished (step {checkpoint_progress(sft)} of "
                               f"{self.scale.sft_steps}); run `sft` first: an unfinished SFT would need its "
                               "optimizer state, several times the model's size, to resume")
        from crane_x7_vla_rl.sft.trainer import STATE_PT

        files = {f"sft/checkpoint_latest/{f.name}": f for f in sft.iterdir() if f.is_file() and f.name != STATE_PT}
        for rel in ("rl_config.yaml", "eval_sft.json", "eval_rl.json", "sft/metrics.jsonl",
                    f"rl/{RL_NAME}/metrics.jsonl"):
            if (self.work / rel).is_file():
                files[rel] = self.work / rel
        for rel in (f"rl/{RL_NAME}/checkpoint_latest", "eval_sft_videos", "eval_rl_videos", "logs"):
            files.update({str(f.relative_to(self.work)): f for f in sorted((self.work / rel).rglob("*")) if f.is_file()})
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            dtype = "as trained"
            if self.device != "cpu":  # every CUDA step loads the SFT weights in bf16 (TrainConfig.bf16)
                files.update({f"sft/checkpoint_latest/{f.name}": f for f in bf16_copy(sft, Path(tmp))})
                dtype = "bfloat16"
            part = int(self.part_mb * 2**20) if self.part_mb > 0 else 2**62
            manifest = write_bundle(self.bundle, files, part_bytes=part, metadata={
                "work": str(self.work), "sft_step": checkpoint_progress(sft), "sft_weights": dtype,
                "rl_update": checkpoint_progress(self.work / "rl" / RL_NAME / "checkpoint_latest"),
                "scale": asdict(self.scale), "device": self.device})
        size = sum(p["bytes"] for p in manifest["parts"]) / 2**20
        print(f"export: {len(files)} files, {size:.1f} MiB in {len(manifest['parts'])} part(s) -> {self.bundle}")

    def import_bundle(self) -> None:
        from crane_x7_vla.utils.bundle import read_bundle, read_manifest

        if self.bundle is None:
            raise ValueError("import: name the bundle directory to read with --bundle DIR")
        if self.work.exists() and any(self.work.iterdir()):
            raise RuntimeError(f"import: {self.work} is not empty; import into a new --work directory (or remove "
                               "this one)")
        old = str(read_manifest(self.bundle)["metadata"].get("work", ""))
        if self.work.exists():
            self.work.rmdir()
        manifest = read_bundle(self.bundle, self.work)
        if old and old != str(self.work):  # the run's configs and results name files under the old WORK
            for f in [*self.work.rglob("*.json"), *self.work.rglob("*.yaml")]:
                text = f.read_text()
                if old + os.sep in text:
                    write_text_atomic(f, text.replace(old + os.sep, str(self.work) + os.sep))
        meta = manifest["metadata"]
        print(f"import: SFT step {meta.get('sft_step')}, RL update {meta.get('rl_update')} -> {self.work}")

    def report(self) -> None:
        rows = []
        for name, label in (("eval_sft", "SFT (small VLA from scratch)"), ("eval_rl", "SFT + PPO")):
            f = self.work / f"{name}.json"
            if f.is_file():
                rows.append((label, json.loads(f.read_text())))
        if not rows:
            raise RuntimeError("report: no evaluation yet; run eval-sft (and eval-rl) first")
        assets = self.docs / "results"
        assets.mkdir(parents=True, exist_ok=True)
        plot = assets / "success_vs_update.png"
        metrics = self.work / "rl" / RL_NAME / "metrics.jsonl"
        copied = []
        for label, r in rows:
            videos = r.get("videos", {})
            for outcome in ("success", "failure"):
                dst = assets / f"{'rl' if 'PPO' in label else 'sft'}_{outcome}.mp4"
                if outcome not in videos:  # an earlier run's video must not stand beside this run's table
                    dst.unlink(missing_ok=True)
                    continue
                with atomic_path(dst, suffix=".mp4") as tmp:
                    shutil.copyfile(videos[outcome], tmp)
                copied.append(dst.name)
        sft_step = checkpoint_progress(self.work / "sft" / "checkpoint_latest")
        if sft_step is None:
            raise FileNotFoundError(f"report: no SFT checkpoint in {self.work / 'sft'}; run the sft step first")
        updates = max((json.loads(line).get("update", 0) for line in metrics.read_text().splitlines() if line.strip()),
                      default=0) if metrics.is_file() else 0
        plot_success(metrics, [(label, int(r.get("checkpoint_progress") or 0) if "PPO" in label else 0, r)
                               for label, r in rows], plot)
        table = [f"Scale: `{json.dumps(asdict(self.scale))}`, device `{self.device}`, SFT steps "
                 f"{sft_step}, PPO updates done {updates}, measured {time.strftime('%Y-%m-%d')}.", "",
                 "Greedy evaluation, binary success; the stage columns say how far episodes got (any step).", "",
                 "| policy | success | 95% CI (Wilson) | episodes | reached cube | grasped | lifted |",
                 "|---|---|---|---|---|---|---|"]
        for label, r in rows:
            st = r.get("stage_rates", {})
            table.append(f"| {label} | {r['successes']}/{r['num_episodes']} = {r['success_rate']:.3f} | "
                         f"{r['ci95_low']:.3f} - {r['ci95_high']:.3f} | {r['num_episodes']} | "
                         f"{st.get('reached', 0.0):.3f} | {st.get('is_grasped', 0.0):.3f} | {st.get('lifted', 0.0):.3f} |")
        table += ["", f"![success vs update](results/{plot.name})", ""]
        table += [f"- video: [results/{name}](results/{name})" for name in copied]
        update_section(self.docs / "results.md", "\n".join(table))
        print(f"report: wrote {self.docs / 'results.md'} and {plot}")


def checkpoint_progress(checkpoint: Path) -> int | None:
    """How far the run behind a checkpoint had got: the PPO update of an RL checkpoint, the step of an SFT one."""
    for name, key in (("trainer_state.json", "update"), ("sft_state.json", "step")):
        if (checkpoint / name).is_file():
            value = json.loads((checkpoint / name).read_text()).get(key)
            return int(value) if value is not None else None
    return None


def bf16_copy(checkpoint: Path, out: Path) -> list[Path]:
    """The checkpoint's safetensors files and config.json with floating-point weights cast to bf16, in ``out``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    written = []
    for f in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            metadata = fh.metadata()
        tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
        save_file(tensors, str(out / f.name), metadata=metadata)
        written.append(out / f.name)
    config = json.loads((checkpoint / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return [*written, out / "config.json"]


def rl_yaml(s: Scale, device: str) -> str:
    cfg = {
        "device": device, "num_updates": s.rl_updates, "log_interval": 1, "eval_interval": max(1, s.rl_updates // 4),
        "save_interval": 1, "num_eval_episodes": max(4, s.eval_envs), "save_eval_videos": False,
        "rollout": {"simulator": "mujoco", "backend": "cpu", "num_parallel_envs": s.rl_envs,
                    "num_rollouts_per_update": s.rl_rollouts, "max_steps": s.max_steps, "reward_mode": "staged",
                    "camera": s.camera, "sim_workers": s.workers, "engine": s.engine},
        "ppo": {"learning_rate": s.rl_lr, "minibatch_size": max(64, s.rl_rollouts * 4), "num_epochs": s.rl_epochs,
                "target_kl": s.rl_target_kl},
    }
    return json.dumps(cfg, indent=2) + "\n"  # JSON is valid YAML


def plot_success(metrics: Path, evals: list[tuple[str, int, dict[str, Any]]], out: Path) -> None:
    """Rollout success per PPO update (and its 10-update mean) with the greedy evaluations ``(label, update,
    result)`` drawn as points with their Wilson 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    train = [(r["update"], r["charts/success_rate"]) for r in rows if "charts/success_rate" in r and "update" in r]
    if train:
        ax.plot(*zip(*train, strict=True), marker=".", color="tab:blue", alpha=0.35, label="PPO rollouts (sampled)")
        window = 10
        rates = np.array([v for _, v in train])
        if len(rates) >= window:
            mean = np.convolve(rates, np.ones(window) / window, mode="valid")
            ax.plot([u for u, _ in train][window - 1:], mean, color="tab:blue", label=f"rollouts, {window}-update mean")
    in_training = [(r["update"], r["eval/success_rate"]) for r in rows if "eval/success_rate" in r and "update" in r]
    if in_training:
        ax.plot(*zip(*in_training, strict=True), "o", color="tab:green", label="PPO eval in training (greedy)")
    for (label, update, r), color in zip(evals, ("tab:gray", "tab:red"), strict=False):
        rate = r["success_rate"]
        err = [[rate - r["ci95_low"]], [r["ci95_high"] - rate]]
        ax.errorbar([update], [rate], yerr=err, fmt="s", color=color, capsize=4,
                    label=f"{label}: {r['successes']}/{r['num_episodes']} (95% CI)")
    ax.set(xlabel="PPO update", ylabel="success rate", ylim=(-0.02, 1.02), title="PickPlace-CRANE-X7 (MuJoCo)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def update_section(path: Path, body: str) -> None:
    """Replace the text between the markers of ``path`` (append the markers when missing)."""
    text = path.read_text() if path.is_file() else "# Results\n"
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("steps", nargs="+", choices=(*ORDER, "all"), help="steps to run, in order")
    p.add_argument("--quick", action="store_true", help="reduced CPU scale (default: full GPU scale)")
    p.add_argument("--work", type=Path, default=None, help="working directory (default outputs/learn_pick_place[_quick])")
    p.add_argument("--device", default=None, help="torch device (default cpu with --quick, else cuda)")
    p.add_argument("--step-seconds", type=float, default=600.0, help="time limit of one sub-command (default 600)")
    p.add_argument("--docs", type=Path, default=REPO / "docs", help="where results.md and results/ go")
    p.add_argument("--bundle", type=Path, default=None, help="the bundle directory of the export / import steps")
    p.add_argument("--part-mb", type=float, default=0.0, help="export: at most this many MiB per part (0: one)")
    for field in Scale.__dataclass_fields__:  # every scale value can be overridden, e.g. --sft-steps 100
        kind: type = str if field in ("preset", "camera", "engine") else float if field.endswith(("lr", "noise", "kl")) else int
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, default=None, help="override the scale's value")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    scale = Scale(**{k: getattr(args, k) if getattr(args, k) is not None else v for k, v in asdict(base).items()})
    work = args.work or REPO / "outputs" / ("learn_pick_place_quick" if args.quick else "learn_pick_place")
    device = args.device or ("cpu" if args.quick else "cuda")
    flow = Workflow(work, scale, device, args.step_seconds, args.docs, args.bundle, args.part_mb)
    steps = STEPS if "all" in args.steps else tuple(s for s in ORDER if s in args.steps)
    # On a GPU the SFT evaluation runs beside the RL step (both only read the SFT checkpoint; the GPU and the
    # simulator processes have room for both), which saves its ~2 minutes of a ~10-minute call.
    beside = device != "cpu" and {"eval-sft", "rl"} <= set(steps)
    with ThreadPoolExecutor(max_workers=1) as pool:
        background: Future[int] | None = None
        for step in steps:
            if beside and step == "eval-sft":
                background = pool.submit(run_step, flow, step)
                continue
            code = run_step(flow, step)
            if step == "rl" and background is not None:
                evaluated = background.result()  # the evaluation finishes whatever RL did
                code, background = code or evaluated, None
            if code:
                return code
    return 0


def run_step(flow: Workflow, step: str) -> int:
    """Run one step; 0 when done, 3 when stopped at its time budget (rerun to continue), 1 on an error."""
    t0 = time.perf_counter()
    try:
        getattr(flow, {"import": "import_bundle", "export": "export_bundle"}.get(step, step.replace("-", "_")))()
    except StepIncomplete as exc:
        print(f"{step}: {exc}", file=sys.stderr)
        return 3
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"{step}: {exc}", file=sys.stderr)
        return 1
    print(f"[{step}] {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
