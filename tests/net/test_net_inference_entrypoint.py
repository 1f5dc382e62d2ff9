"""End to end on this machine: the inference container's entrypoint, WITHOUT TS_AUTHKEY, against a running
simulated robot (``crane-x7-vla sim-bridge``) starts the real inference service with a tiny checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from net_helpers import SECRETS, LogLines, crane_cli, free_port, wait_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_bridge() -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen([*crane_cli(), "sim-bridge", "--simulator", "mujoco", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, timeout=120)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_entrypoint_starts_the_inference_service(sim_bridge: int, tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny"
    subprocess.run([*crane_cli(), "make-tiny-checkpoint", str(ckpt)], check=True, timeout=300,
                   capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TS_AUTHKEY", "ROSBRIDGE_PROXY")}
    env.update(VLA_MODEL_PATH=str(ckpt), VLA_DEVICE="cpu", ROSBRIDGE_HOST="127.0.0.1",
               ROSBRIDGE_PORT=str(sim_bridge), VLA_INFERENCE_RATE="5", HF_TOKEN=SECRETS["HF_TOKEN"],
               WANDB_API_KEY=SECRETS["WANDB_API_KEY"])
    proc = subprocess.Popen([*crane_cli(), "entrypoint", "--role", "inference"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = LogLines(proc)
    try:
        lines.wait_for(r"\[entrypoint\] TS_AUTHKEY not set: skipping Tailscale")
        lines.wait_for(rf"\[entrypoint\] rosbridge 127\.0\.0\.1:{sim_bridge} reachable")
        lines.wait_for(r"\[entrypoint\] exec .*crane-x7-vla infer|\[entrypoint\] exec .* -m crane_x7_vla infer")
        lines.wait_for(rf"connected to rosbridge 127\.0\.0\.1:{sim_bridge}; publishing", timeout=240)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = "".join(lines.seen)
    assert all(s not in text for s in SECRETS.values())
