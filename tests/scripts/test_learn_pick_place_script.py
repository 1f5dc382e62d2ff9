"""Step scheduling and bookkeeping of scripts/learn_pick_place.py (steps or commands stubbed: the commands themselves are
tested elsewhere)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "learn_pick_place.py"


@pytest.fixture()
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("learn_pick_place_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _stub(script: ModuleType, rl_code: int) -> tuple[list[str], threading.Event]:
    """eval-sft only finishes once rl has started: run one after the other, the stub reports a failure."""
    order: list[str] = []
    rl_started = threading.Event()

    def run_step(flow: object, step: str) -> int:
        order.append(step)
        if step == "rl":
            rl_started.set()
            return rl_code
        if step == "eval-sft":
            return 0 if rl_started.wait(timeout=5) else 1
        return 0

    script.run_step = run_step
    return order, rl_started


def test_sft_evaluation_runs_beside_rl_on_a_gpu(script: ModuleType, tmp_path: Path) -> None:
    order, _ = _stub(script, rl_code=0)
    assert script.main(["sft", "eval-sft", "rl", "eval-rl", "--work", str(tmp_path), "--device", "cuda"]) == 0
    assert order[0] == "sft" and set(order[1:3]) == {"eval-sft", "rl"} and order[3] == "eval-rl"


def test_rl_stopped_at_its_budget_still_waits_for_the_evaluation(script: ModuleType, tmp_path: Path) -> None:
    order, _ = _stub(script, rl_code=3)
    assert script.main(["eval-sft", "rl", "eval-rl", "--work", str(tmp_path), "--device", "cuda"]) == 3
    assert sorted(order) == ["eval-sft", "rl"]  # eval-rl is not run after an unfinished rl


def test_on_cpu_the_steps_run_in_order(script: ModuleType, tmp_path: Path) -> None:
    order, rl_started = _stub(script, rl_code=0)
    rl_started.set()  # in series eval-sft comes first; let it pass
    assert script.main(["eval-sft", "rl", "--work", str(tmp_path), "--device", "cpu", "--quick"]) == 0
    assert order == ["eval-sft", "rl"]


def _fake_eval(script: ModuleType, calls: list[list[str]]) -> None:
    def run(cmd: list[str], timeout: float, log_path: Path) -> dict[str, object]:
        calls.append(cmd)
        video_dir = Path(cmd[cmd.index("--video-dir") + 1])
        return {"successes": 1, "num_episodes": 2, "success_rate": 0.5, "ci95_low": 0.1, "ci95_high": 0.9,
                "episodes": [], "videos": [str(video_dir / "eval_ep00_failure.mp4"),
                                           str(video_dir / "eval_ep01_success.mp4")]}

    script.run = run


def test_an_evaluation_is_redone_once_its_checkpoint_has_moved_on(script: ModuleType, tmp_path: Path) -> None:
    latest = tmp_path / "rl" / script.RL_NAME / "checkpoint_latest"
    latest.mkdir(parents=True)
    (latest / "trainer_state.json").write_text('{"update": 40}')
    calls: list[list[str]] = []
    _fake_eval(script, calls)
    flow = script.Workflow(tmp_path, script.QUICK, "cpu", 60.0, tmp_path / "docs")
    flow.eval_rl()
    assert len(calls) == 1 and "--video-per-outcome" in calls[0]  # videos of the measured episodes, no replay
    result = json.loads((tmp_path / "eval_rl.json").read_text())
    assert result["checkpoint_progress"] == 40
    assert {k: Path(v).name for k, v in result["videos"].items()} == {"failure": "eval_ep00_failure.mp4",
                                                                      "success": "eval_ep01_success.mp4"}
    flow.eval_rl()  # same checkpoint: done
    assert len(calls) == 1
    (latest / "trainer_state.json").write_text('{"update": 73}')  # `rl` ran on
    flow.eval_rl()
    assert len(calls) == 2
    assert json.loads((tmp_path / "eval_rl.json").read_text())["checkpoint_progress"] == 73


def test_the_plot_shows_rollouts_and_both_evaluations(script: ModuleType, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"update": u, "charts/success_rate": (u % 4) / 8}) + "\n"
                               for u in range(1, 31)))
    result = {"success_rate": 0.1, "ci95_low": 0.05, "ci95_high": 0.2, "successes": 10, "num_episodes": 100}
    out = tmp_path / "plot.png"
    script.plot_success(metrics, [("SFT", 0, result), ("SFT + PPO", 30, {**result, "success_rate": 0.15})], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_the_expert_records_with_one_process_per_core_unless_told(script: ModuleType, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(cmd: list[str], timeout: float, log_path: Path) -> dict[str, object]:
        calls.append(cmd)
        return {"successes": 1, "episodes": 1, "seconds": 0.1}

    script.run = run
    script.Workflow(tmp_path, script.FULL, "cuda", 60.0, tmp_path / "docs").data()
    assert calls[-1][calls[-1].index("--workers") + 1] == str(os.cpu_count() or 1)
    told = script.Scale(**{**script.asdict(script.FULL), "data_workers": 3})
    script.Workflow(tmp_path / "b", told, "cuda", 60.0, tmp_path / "docs").data()
    assert calls[-1][calls[-1].index("--workers") + 1] == "3"


def test_a_run_moves_to_another_machine_as_a_checked_bundle(script: ModuleType, tmp_path: Path) -> None:
    """export -> import into another WORK: no SFT optimizer state, bf16 weights equal to the cast originals,
    every absolute path moved to the new WORK, and later steps see the run as done as far as it got."""
    import torch
    from safetensors.torch import load_file

    from crane_x7_vla.models.tiny import make_tiny_checkpoint

    old, new = tmp_path / "machine_a" / "work", tmp_path / "machine_b" / "work"
    sft = old / "sft" / "checkpoint_latest"
    make_tiny_checkpoint(sft, action_dim=8, seed=0, image_size=56)
    steps = script.QUICK.sft_steps
    (sft / "sft_state.json").write_text(json.dumps({"step": steps}))
    (sft / "sft_state.pt").write_bytes(b"optimizer state: stays behind")
    rl = old / "rl" / script.RL_NAME / "checkpoint_latest"
    rl.mkdir(parents=True)
    (rl / "trainer_state.json").write_text('{"update": 28}')
    (rl / "config.yaml").write_text(f"pretrained_checkpoint: {sft}\n")
    (old / "eval_sft.json").write_text(json.dumps({"checkpoint": str(sft), "videos": {}}))

    bundle = tmp_path / "bundle"
    a = script.Workflow(old, script.QUICK, "cuda", 60.0, tmp_path / "docs", bundle, part_mb=0.25)
    a.export_bundle()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(manifest["parts"]) > 1 and manifest["metadata"]["rl_update"] == 28

    b = script.Workflow(new, script.QUICK, "cuda", 60.0, tmp_path / "docs", bundle)
    b.import_bundle()
    moved = new / "sft" / "checkpoint_latest"
    assert not (moved / "sft_state.pt").exists()
    original = load_file(str(sft / "model.safetensors"))
    imported = load_file(str(moved / "model.safetensors"))
    assert original.keys() == imported.keys()
    for k, v in original.items():
        assert imported[k].dtype == (torch.bfloat16 if v.is_floating_point() else v.dtype)
        assert torch.equal(imported[k], v.to(imported[k].dtype))
    assert (new / "rl" / script.RL_NAME / "checkpoint_latest" / "config.yaml").read_text() == \
        f"pretrained_checkpoint: {moved}\n"
    assert json.loads((new / "eval_sft.json").read_text())["checkpoint"] == str(moved)
    assert script.checkpoint_progress(new / "rl" / script.RL_NAME / "checkpoint_latest") == 28
    assert b._sft_done()
    b.data()  # not needed any more: it returns without recording (a recording would fail: `run` is not stubbed)

    with pytest.raises(RuntimeError, match="not empty"):
        b.import_bundle()
    (sft / "sft_state.json").write_text(json.dumps({"step": steps - 1}))
    with pytest.raises(RuntimeError, match="has not finished"):
        script.Workflow(old, script.QUICK, "cuda", 60.0, tmp_path / "docs", tmp_path / "b2").export_bundle()


def test_a_bundle_loads_as_the_same_bf16_model(script: ModuleType, tmp_path: Path) -> None:
    import numpy as np
    import torch

    from crane_x7_vla.models.loading import load_vla
    from crane_x7_vla.models.tiny import make_tiny_checkpoint

    sft = tmp_path / "a" / "sft" / "checkpoint_latest"
    make_tiny_checkpoint(sft, action_dim=8, seed=0, image_size=56)
    (sft / "sft_state.json").write_text(json.dumps({"step": script.QUICK.sft_steps}))
    script.Workflow(tmp_path / "a", script.QUICK, "cuda", 60.0, tmp_path, tmp_path / "bundle").export_bundle()
    script.Workflow(tmp_path / "b", script.QUICK, "cuda", 60.0, tmp_path, tmp_path / "bundle").import_bundle()
    image = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    actions = [load_vla(d / "sft" / "checkpoint_latest", dtype=torch.bfloat16).predict_action([image], ["pick"])
               for d in (tmp_path / "a", tmp_path / "b")]
    np.testing.assert_array_equal(actions[0], actions[1])


def test_the_report_shows_this_runs_videos_only(script: ModuleType, tmp_path: Path) -> None:
    work, docs = tmp_path / "work", tmp_path / "docs"
    sft = work / "sft" / "checkpoint_latest"
    sft.mkdir(parents=True)
    (sft / "sft_state.json").write_text('{"step": 400}')
    result = {"success_rate": 0.2, "ci95_low": 0.1, "ci95_high": 0.3, "successes": 20, "num_episodes": 100}
    clips = {}
    for name in ("sft_s", "sft_f", "rl_f"):
        clips[name] = tmp_path / f"{name}.mp4"
        clips[name].write_bytes(name.encode())
    (work / "eval_sft.json").write_text(json.dumps({**result, "videos": {"success": str(clips["sft_s"]),
                                                                        "failure": str(clips["sft_f"])}}))
    # the RL evaluation had no success among its episodes: no RL success video this time
    (work / "eval_rl.json").write_text(json.dumps({**result, "checkpoint_progress": 5,
                                                   "videos": {"failure": str(clips["rl_f"])}}))
    (docs / "results").mkdir(parents=True)
    (docs / "results" / "rl_success.mp4").write_bytes(b"an earlier run's success")
    script.Workflow(work, script.QUICK, "cpu", 60.0, docs).report()
    assert sorted(p.name for p in (docs / "results").iterdir()) == [
        "rl_failure.mp4", "sft_failure.mp4", "sft_success.mp4", "success_vs_update.png"]
    assert (docs / "results" / "rl_failure.mp4").read_bytes() == b"rl_f"
    text = (docs / "results.md").read_text()
    assert "results/rl_failure.mp4" in text and "rl_success" not in text
    assert "| SFT + PPO | 20/100 = 0.200 |" in text


def test_rl_stops_itself_before_the_timeout_and_reports_unfinished(script: ModuleType, tmp_path: Path) -> None:
    """The trainer gets a --max-seconds inside the step's timeout; its out_of_time answer means "rerun"."""
    calls: list[tuple[list[str], float]] = []
    answer = {"run_dir": "r", "updates": 7, "best_success": 0.0, "out_of_time": True}

    def run(cmd: list[str], timeout: float, log_path: Path) -> dict[str, object]:
        calls.append((cmd, timeout))
        return answer

    script.run = run
    flow = script.Workflow(tmp_path, script.QUICK, "cpu", 300.0, tmp_path / "docs")
    with pytest.raises(script.StepIncomplete, match="after update 7"):
        flow.rl()
    cmd, timeout = calls[0]
    assert float(cmd[cmd.index("--max-seconds") + 1]) < timeout == 300.0
    assert "--sft-checkpoint" in cmd  # no RL checkpoint yet
    answer["out_of_time"] = False
    flow.rl()  # finished: no exception
