"""The CLI entry points run, and unknown commands get a helpful error."""

from __future__ import annotations

import json
import subprocess
import sys

from crane_x7_vla import cli


def test_doctor_json_reports_findings(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["doctor", "--json"]) == 0
    findings = json.loads(capsys.readouterr().out)
    names = {f["name"] for f in findings}
    assert {"python", "torch", "simulator mujoco", "simulator isaacsim"} <= names
    assert all(f["ok"] or f["fix"] for f in findings if f["name"] != "torch.cuda")


def test_unknown_command_suggests(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["docter"]) == 2
    assert "did you mean 'doctor'" in capsys.readouterr().err.lower()


def test_rl_cli_help_runs_as_module() -> None:
    res = subprocess.run([sys.executable, "-m", "crane_x7_vla_rl.training.cli", "--help"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and "evaluate" in res.stdout
