"""Settings of the inference service: ONE frozen object resolved from flags > env vars > the seed's defaults.

Design: :func:`resolve_settings` is pure (it takes the environment as a mapping and the CUDA probe as a
callable) and collects *every* problem before failing, so a misconfigured container prints one message that
lists all fixes instead of failing one variable per restart. ``HF_TOKEN`` is only read from the environment
(a flag would show in ``ps``) and never appears in ``repr`` or :meth:`InferenceSettings.public_dict`.

Some values can only be checked against the loaded model (its chunk length, whether it needs a wrist image):
:func:`model_io` reads what the model asks for and :func:`check_against_model` lists the problems, so the CLI
fails right after loading, before it connects to the robot.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crane_x7_vla import robot

# Environment variable names (the seed's, plus ROSBRIDGE_PROXY and the frame guards).
ENV_HOST = "ROSBRIDGE_HOST"
ENV_PORT = "ROSBRIDGE_PORT"
ENV_PROXY = "ROSBRIDGE_PROXY"
ENV_PEER_WAIT = "PEER_WAIT_TIMEOUT"
ENV_MODEL = "VLA_MODEL_PATH"
ENV_INSTRUCTION = "VLA_TASK_INSTRUCTION"
ENV_DEVICE = "VLA_DEVICE"
ENV_RATE = "VLA_INFERENCE_RATE"
ENV_UNNORM = "VLA_UNNORM_KEY"
ENV_HF_TOKEN = "HF_TOKEN"
ENV_MAX_FRAME_AGE = "VLA_MAX_FRAME_AGE"
ENV_MAX_FRAME_BYTES = "VLA_MAX_FRAME_BYTES"
ENV_CHUNK_STEPS = "VLA_CHUNK_STEPS"
ENV_WRIST_TOPIC = "VLA_WRIST_IMAGE_TOPIC"
ENV_VQ_PATH = "VLA_VQ_PATH"
ENV_EXTRA_ROBOTS = "VLA_EXTRA_ROBOTS"
ENV_BATCH_WAIT = "VLA_BATCH_WAIT_MS"
MAX_ROBOTS = 64
MAX_CHUNK_STEPS = 256  # a sanity bound before the model is known; the real bound is the model's chunk length

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
_PROXY_SCHEMES = ("socks5://", "socks5h://", "socks4://", "http://", "https://")
MAX_RATE_HZ = 1000.0


@dataclass(frozen=True)
class InferenceSettings:
    """Everything the inference service needs; build it with :func:`resolve_settings`."""

    model_path: str  # local directory or Hugging Face Hub id (VLA_MODEL_PATH, required)
    rosbridge_host: str = "crane-x7-local"  # rosbridge server host (the robot's Tailscale name by default)
    rosbridge_port: int = 9090  # rosbridge WebSocket port
    # e.g. socks5h://localhost:1055 (Tailscale userspace networking); may hold credentials, so no repr
    rosbridge_proxy: str | None = field(default=None, repr=False)
    peer_wait_timeout: float = 300.0  # s to keep retrying the FIRST connection before giving up
    instruction: str = "pick up the object"  # initial task instruction (/vla/update_instruction changes it)
    device: str = "cuda"  # torch device: cpu, cuda, cuda:N, mps
    inference_rate: float = 10.0  # target ticks per second (absolute deadlines, no drift)
    unnorm_key: str = "crane_x7"  # dataset key of the action un-normalisation statistics
    max_frame_age: float = 0.5  # s; never act on a frame older than this (see frames.py for the clock rule)
    max_frame_bytes: int = 8 * 1024 * 1024  # larger compressed frames are rejected unread
    status_period: float = 1.0  # s between status messages
    # Steps of each predicted action chunk to publish open loop (1 = re-query every tick, as the published eval).
    chunk_steps: int = 1
    # CompressedImage topic of the wrist camera, for models that take one (no default: the robot spec names none).
    wrist_image_topic: str | None = None
    vq_path: str | None = None  # VQ MiniVLA: residual-VQ weights (local dir or 'org/repo/subfolder')
    # More robots served by this process, one rosbridge connection each (host, port); their model calls are
    # coalesced into shared batches (crane_x7_vla.models.batcher). Empty: the seed's one robot.
    extra_robots: tuple[tuple[str, int], ...] = ()
    batch_wait_ms: float = 4.0  # synchronous batches (no CUDA engine): how long a request waits for company
    hf_token: str | None = field(default=None, repr=False)  # HF Hub token: env only, never logged

    @property
    def period(self) -> float:
        return 1.0 / self.inference_rate

    @property
    def robots(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of every robot this process serves, the primary one first."""
        return ((self.rosbridge_host, self.rosbridge_port), *self.extra_robots)

    def public_dict(self) -> dict[str, Any]:
        """A loggable/savable view: secrets redacted."""
        out = asdict(self)
        out["hf_token"] = "<set>" if self.hf_token else None
        if self.rosbridge_proxy:
            out["rosbridge_proxy"] = _redact_url(self.rosbridge_proxy)
        return out


