"""Step scheduling of scripts/learn_pick_place.py (steps stubbed: the commands themselves are tested elsewhere)."""

from __future__ import annotations

import importlib.util
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
