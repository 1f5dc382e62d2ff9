"""``crane-x7-vla entrypoint --role {inference,vla-rl} [-- COMMAND ...]``: the containers' start-up logic.

Order: Tailscale (skipped with a notice when TS_AUTHKEY is unset) -> wait for the robot peer (inference) ->
GPU check -> model check -> ``os.execvpe`` of the service (``crane-x7-vla infer``, or sshd for vla-rl) or of
the COMMAND given. Exec (not a child process) so that the service receives ``docker stop``'s SIGTERM
directly and its exit status is the container's.

Design: every decision is a pure function of the environment and probe results (:func:`check_model`,
:func:`check_gpu`, :func:`plan_command` ...), unit-tested without a container; :func:`main` only probes,
logs and execs. With the default service a failed check stops the container with a message naming the fix;
with an explicit COMMAND (a shell, a training run) the same findings are warnings.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("inference", "vla-rl")
DEFAULT_TS_HOSTNAME = {"inference": "crane-x7-inference", "vla-rl": "crane-x7-vla-rl"}
DEFAULT_OUTPUTS = "/workspace/vla-rl/outputs"
# Hugging Face repo ids: "namespace/name", letters, digits, "-", "_", ".", at most 96 characters each.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

# Exit statuses (documented in docs/deployment.md).
EXIT_CONFIG = 2  # bad settings: fix the environment variables
EXIT_NETWORK = 3  # Tailscale or the peer did not come up
EXIT_NOT_FOUND = 127  # the command to exec does not exist


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str


@dataclass(frozen=True)
class Plan:
    argv: list[str]  # what to exec
    env_updates: dict[str, str] = field(default_factory=dict)  # added to the service's environment
    strict: bool = True  # failed checks stop the container (default service) or only warn (explicit command)
    sshd: bool = False  # the vla-rl default: prepare and exec sshd


def tailscale_skip_notice(env: Mapping[str, str]) -> str:
    host = env.get("ROSBRIDGE_HOST", "crane-x7-local")
    port = env.get("ROSBRIDGE_PORT", "9090")
    return (f"TS_AUTHKEY not set: skipping Tailscale; rosbridge must be reachable directly at {host}:{port} "
            "(e.g. through 'crane-x7-vla tunnel' or the robot's 'ssh -R')")


def is_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and ".." not in value


def looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


def check_model(env: Mapping[str, str], *, required: bool,
                exists: Callable[[str], bool] = os.path.exists,
                listdir: Callable[[str], list[str]] = os.listdir) -> Check:
    """Where the model comes from, and whether that can work. Never prints HF_TOKEN, only whether it is set."""
    value = env.get("VLA_MODEL_PATH", "").strip()
    token = "set" if env.get("HF_TOKEN") else "not set"
    if not value:
        if required:
            return Check("model", False, "VLA_MODEL_PATH is not set; set it to a model directory mounted with -v "
                         "(e.g. /workspace/models/crane_x7_openvla) or a Hub id (e.g. openvla/openvla-7b)")
        return Check("model", True, "VLA_MODEL_PATH not set (pass --pretrained or --sft-checkpoint to training)")
    path = os.path.expanduser(value)
    if exists(path):
        try:
            empty = not listdir(path)
        except NotADirectoryError:
            empty = False
        except OSError as exc:
            return Check("model", False, f"VLA_MODEL_PATH={value} cannot be read ({exc.strerror}); "
                         "check the volume's permissions (the image runs as user vla)")
        if empty:
            return Check("model", False, f"VLA_MODEL_PATH={value} is an empty directory; the volume is mounted "
                         "but holds no model: upload the checkpoint there")
        return Check("model", True, f"local model at {value}")
    if looks_local(value):
        return Check("model", False, f"VLA_MODEL_PATH={value} does not exist in the container; mount it, e.g. "
                     f"-v /host/models:{os.path.dirname(value.rstrip('/')) or '/'}:ro")
    if is_hub_id(value):
        if env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
            return Check("model", True, f"Hub model {value} (HF_HUB_OFFLINE set: it must already be in HF_HOME)")
        note = "private repositories work" if token == "set" else "only public repositories can be downloaded"
        return Check("model", True, f"Hub model {value} (HF_TOKEN {token}: {note})")
    return Check("model", False, f"VLA_MODEL_PATH={value!r} is neither an existing path nor a Hub id "
                 "'owner/name'; use an absolute path inside the container or e.g. openvla/openvla-7b")


def check_gpu(device: str, gpus: list[str] | None, torch_cuda: bool | None) -> Check:
    """``gpus``: ``nvidia-smi -L`` lines (None: nvidia-smi missing or failing); ``torch_cuda``: torch's view
    (None: not probed)."""
    wants_cuda = device.strip().lower().startswith("cuda")
    if not gpus:
        if wants_cuda:
            return Check("gpu", False, f"VLA_DEVICE={device} but no GPU is visible (nvidia-smi finds none); run the "
                         "container with --gpus all (needs nvidia-container-toolkit) or set VLA_DEVICE=cpu")
        return Check("gpu", True, "no GPU visible; running on the CPU as VLA_DEVICE asks")
    if torch_cuda is False and wants_cuda:
        return Check("gpu", False, f"nvidia-smi sees {len(gpus)} GPU(s) but torch cannot use CUDA; the "
                     "host's NVIDIA driver is older than this image's CUDA: pick a host with a newer driver")
    return Check("gpu", True, f"{len(gpus)} GPU(s): " + "; ".join(g.split(" (UUID")[0] for g in gpus))


def default_service(role: str, crane_cli: str | None) -> list[str]:
    if role == "inference":
        return [crane_cli, "infer"] if crane_cli else [sys.executable, "-m", "crane_x7_vla", "infer"]
    return []  # vla-rl: sshd, prepared by main


def plan_command(role: str, command: Sequence[str], proxy: str | None,
                 crane_cli: str | None = None) -> Plan:
    """What to exec: the given command (checks only warn) or the role's service (checks are fatal)."""
    cmd = list(command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    env_updates = {"ROSBRIDGE_PROXY": proxy} if proxy else {}
    if cmd:
        return Plan(argv=cmd, env_updates=env_updates, strict=False)
    if role == "vla-rl":
        return Plan(argv=[], env_updates=env_updates, strict=True, sshd=True)
    return Plan(argv=default_service(role, crane_cli), env_updates=env_updates, strict=True)


def parse_timeout(env: Mapping[str, str]) -> float:
    raw = env.get("PEER_WAIT_TIMEOUT", "300").strip() or "300"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"PEER_WAIT_TIMEOUT={raw!r} is not a number of seconds; e.g. PEER_WAIT_TIMEOUT=300") from None
    if value < 0:
        raise ValueError(f"PEER_WAIT_TIMEOUT={raw!r} is negative; use 0 to skip waiting, or seconds")
    return value