class SettingsError(ValueError):
    """Invalid settings; ``problems`` lists one actionable message per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid inference settings:\n  - " + "\n  - ".join(problems))


def _redact_url(url: str) -> str:
    # socks5h://user:pass@host -> socks5h://***@host: proxy credentials are secrets too.
    return re.sub(r"//[^/@]*@", "//***@", url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``crane-x7-vla infer`` and the seed's script; every default is None so env vars apply."""
    g = parser.add_argument_group("connection")
    g.add_argument("--rosbridge-host", help=f"rosbridge host [{ENV_HOST}, default crane-x7-local]")
    g.add_argument("--rosbridge-port", help=f"rosbridge port [{ENV_PORT}, default 9090]")
    g.add_argument("--rosbridge-proxy", help=f"SOCKS5/HTTP proxy URL, e.g. socks5h://localhost:1055 [{ENV_PROXY}]")
    g.add_argument("--peer-wait-timeout", help=f"seconds to wait for rosbridge at start [{ENV_PEER_WAIT}, 300]")
    m = parser.add_argument_group("model")
    m.add_argument("--model-path", help=f"local dir or HF Hub id [{ENV_MODEL}, required]")
    m.add_argument("--instruction", "--task-instruction", dest="instruction",
                   help=f"task instruction [{ENV_INSTRUCTION}, default 'pick up the object']")
    m.add_argument("--device", help=f"cpu | cuda | cuda:N [{ENV_DEVICE}, default cuda]")
    m.add_argument("--unnorm-key", help=f"action statistics key [{ENV_UNNORM}, default crane_x7]")
    m.add_argument("--inference-rate", help=f"target rate in Hz [{ENV_RATE}, default 10.0]")
    f = parser.add_argument_group("frames")
    f.add_argument("--max-frame-age", help=f"drop frames older than this many seconds [{ENV_MAX_FRAME_AGE}, 0.5]")
    f.add_argument("--max-frame-bytes", help=f"reject larger compressed frames [{ENV_MAX_FRAME_BYTES}, 8 MiB]")
    f.add_argument("--status-period", help="seconds between status messages [1.0]")
    f.add_argument("--wrist-image-topic",
                   help=f"wrist camera CompressedImage topic, for models that take a wrist image [{ENV_WRIST_TOPIC}]")
    g.add_argument("--extra-robot", action="append", metavar="HOST[:PORT]",
                   help=f"serve another robot's rosbridge too (repeatable; model calls of all robots are batched) "
                        f"[{ENV_EXTRA_ROBOTS}: comma-separated]")
    g.add_argument("--batch-wait-ms", help=f"with several robots, how long a request waits for company "
                                           f"[{ENV_BATCH_WAIT}, default 4]")
    c = parser.add_argument_group("action chunks (MiniVLA)")
    c.add_argument("--chunk-steps", help=f"publish this many steps of each predicted chunk open loop before "
                                          f"querying again [{ENV_CHUNK_STEPS}, 1 = every tick]")
    c.add_argument("--vq-path", help=f"VQ MiniVLA: residual-VQ weights, local dir or org/repo/subfolder "
                                      f"[{ENV_VQ_PATH}; default <checkpoint>/vq, else the published location]")


class _Resolver:
    """Looks a field up in flags, then env, then the default, and records problems instead of raising."""

    def __init__(self, args: argparse.Namespace | None, env: Mapping[str, str]) -> None:
        self.args = args
        self.env = env
        self.problems: list[str] = []

    def raw(self, attr: str, env_name: str | None) -> tuple[str | None, str]:
        flag = getattr(self.args, attr, None) if self.args is not None else None
        if flag is not None:
            return str(flag), f"--{attr.replace('_', '-')}"
        if env_name and self.env.get(env_name, "") != "":
            return self.env[env_name], env_name
        return None, "default"

    def text(self, attr: str, env_name: str | None, default: str | None) -> str | None:
        value, _ = self.raw(attr, env_name)
        return default if value is None else value.strip()

    def number(
        self, attr: str, env_name: str | None, default: float, *, kind: type = float,
        lo: float | None = None, hi: float | None = None, hint: str = "",
    ) -> Any:
        value, source = self.raw(attr, env_name)
        if value is None:
            return default
        try:
            num = kind(value)
        except ValueError:
            self.problems.append(f"{source}={value!r} is not {'an integer' if kind is int else 'a number'}; {hint}")
            return default
        if (
            not math.isfinite(num)
            or (lo is not None and num < lo)
            or (hi is not None and num > hi)
        ):
            self.problems.append(f"{source}={value!r} is out of range; {hint}")
            return default
        return num


