"""Static checks of docker/ and every shell script (no Docker daemon here): hadolint-style rules written for
our Dockerfiles, the seed's environment defaults, ``bash -n`` and shellcheck."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"inference": REPO / "docker/Dockerfile.remote-inference", "vla-rl": REPO / "docker/Dockerfile.remote-vla-rl"}
COMMON_ENV = {"TS_STATE_DIR": "/var/lib/tailscale", "NVIDIA_VISIBLE_DEVICES": "all", "CUDA_LAUNCH_BLOCKING": "0",
              "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
SEED_ENV = {
    "inference": {**COMMON_ENV, "TS_HOSTNAME": "crane-x7-inference", "ROSBRIDGE_HOST": "crane-x7-local",
                  "ROSBRIDGE_PORT": "9090", "PEER_WAIT_TIMEOUT": "300", "VLA_TASK_INSTRUCTION": "pick up the object",
                  "VLA_DEVICE": "cuda", "VLA_INFERENCE_RATE": "10.0", "VLA_UNNORM_KEY": "crane_x7"},
    "vla-rl": {**COMMON_ENV, "TS_HOSTNAME": "crane-x7-vla-rl", "TS_USERSPACE": "true", "SSH_PORT": "22",
               "HF_HOME": "/root/.cache/huggingface", "WANDB_DIR": "/workspace/vla-rl/outputs",
               "LIFT_SIMULATOR": "maniskill", "LIFT_BACKEND": "gpu",
               "NVIDIA_DRIVER_CAPABILITIES": "graphics,utility,compute", "PYOPENGL_PLATFORM": "egl"},
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def env_of(ins: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in ins:
        if word == "ENV":
            for m in re.finditer(r'(\w+)=("([^"]*)"|\S+)', rest):
                env[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(2)
    return env


@pytest.mark.parametrize("role", list(DOCKERFILES))
def test_dockerfile_rules(role: str) -> None:
    ins = instructions(DOCKERFILES[role])
    args = {m.group(1): m.group(2) for w, r in ins if w == "ARG" for m in [re.match(r"(\w+)=(\S+)", r)] if m}
    froms = [r.split()[0] for w, r in ins if w == "FROM"]
    assert froms[-1] == "${CUDA_BASE}" and args["CUDA_BASE"].startswith("nvidia/cuda:")
    for image in [args.get(f[2:-1], f) if f.startswith("${") else f for f in froms]:
        tag = image.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {image}"
    runs = [r for w, r in ins if w == "RUN"]
    for r in runs:
        if "apt-get install" in r:
            assert "apt-get update" in r, "update and install in the same layer"
            assert "--no-install-recommends" in r and "-y" in r
            assert "rm -rf /var/lib/apt/lists/*" in r, "apt lists cleaned in the same layer"
        assert "curl" not in r and "wget" not in r, "no downloads outside package managers"
        assert "pip install" not in r or "TORCH_SPEC" in r, "packages come from scripts/install.sh"
    assert any("scripts/install.sh" in r and "SKIP_APT=1" in r for r in runs)
    assert not [r for w, r in ins if w == "ADD"], "COPY, not ADD"
    (entry,) = [r for w, r in ins if w == "ENTRYPOINT"]
    argv = json.loads(entry)  # exec form: a JSON array, so signals reach tini and then the service
    assert argv[:2] == ["/usr/bin/tini", "--"] and argv[2].endswith(f"entrypoint-{role}.sh")
    assert (REPO / "docker" / Path(argv[2]).name).exists()
    env = env_of(ins)
    for k, v in SEED_ENV[role].items():
        assert env.get(k) == v, f"{k}: {env.get(k)!r} != seed default {v!r}"
    for secret in ("TS_AUTHKEY", "HF_TOKEN", "WANDB_API_KEY", "SSH_PUBLIC_KEY"):
        assert secret not in env, f"{secret} must not have a baked-in value"
    users = [r for w, r in ins if w == "USER"]
    if role == "inference":
        assert users == ["vla"], "the inference service runs as a non-root user"


def test_dockerignore_keeps_context_small_and_secret_free() -> None:
    lines = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "outputs", "**/id_*", ".env"} <= lines


def shell_scripts() -> list[Path]:
    return sorted(p for p in [*REPO.glob("docker/*.sh"), *REPO.glob("scripts/*.sh"), *REPO.glob(".ci/*")]
                  if p.is_file() and p.read_text(errors="replace").startswith("#!") and "sh" in
                  p.read_text(errors="replace").splitlines()[0])


def test_shell_scripts_parse_and_pass_shellcheck() -> None:
    scripts = shell_scripts()
    assert REPO / "docker/entrypoint-inference.sh" in scripts and REPO / "scripts/install.sh" in scripts
    for s in scripts:
        res = subprocess.run(["bash", "-n", str(s)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"{s}: {res.stderr}"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (scripts/install.sh dev installs it)")
    res = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("role", ["inference", "vla-rl"])
def test_entrypoint_scripts_exec_into_python(role: str) -> None:
    text = (REPO / f"docker/entrypoint-{role}.sh").read_text()
    last = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")][-1]
    assert last == f'exec crane-x7-vla entrypoint --role {role} -- "$@"'
