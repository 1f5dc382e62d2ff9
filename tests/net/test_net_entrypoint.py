"""Entrypoint decisions as pure functions, and the real entrypoint process in --dry-run mode (no daemons):
the TS_AUTHKEY notice, refusals with the fix, and no secret in anything it prints."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from net_helpers import SECRETS, crane_cli

from crane_x7_vla.net.entrypoint import (
    check_gpu,
    check_model,
    is_hub_id,
    parse_timeout,
    plan_command,
    tailscale_skip_notice,
)


def test_model_checks(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    ok = check_model({"VLA_MODEL_PATH": str(tmp_path / "model")}, required=True)
    assert ok.ok and "local model" in ok.message
    empty = check_model({"VLA_MODEL_PATH": str(tmp_path / "empty")}, required=True)
    assert not empty.ok and "empty directory" in empty.message
    missing = check_model({"VLA_MODEL_PATH": "/workspace/models/crane_x7_openvla"}, required=True)
    assert not missing.ok and "-v /host/models:/workspace/models:ro" in missing.message
    unset = check_model({}, required=True)
    assert not unset.ok and "VLA_MODEL_PATH is not set" in unset.message
    assert check_model({}, required=False).ok
    weird = check_model({"VLA_MODEL_PATH": "not a model"}, required=True)
    assert not weird.ok and "neither an existing path nor a Hub id" in weird.message


def test_hub_model_reports_token_presence_not_value() -> None:
    pub = check_model({"VLA_MODEL_PATH": "openvla/openvla-7b"}, required=True)
    assert pub.ok and "HF_TOKEN not set" in pub.message
    priv = check_model({"VLA_MODEL_PATH": "me/crane_x7_openvla", "HF_TOKEN": SECRETS["HF_TOKEN"]}, required=True)
    assert priv.ok and "HF_TOKEN set" in priv.message and SECRETS["HF_TOKEN"] not in priv.message
    assert is_hub_id("Stanford-ILIAD/minivla-vq-libero90-prismatic") and not is_hub_id("a/../b")
    assert not is_hub_id("owner/name/extra")


def test_gpu_checks() -> None:
    assert not check_gpu("cuda", None, None).ok
    assert "--gpus all" in check_gpu("cuda", None, None).message
    assert check_gpu("cpu", None, None).ok
    gpus = ["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-abc)"]
    assert check_gpu("cuda", gpus, True).message == "1 GPU(s): GPU 0: NVIDIA H100 80GB HBM3"
    assert "driver" in check_gpu("cuda:0", gpus, False).message


def test_plans() -> None:
    default = plan_command("inference", ["--"], "socks5h://localhost:1055", "/opt/venv/bin/crane-x7-vla")
    assert default.argv == ["/opt/venv/bin/crane-x7-vla", "infer"] and default.strict
    assert default.env_updates == {"ROSBRIDGE_PROXY": "socks5h://localhost:1055"}
    direct = plan_command("inference", ["--", "python", "-c", "print(1)"], None)
    assert direct.argv == ["python", "-c", "print(1)"] and not direct.strict and direct.env_updates == {}
    rl = plan_command("vla-rl", [], None)
    assert rl.sshd and rl.strict
    train = plan_command("vla-rl", ["--", "python", "-m", "crane_x7_vla_rl.training.cli", "train"], None)
    assert not train.sshd and train.argv[0] == "python"


def test_notice_and_timeouts() -> None:
    notice = tailscale_skip_notice({"ROSBRIDGE_HOST": "localhost"})
    assert notice.startswith("TS_AUTHKEY not set: skipping Tailscale") and "localhost:9090" in notice
    assert parse_timeout({}) == 300
    with pytest.raises(ValueError, match="PEER_WAIT_TIMEOUT"):
        parse_timeout({"PEER_WAIT_TIMEOUT": "5min"})


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("TS_AUTHKEY", "SSH_PUBLIC_KEY", "VLA_MODEL_PATH")}
    base.update({"HF_TOKEN": SECRETS["HF_TOKEN"], "WANDB_API_KEY": SECRETS["WANDB_API_KEY"],
                 "ROSBRIDGE_HOST": "127.0.0.1", "ROSBRIDGE_PORT": "9", "VLA_DEVICE": "cpu", **env})
    res = subprocess.run([*crane_cli(), "entrypoint", *args], capture_output=True, text=True, timeout=120, env=base)
    for secret in SECRETS.values():
        assert secret not in res.stdout + res.stderr
    return res


def test_dry_run_without_authkey_skips_tailscale_and_plans_the_service() -> None:
    res = _run(["--role", "inference", "--dry-run"], VLA_MODEL_PATH="openvla/openvla-7b")
    assert res.returncode == 0, res.stderr
    assert "[entrypoint] TS_AUTHKEY not set: skipping Tailscale" in res.stderr
    assert "rosbridge 127.0.0.1:9 not reachable yet" in res.stderr
    assert "would exec" in res.stderr and " infer with no extra environment" in res.stderr


def test_dry_run_with_authkey_plans_userspace_tailscale_and_the_proxy(tmp_path: Path) -> None:
    res = _run(["--role", "inference", "--dry-run"], VLA_MODEL_PATH="openvla/openvla-7b",
               TS_AUTHKEY=SECRETS["TS_AUTHKEY"], TS_STATE_DIR=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "--tun=userspace-networking --socks5-server=localhost:1055" in res.stderr
    assert "ROSBRIDGE_PROXY=socks5h://localhost:1055" in res.stderr


def test_inference_refuses_a_missing_model_with_the_fix() -> None:
    res = _run(["--role", "inference", "--dry-run"], VLA_MODEL_PATH="/workspace/models/nope")
    assert res.returncode == 2
    assert "does not exist in the container; mount it" in res.stderr
    # With an explicit command the same finding is only a warning.
    res = _run(["--role", "inference", "--dry-run", "--", "bash"], VLA_MODEL_PATH="/workspace/models/nope")
    assert res.returncode == 0 and "would exec bash" in res.stderr


def test_vla_rl_refuses_a_malformed_key() -> None:
    res = _run(["--role", "vla-rl", "--dry-run"], SSH_PUBLIC_KEY="ssh-ed25519 AAAAnotbase64!!")
    assert res.returncode == 2
    assert "refusing to start sshd: SSH_PUBLIC_KEY line 1: the key data is not valid base64" in res.stderr
    res = _run(["--role", "vla-rl", "--dry-run"])
    assert res.returncode == 2 and "SSH_PUBLIC_KEY is not set" in res.stderr


def test_vla_rl_without_gpu_only_warns(client_key) -> None:  # type: ignore[no-untyped-def]
    res = _run(["--role", "vla-rl", "--dry-run"], SSH_PUBLIC_KEY=client_key.public_text, VLA_DEVICE="cuda",
               PATH="/usr/bin:/bin")  # no nvidia-smi on this PATH
    assert res.returncode == 0, res.stderr
    assert "gpu: VLA_DEVICE=cuda but no GPU is visible" in res.stderr and "would exec sshd" in res.stderr


def test_command_not_found_exit_status() -> None:
    res = _run(["--role", "vla-rl", "--", "no-such-command-xyz"])
    assert res.returncode == 127 and "cannot run no-such-command-xyz" in res.stderr


def test_exec_replaces_the_entrypoint_and_passes_the_environment() -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "TS_AUTHKEY"}, "HF_TOKEN": SECRETS["HF_TOKEN"]}
    proc = subprocess.Popen([*crane_cli(), "entrypoint", "--role", "vla-rl", "--", "sh", "-c",
                             'echo "pid=$$ token_len=${#HF_TOKEN}"'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # Same pid: exec'd in place (docker stop's SIGTERM reaches the service), with the environment intact.
    assert out.split() == [f"pid={proc.pid}", f"token_len={len(SECRETS['HF_TOKEN'])}"]
    assert SECRETS["HF_TOKEN"] not in out + err