def resolve_settings(
    args: argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
    *,
    cuda_available: Callable[[], bool] | None = None,
) -> InferenceSettings:
    """Resolve flags > env > defaults into :class:`InferenceSettings` or raise :class:`SettingsError`.

    ``cuda_available`` (e.g. ``torch.cuda.is_available``) is only called when a CUDA device is requested;
    None skips the check (tests, or when torch is not importable yet).
    """
    import os

    r = _Resolver(args, os.environ if env is None else env)
    p = r.problems
    port = r.number("rosbridge_port", ENV_PORT, 9090, kind=int, lo=1, hi=65535,
                    hint="use a TCP port between 1 and 65535 (rosbridge's default is 9090)")
    rate = r.number("inference_rate", ENV_RATE, 10.0, lo=1e-3, hi=MAX_RATE_HZ,
                    hint=f"use a rate in Hz between 0.001 and {MAX_RATE_HZ:g} (the seed's default is 10.0)")
    peer_wait = r.number("peer_wait_timeout", ENV_PEER_WAIT, 300.0, lo=0,
                         hint="use a number of seconds >= 0 (0 = try once)")
    max_age = r.number("max_frame_age", ENV_MAX_FRAME_AGE, 0.5, lo=1e-3,
                       hint="use a positive number of seconds, e.g. 0.5")
    max_bytes = r.number("max_frame_bytes", ENV_MAX_FRAME_BYTES, 8 * 1024 * 1024, kind=int, lo=1,
                         hint="use a positive number of bytes, e.g. 8388608")
    status_period = r.number("status_period", None, 1.0, lo=0.01, hint="use a positive number of seconds")
    chunk_steps = r.number("chunk_steps", ENV_CHUNK_STEPS, 1, kind=int, lo=1, hi=MAX_CHUNK_STEPS,
                           hint="use an integer >= 1 and at most the model's chunk length (1 = query every tick)")

    host = r.text("rosbridge_host", ENV_HOST, "crane-x7-local") or ""
    if not _is_host(host):
        p.append(f"rosbridge host {host!r} is not a host name; set --rosbridge-host or {ENV_HOST} "
                 "(e.g. crane-x7-local or 127.0.0.1)")

    model_path = r.text("model_path", ENV_MODEL, None) or ""
    if not model_path:
        p.append(f"no model given; set {ENV_MODEL} or --model-path to a local checkpoint directory or a "
                 "Hugging Face Hub id (e.g. openvla/openvla-7b)")
    elif model_path.startswith(("/", "./", "../", "~")) and not Path(model_path).expanduser().exists():
        p.append(f"model path {model_path!r} does not exist; check the volume mount or use a Hub id")

    instruction = r.text("instruction", ENV_INSTRUCTION, "pick up the object") or ""
    if not instruction:
        p.append(f"empty task instruction; set --instruction or {ENV_INSTRUCTION}")

    device = (r.text("device", ENV_DEVICE, "cuda") or "").lower()
    if not _DEVICE_RE.match(device):
        p.append(f"device {device!r} is not one of cpu, cuda, cuda:N, mps; set --device or {ENV_DEVICE}")
    elif device.startswith("cuda") and cuda_available is not None and not cuda_available():
        p.append(f"device {device!r} requested but no CUDA GPU is visible here; run with --device cpu "
                 f"(or {ENV_DEVICE}=cpu), or start the container with --gpus all")

    unnorm_key = r.text("unnorm_key", ENV_UNNORM, "crane_x7") or ""
    if not unnorm_key:
        p.append(f"empty un-normalisation key; set --unnorm-key or {ENV_UNNORM} (default crane_x7)")

    proxy = r.text("rosbridge_proxy", ENV_PROXY, None) or None
    if proxy is not None and not proxy.startswith(_PROXY_SCHEMES):
        p.append(f"proxy {_redact_url(proxy)!r} has no supported scheme; use socks5h://host:port "
                 "(Tailscale userspace: socks5h://localhost:1055)")

    wrist_topic = r.text("wrist_image_topic", ENV_WRIST_TOPIC, None) or None
    if wrist_topic is not None and (any(c.isspace() for c in wrist_topic) or wrist_topic == robot.CAMERA_COMPRESSED_TOPIC):
        p.append(f"wrist image topic {wrist_topic!r} must be a ROS topic name without spaces and differ from the "
                 f"main camera topic; set --wrist-image-topic or {ENV_WRIST_TOPIC}")

    vq_path = r.text("vq_path", ENV_VQ_PATH, None) or None
    if vq_path is not None and vq_path.startswith(("/", "./", "../", "~")) and not Path(vq_path).expanduser().is_dir():
        p.append(f"VQ path {vq_path!r} is not a directory; point --vq-path or {ENV_VQ_PATH} at a pretrain_vq run "
                 "directory (config.json + checkpoints/model.pt) or use an 'org/repo/subfolder' Hub path")

    extra_robots = _extra_robots(r, port)
    batch_wait = r.number("batch_wait_ms", ENV_BATCH_WAIT, 4.0, lo=0, hi=1000,
                          hint="use milliseconds between 0 and 1000 (default 4)")

    hf_token = (os.environ if env is None else env).get(ENV_HF_TOKEN) or None
    if p:
        raise SettingsError(p)
    return InferenceSettings(
        model_path=model_path, rosbridge_host=host, rosbridge_port=port, rosbridge_proxy=proxy,
        peer_wait_timeout=peer_wait, instruction=instruction, device=device, inference_rate=rate,
        unnorm_key=unnorm_key, max_frame_age=max_age, max_frame_bytes=max_bytes,
        status_period=status_period, chunk_steps=chunk_steps, wrist_image_topic=wrist_topic, vq_path=vq_path,
        extra_robots=extra_robots, batch_wait_ms=batch_wait, hf_token=hf_token,
    )


