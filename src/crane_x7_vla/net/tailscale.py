"""Tailscale inside a container: userspace networking + a SOCKS5 proxy, no TUN device, no relay.

Design: with ``--tun=userspace-networking`` no process gets a route into the tailnet; outbound connections go
through tailscaled's SOCKS5 server (``socks5h://localhost:1055``: the proxy resolves MagicDNS names). The
inference service is given ``ROSBRIDGE_PROXY`` and dials rosbridge through it; nothing else (Hub downloads,
W&B) is proxied, so those keep the host's normal internet path.

The auth key never appears in argv (``ps``) or logs: it is written to a 0600 file in a private temporary
directory and passed as ``tailscale up --auth-key=file:PATH``; the file is removed right after.
Argv building and status parsing are pure; :func:`start` and :func:`wait_for_peer` run the binaries.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SOCKS5 = "localhost:1055"
DEFAULT_STATE_DIR = "/var/lib/tailscale"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class TailscaleError(RuntimeError):
    """Tailscale could not be brought up or the peer did not appear; the message says what to check."""


@dataclass(frozen=True)
class TailscaleSettings:
    authkey: str = field(repr=False)  # TS_AUTHKEY (secret: repr=False keeps it out of tracebacks and logs)
    hostname: str  # TS_HOSTNAME: this node's name in the tailnet
    state_dir: Path  # TS_STATE_DIR: node state survives restarts when this is a volume
    userspace: bool = True  # TS_USERSPACE: no TUN device needed (containers rarely have NET_ADMIN)
    socks5: str = DEFAULT_SOCKS5  # TS_SOCKS5_SERVER: where the userspace proxy listens

    @property
    def socket(self) -> Path:
        return self.state_dir / "tailscaled.sock"

    @property
    def proxy_url(self) -> str | None:
        """The URL for clients; None with a kernel TUN device (tailnet addresses are routed directly)."""
        return f"socks5h://{self.socks5}" if self.userspace else None


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise TailscaleError(f"{name}={value!r} is not a boolean; use true or false")


def settings_from_env(env: Mapping[str, str], default_hostname: str) -> TailscaleSettings | None:
    """None when ``TS_AUTHKEY`` is unset or empty (Tailscale is then skipped)."""
    key = env.get("TS_AUTHKEY", "").strip()
    if not key:
        return None
    hostname = env.get("TS_HOSTNAME", "").strip() or default_hostname
    return TailscaleSettings(
        authkey=key,
        hostname=hostname,
        state_dir=Path(env.get("TS_STATE_DIR", "").strip() or DEFAULT_STATE_DIR),
        userspace=parse_bool("TS_USERSPACE", env.get("TS_USERSPACE", "true")),
        socks5=env.get("TS_SOCKS5_SERVER", "").strip() or DEFAULT_SOCKS5,
    )


def tailscaled_argv(s: TailscaleSettings, exe: str = "tailscaled") -> list[str]:
    argv = [exe, f"--state={s.state_dir / 'tailscaled.state'}", f"--statedir={s.state_dir}",
            f"--socket={s.socket}"]
    if s.userspace:
        argv += ["--tun=userspace-networking", f"--socks5-server={s.socks5}"]
    return argv


def tailscale_argv(s: TailscaleSettings, *args: str, exe: str = "tailscale") -> list[str]:
    return [exe, f"--socket={s.socket}", *args]


def up_argv(s: TailscaleSettings, authkey_file: Path, exe: str = "tailscale") -> list[str]:
    return tailscale_argv(s, "up", f"--auth-key=file:{authkey_file}", f"--hostname={s.hostname}", exe=exe)


@dataclass(frozen=True)
class Peer:
    hostname: str
    dns_name: str
    online: bool
    ips: tuple[str, ...]


def find_peer(status: Mapping[str, Any], name: str) -> Peer | None:
    """Look ``name`` up in ``tailscale status --json`` by host name, MagicDNS name (full or first label) or IP."""
    want = name.strip().lower().rstrip(".")
    for raw in (status.get("Peer") or {}).values():
        host = str(raw.get("HostName", ""))
        dns = str(raw.get("DNSName", "")).rstrip(".")
        ips = tuple(str(ip) for ip in raw.get("TailscaleIPs") or ())
        names = {host.lower(), dns.lower(), dns.split(".", 1)[0].lower()}
        if want in names or want in ips:
            return Peer(hostname=host, dns_name=dns, online=bool(raw.get("Online")), ips=ips)
    return None


def backend_state(status: Mapping[str, Any]) -> str:
    return str(status.get("BackendState", "Unknown"))


Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def status(s: TailscaleSettings, run: Runner = _run, exe: str = "tailscale") -> dict[str, Any]:
    res = run(tailscale_argv(s, "status", "--json", exe=exe), 15.0)
    if res.returncode != 0 and not res.stdout.strip().startswith("{"):
        raise TailscaleError(f"tailscale status failed: {res.stderr.strip() or res.returncode}")
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise TailscaleError("tailscale status --json printed no JSON; is tailscaled running?") from None
    if not isinstance(data, dict):
        raise TailscaleError("tailscale status --json printed unexpected JSON")
    return data


def wait_for_peer(s: TailscaleSettings, peer: str, timeout: float, *, run: Runner = _run,
                  exe: str = "tailscale", log: logging.Logger | None = None,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep, interval: float = 2.0) -> Peer:
    """Poll ``tailscale status --json`` until ``peer`` is online; raise :class:`TailscaleError` at ``timeout``."""
    log = log or logging.getLogger(__name__)
    deadline = clock() + timeout
    last = "not yet queried"
    while True:
        try:
            st = status(s, run, exe)
            found = find_peer(st, peer)
            if found is not None and found.online:
                return found
            last = (f"backend {backend_state(st)}, peer {'offline' if found else 'not in the tailnet'}")
        except (TailscaleError, subprocess.TimeoutExpired, OSError) as exc:
            last = str(exc)
        if clock() >= deadline:
            raise TailscaleError(
                f"peer {peer!r} not online in the tailnet after {timeout:.0f} s ({last}); on the robot run "
                f"'tailscale up --hostname={peer}' and check 'tailscale status', or raise PEER_WAIT_TIMEOUT")
        log.info("waiting for peer %s (%s)", peer, last)
        sleep(interval)


def ping(s: TailscaleSettings, peer: str, run: Runner = _run, exe: str = "tailscale") -> str:
    """One ``tailscale ping``; returns its last output line (diagnostic only: DERP relays still work)."""
    res = run(tailscale_argv(s, "ping", "--c=1", "--timeout=5s", peer, exe=exe), 15.0)
    out = (res.stdout.strip() or res.stderr.strip()).splitlines()
    return out[-1] if out else f"exit status {res.returncode}"


def start(s: TailscaleSettings, log: logging.Logger, *, tailscaled: str | None = None,
          tailscale: str | None = None, socket_timeout: float = 20.0,
          up_timeout: float = 120.0) -> subprocess.Popen[bytes]:
    """Start tailscaled in the background and join the tailnet. Returns the tailscaled process, which
    keeps running after the entrypoint ``exec``s the service."""
    daemon = tailscaled or shutil.which("tailscaled")
    cli = tailscale or shutil.which("tailscale")
    if daemon is None or cli is None:
        raise TailscaleError("tailscale is not installed in this image; unset TS_AUTHKEY or use the "
                             "project's Dockerfiles (they install tailscale)")
    try:
        s.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TailscaleError(f"TS_STATE_DIR {s.state_dir} is not writable ({exc.strerror}); "
                             "mount a writable volume there or set TS_STATE_DIR") from None
    logfile = open(s.state_dir / "tailscaled.log", "ab")  # noqa: SIM115 - handed to the daemon for its lifetime
    log.info("starting tailscaled (%s, SOCKS5 %s); its log: %s",
             "userspace networking" if s.userspace else "TUN device", s.socks5 if s.userspace else "-",
             s.state_dir / "tailscaled.log")
    daemon_proc = subprocess.Popen(tailscaled_argv(s, daemon), stdin=subprocess.DEVNULL, stdout=logfile,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    logfile.close()
    deadline = time.monotonic() + socket_timeout
    while not s.socket.exists():
        if daemon_proc.poll() is not None:
            raise TailscaleError(f"tailscaled exited with status {daemon_proc.returncode}; see "
                                 f"{s.state_dir / 'tailscaled.log'}")
        if time.monotonic() > deadline:
            daemon_proc.terminate()
            raise TailscaleError(f"tailscaled did not create {s.socket} within {socket_timeout:.0f} s; see "
                                 f"{s.state_dir / 'tailscaled.log'}")
        time.sleep(0.2)  # waiting for a file another process creates; no event to wait on
    keydir = Path(tempfile.mkdtemp(prefix="ts-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    keyfile = keydir / "authkey"
    try:
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(s.authkey)
        log.info("joining the tailnet as %s", s.hostname)
        res = subprocess.run(up_argv(s, keyfile, cli), capture_output=True, text=True, timeout=up_timeout,
                             check=False)
    except subprocess.TimeoutExpired:
        raise TailscaleError(f"tailscale up did not finish within {up_timeout:.0f} s; check that this host "
                             "can reach the internet (UDP 41641 or HTTPS)") from None
    finally:
        shutil.rmtree(keydir, ignore_errors=True)
    if res.returncode != 0:
        detail = res.stderr.strip().replace(s.authkey, "***")
        raise TailscaleError(f"tailscale up failed ({detail}); the auth key may be invalid or expired: "
                             "create a new one in the admin console (Settings > Keys)")
    return daemon_proc
