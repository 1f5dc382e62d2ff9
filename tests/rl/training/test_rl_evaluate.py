"""Evaluation statistics (the Wilson interval), video naming, both mp4 writers read back, per-outcome videos."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crane_x7_vla_rl.rollout.collector import EpisodeResult
from crane_x7_vla_rl.training.evaluate import summarize, video_name, wilson_interval, write_video


def test_wilson_known_values() -> None:
    lo, hi = wilson_interval(8, 10)  # reference values of the Wilson score interval, z = 1.96
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_video_name_says_the_outcome() -> None:
    assert video_name(50, 3, True) == "eval_u0050_ep03_success.mp4"
    assert video_name(None, 0, False) == "eval_ep00_failure.mp4"


@pytest.mark.parametrize("writer", ["imageio-ffmpeg", "opencv"])
def test_write_video_round_trips(writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cv2 = pytest.importorskip("cv2")
    if writer == "opencv":
        monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as on a GPU image without imageio-ffmpeg
    else:
        pytest.importorskip("imageio_ffmpeg")
    frames = [np.full((48, 64, 3), (40 * i, 255 - 40 * i, 128), dtype=np.uint8) for i in range(6)]
    path = tmp_path / "v.mp4"
    write_video(path, frames, fps=5)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp file left behind
    cap = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        read.append(bgr[..., ::-1])
    assert len(read) == 6 and read[0].shape == (48, 64, 3)
    assert np.abs(read[-1].astype(int) - frames[-1]).mean() < 12  # colours survive (lossy codec), RGB order kept


def test_summary_reports_how_far_failing_episodes_got() -> None:
    results = [EpisodeResult(0, False, 0.0, 100, "i", stages={"reached"}),
               EpisodeResult(1, False, 0.0, 100, "i", stages={"reached", "is_grasped"}),
               EpisodeResult(2, True, 1.0, 70, "i", stages={"reached", "is_grasped", "lifted", "over_goal"}),
               EpisodeResult(3, False, 0.0, 100, "i")]
    s = summarize(results)
    assert s.stage_rates == {"reached": 0.75, "is_grasped": 0.5, "lifted": 0.25, "over_goal": 0.25}
    assert s.episodes[1]["stages"] == ["is_grasped", "reached"] and s.successes == 1


SEED_SIM = "rl-test-seed-outcome"
SUCCESS_SEEDS = {6, 9}  # batches of 4 envs: batch 0 (seeds 0-3) all fail, batch 1 (4-7) has the first success


def _seed_simulator() -> type:
    from numpy.typing import ArrayLike, NDArray
    from rl_bandit_sim import ScriptedSimulator

    from crane_x7_vla.lift.registry import register_simulator
    from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult

    @register_simulator(SEED_SIM)
    class SeedOutcomeSimulator(ScriptedSimulator):
        """One-step episodes that succeed exactly for SUCCESS_SEEDS; every image is filled with its env's seed."""

        def __init__(self, config: SimulatorConfig) -> None:
            super().__init__(config)
            self.seeds = np.zeros(self.num_envs, dtype=np.int64)
            self.renders = 0

        def _obs(self) -> Observation:
            h, w = self.config.image_size
            img = np.broadcast_to(self.seeds[:, None, None, None].astype(np.uint8), (self.num_envs, h, w, 3))
            z = np.zeros((self.num_envs, 8), dtype=np.float32)
            return Observation(rgb_image=img.copy(), qpos=z, qvel=z.copy())

        def render(self, camera: str = "third_person") -> NDArray[np.uint8]:
            self.renders += 1
            return self._obs().rgb_image

        def reset(self, seed: int | None = None,
                  env_idx: NDArray[np.int64] | None = None) -> tuple[Observation, dict[str, Any]]:
            idx = np.arange(self.num_envs) if env_idx is None else np.asarray(env_idx)
            self.seeds[idx] = (seed or 0) + idx
            return self._obs(), {}

        def step(self, action: ArrayLike) -> StepResult:
            success = np.isin(self.seeds, list(SUCCESS_SEEDS))
            n = self.num_envs
            return StepResult(self._obs(), success.astype(np.float32), np.ones(n, dtype=bool),
                              np.zeros(n, dtype=bool), {"success": success})

    return SeedOutcomeSimulator


def test_one_video_per_outcome_comes_from_the_evaluation_itself(rl_tiny_ckpt: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The first failure and the first success of the measured episodes keep their frames, nothing else does,
    and recording stops once both are in hand (no replay of a seed, which need not end the same way)."""
    import torch

    from crane_x7_vla.lift.types import SimulatorConfig
    from crane_x7_vla.models import load_vla
    from crane_x7_vla_rl.policy import VLAActorCritic
    from crane_x7_vla_rl.rollout.collector import RolloutCollector
    from crane_x7_vla_rl.training import evaluate
    from crane_x7_vla_rl.training.evaluate import evaluate_policy, first_per_outcome, save_videos

    sim = _seed_simulator()(SimulatorConfig(num_envs=4, image_size=(56, 56)))
    policy = VLAActorCritic(load_vla(rl_tiny_ckpt), lora_rank=4, lora_alpha=8)
    collector = RolloutCollector(sim, policy, instruction="pick", max_steps=1, temperature=0.0,
                                 device=torch.device("cpu"))
    results = evaluate_policy(collector, 12, 0, temperature=0.0, one_per_outcome=True)
    assert [r.seed for r in results] == list(range(12))
    assert [i for i, r in enumerate(results) if r.success] == [6, 9]
    assert first_per_outcome(results) == {False: 0, True: 6}
    assert [i for i, r in enumerate(results) if r.frames] == [0, 6]
    assert all(int(f[0, 0, 0]) == r.seed for r in results for f in r.frames)  # each video shows its own episode
    renders_after_two_batches = sim.renders
    assert renders_after_two_batches > 0
    # The third batch (seeds 8-11) was not recorded: the same evaluation again stops rendering after batch 1.
    sim.renders = 0
    evaluate_policy(collector, 8, 0, temperature=0.0, one_per_outcome=True)
    assert sim.renders == renders_after_two_batches
    paths = save_videos(results, tmp_path, None, fps=10.0)
    assert sorted(p.name for p in paths) == ["eval_ep00_failure.mp4", "eval_ep06_success.mp4"]
    # Recording is capped: with one batch allowed, the success of batch 1 gets no video (and no render).
    monkeypatch.setattr(evaluate, "PER_OUTCOME_BATCHES", 1)
    sim.renders = 0
    capped = evaluate_policy(collector, 12, 0, temperature=0.0, one_per_outcome=True)
    assert [i for i, r in enumerate(capped) if r.frames] == [0]
    assert 0 < sim.renders < renders_after_two_batches