def _is_host(host: str) -> bool:
    """A plausible host name or IP: non-empty, no whitespace, no URL path."""
    return bool(host) and not any(c.isspace() for c in host) and "/" not in host


def _extra_robots(r: _Resolver, default_port: int) -> tuple[tuple[str, int], ...]:
    """``--extra-robot HOST[:PORT]`` (repeated) or ``VLA_EXTRA_ROBOTS=host[:port],...``; problems are recorded."""
    flag = getattr(r.args, "extra_robot", None) if r.args is not None else None
    if flag:
        items, source = [str(x) for x in flag], "--extra-robot"
    else:
        items, source = [x for x in r.env.get(ENV_EXTRA_ROBOTS, "").split(",") if x.strip()], ENV_EXTRA_ROBOTS
    out: list[tuple[str, int]] = []
    for item in items:
        host, _, port_text = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            port = 0
        if not _is_host(host) or not 1 <= port <= 65535:
            r.problems.append(f"{source}: {item.strip()!r} is not HOST or HOST:PORT (e.g. crane-x7-b or "
                              "100.64.0.7:9090)")
            continue
        out.append((host, port))
    if len(out) + 1 > MAX_ROBOTS:
        r.problems.append(f"{source}: {len(out) + 1} robots are more than one process serves ({MAX_ROBOTS}); "
                          "start another service")
    return tuple(out)


@dataclass(frozen=True)
class ModelIO:
    """What a loaded policy consumes and produces per query (read from the model, never configured)."""

    chunk_size: int = 1  # actions per query (MiniVLA VQ: 8)
    history: int = 1  # frames per camera, oldest first (MiniVLA history2: 2 = [t-1, t])
    wrist: bool = False  # a wrist image after the main one

    @property
    def num_images(self) -> int:
        return self.history + (1 if self.wrist else 0)


def model_io(policy: Any) -> ModelIO:
    """Read :class:`ModelIO` from a policy (MiniVLA's ``chunk_size`` / ``config``); others default to 1 image, 1 step.

    Wrappers (e.g. the CUDA-graph engine) are looked through via their ``model`` attribute.
    """
    target = policy
    if getattr(target, "config", None) is None and getattr(target, "model", None) is not None:
        target = target.model
    cfg = getattr(target, "config", None)
    chunk = getattr(policy, "chunk_size", None) or getattr(target, "chunk_size", None) or 1
    return ModelIO(chunk_size=int(chunk), history=int(getattr(cfg, "image_sequence_len", 1) or 1),
                   wrist=bool(getattr(cfg, "use_wrist_image", False)))


def check_against_model(settings: InferenceSettings, io: ModelIO) -> list[str]:
    """Problems of ``settings`` for a model with ``io`` (empty when they fit)."""
    p: list[str] = []
    if settings.chunk_steps > io.chunk_size:
        p.append(f"--chunk-steps/{ENV_CHUNK_STEPS}={settings.chunk_steps} exceeds this model's chunk length "
                 f"{io.chunk_size} (it predicts {io.chunk_size} action(s) per query); use a value from 1 to "
                 f"{io.chunk_size}")
    if io.wrist and not settings.wrist_image_topic:
        p.append(f"this model takes a wrist camera image but no wrist topic is configured; set "
                 f"--wrist-image-topic or {ENV_WRIST_TOPIC} to the wrist camera's CompressedImage topic")
    return p