def parse_port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number; e.g. {name}=22") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{name}={port} is out of range; use 1-65535")
    return port


# ---------------------------------------------------------------------------------------------- probes (I/O)
def probe_gpus() -> list[str] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("GPU ")]
    return lines if res.returncode == 0 else None


def probe_torch_cuda() -> bool | None:
    try:
        import torch
    except ImportError:
        return None
    return bool(torch.cuda.is_available())


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=ROLES, default=os.environ.get("CRANE_X7_ROLE", "inference"),
                        help="which container this is (default from CRANE_X7_ROLE, else inference)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the checks and print what would be exec'd, without starting anything")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="command to run instead of the role's service (after --)")


def main(args: argparse.Namespace) -> int:
    from crane_x7_vla.net import peer, tailscale
    from crane_x7_vla.net.redact import setup_logging

    env = dict(os.environ)
    log = setup_logging("entrypoint", env)
    role: str = args.role
    plan = plan_command(role, args.command, None, shutil.which("crane-x7-vla"))

    # --- Tailscale
    proxy: str | None = None
    try:
        ts = tailscale.settings_from_env(env, DEFAULT_TS_HOSTNAME[role])
        peer_timeout = parse_timeout(env)
        rb_host = env.get("ROSBRIDGE_HOST", "crane-x7-local").strip() or "crane-x7-local"
        rb_port = parse_port("ROSBRIDGE_PORT", env.get("ROSBRIDGE_PORT", "9090").strip() or "9090")
    except (ValueError, tailscale.TailscaleError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    if ts is None:
        log.info("%s", tailscale_skip_notice(env))
    elif args.dry_run:
        log.info("dry run: would start %s and join the tailnet as %s",
                 " ".join(tailscale.tailscaled_argv(ts)), ts.hostname)
        proxy = ts.proxy_url
    else:
        try:
            tailscale.start(ts, log)
            proxy = ts.proxy_url
            if role == "inference" and peer_timeout > 0:
                found = tailscale.wait_for_peer(ts, rb_host, peer_timeout, log=log)
                log.info("peer %s online (%s); tailscale ping: %s", found.hostname, ", ".join(found.ips),
                         tailscale.ping(ts, rb_host))
        except (tailscale.TailscaleError, subprocess.TimeoutExpired, OSError) as exc:
            log.error("%s", exc)
            return EXIT_NETWORK
    plan = plan_command(role, args.command, proxy, shutil.which("crane-x7-vla"))
    if role == "inference":
        reason = peer.probe_tcp(rb_host, rb_port, proxy, timeout=5.0)
        via = f" via {proxy}" if proxy else ""
        if reason is None:
            log.info("rosbridge %s:%d reachable%s", rb_host, rb_port, via)
        else:
            log.warning("rosbridge %s:%d not reachable yet%s (%s); the service keeps retrying",
                        rb_host, rb_port, via, reason)

    # --- GPU and model
    # (check, fatal when failed). A training container without a GPU still starts: one may want to log in.
    gpus = probe_gpus()
    device = env.get("VLA_DEVICE", "cuda") if role == "inference" else "cuda"
    torch_cuda = probe_torch_cuda() if gpus and device.lower().startswith("cuda") else None
    checks = [(check_gpu(device, gpus, torch_cuda), plan.strict and role == "inference"),
              (check_model(env, required=role == "inference" and plan.strict), plan.strict)]
    failed = False
    for c, fatal in checks:
        if c.ok:
            log.info("%s: %s", c.name, c.message)
        elif fatal:
            log.error("%s: %s", c.name, c.message)
            failed = True
        else:
            log.warning("%s: %s", c.name, c.message)
    if failed:
        return EXIT_CONFIG

    # --- what to exec
    child_env = {**env, **plan.env_updates}
    argv = plan.argv
    if plan.sshd:
        try:
            argv = _prepare_sshd(child_env, dry_run=args.dry_run, log=log)
        except ValueError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
    if args.dry_run:
        log.info("dry run: would exec %s with %s", " ".join(argv),
                 ", ".join(f"{k}={v}" for k, v in plan.env_updates.items()) or "no extra environment")
        return 0
    log.info("exec %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, child_env)
    except OSError as exc:
        log.error("cannot run %s: %s", argv[0], exc.strerror)
    return EXIT_NOT_FOUND


def _prepare_sshd(env: Mapping[str, str], *, dry_run: bool, log: logging.Logger) -> list[str]:
    """Validate SSH_PUBLIC_KEY and write sshd's files; raise ValueError (with the fix) when that fails."""
    from crane_x7_vla.net.sshd import SshdError, SshdSettings, prepare_sshd, sshd_argv
    from crane_x7_vla.net.sshkeys import SshKeyError, validate_public_keys

    try:
        keys = validate_public_keys(env.get("SSH_PUBLIC_KEY", ""))
    except SshKeyError as exc:
        raise ValueError(f"refusing to start sshd: {exc}") from None
    settings = SshdSettings(user=env.get("SSH_USER", "vla").strip() or "vla",
                            port=parse_port("SSH_PORT", env.get("SSH_PORT", "22").strip() or "22"),
                            listen_address=env.get("SSH_LISTEN_ADDRESS", "0.0.0.0").strip() or "0.0.0.0",
                            keys=tuple(keys))
    for k in keys:
        log.info("authorized key %s %s", k.key_type, k.fingerprint)
    root = Path(env.get("CRANE_X7_SSHD_ROOT", "/"))
    outputs = Path(env.get("CRANE_X7_OUTPUTS", DEFAULT_OUTPUTS))
    if dry_run:
        return ["sshd", "-D", "-e", "-f", str(root / "etc/ssh/sshd_config_crane_x7_vla")]
    _ensure_owned_dir(outputs, settings.user, log)
    try:
        paths = prepare_sshd(settings, root, env, workdir=str(outputs.parent))
    except SshdError as exc:
        raise ValueError(str(exc)) from None
    log.info("sshd on port %d for user %s (key only, X11 forwarding on); outputs in %s",
             settings.port, settings.user, outputs)
    return sshd_argv(paths)


def _ensure_owned_dir(path: Path, user: str, log: logging.Logger) -> None:
    """Make the outputs directory writable for the SSH user (top level only: a mounted volume may be large)."""
    import pwd

    try:
        path.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam(user)
        if os.geteuid() == 0 and path.stat().st_uid != pw.pw_uid:
            os.chown(path, pw.pw_uid, pw.pw_gid)
    except (OSError, KeyError) as exc:
        log.warning("cannot prepare %s for user %s (%s); training outputs may not be writable", path, user, exc)
