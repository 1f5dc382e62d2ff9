"""Keep ``ssh -N -L LOCAL:localhost:REMOTE user@robot`` alive.

Design: OpenSSH does the tunnelling (it is the well-kept, audited implementation; autossh adds nothing
we need beyond a restart loop). This module only builds the argv (pure), decides the backoff (pure) and
supervises the child: restart on exit with capped exponential backoff, log every (re)connect, stop
cleanly on SIGTERM/SIGINT.

Direction: ``-L`` run on the GPU host makes ``localhost:LOCAL`` *on the GPU host* reach port REMOTE on the
robot. (The seed document's ``ssh -R 9090:localhost:9090 user@robot`` run on the GPU host exposes the GPU
host's port 9090 on the robot: the wrong way round.)
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from urllib.parse import urlsplit


class TunnelError(ValueError):
    """Bad tunnel arguments; the message says what to change."""


@dataclass(frozen=True)
class TunnelSpec:
    user: str  # login on the robot (or the jump host that can reach rosbridge)
    host: str  # robot host name or address
    port: int = 22  # robot's SSH port
    local_port: int = 9090  # port opened on this machine (127.0.0.1 only)
    remote_port: int = 9090  # rosbridge port as seen from the robot
    remote_host: str = "localhost"  # rosbridge host as seen from the robot
    identity: str | None = None  # private key file (-i)
    ssh_options: tuple[str, ...] = field(default_factory=tuple)  # extra "-o" options, "Key=Value"
    server_alive_interval: int = 10  # seconds between keepalives
    server_alive_count_max: int = 3  # missed keepalives before ssh exits (and we reconnect)
    connect_timeout: int = 10  # seconds for TCP connect + handshake


_OPTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*[= ].+$")


def parse_target(url: str) -> tuple[str, str, int]:
    """``ssh://user@host[:port]`` -> (user, host, port)."""
    if "://" not in url:
        raise TunnelError(f"tunnel target {url!r} is not an ssh:// URL; write it as ssh://user@robot[:port]")
    parts = urlsplit(url)
    if parts.scheme != "ssh":
        raise TunnelError(f"tunnel target scheme {parts.scheme!r} is not supported; use ssh://user@robot[:port]")
    if not parts.hostname:
        raise TunnelError(f"tunnel target {url!r} has no host; use ssh://user@robot[:port]")
    if not parts.username:
        raise TunnelError(f"tunnel target {url!r} has no user; use ssh://user@{parts.hostname}")
    if parts.password is not None:
        raise TunnelError("tunnel target must not contain a password; use key authentication (--identity FILE)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TunnelError(f"tunnel target {url!r} has a path or query; use ssh://user@robot[:port]")
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise TunnelError(f"tunnel target {url!r} has an invalid port: {exc}") from None
    return parts.username, parts.hostname, port


def check_port(name: str, port: int) -> int:
    if not 1 <= port <= 65535:
        raise TunnelError(f"{name} {port} is out of range; use a port between 1 and 65535")
    return port


def check_ssh_option(option: str) -> str:
    if not _OPTION_RE.match(option):
        raise TunnelError(f"--ssh-option {option!r} is not of the form Key=Value (e.g. StrictHostKeyChecking=accept-new)")
    return option


def ssh_argv(spec: TunnelSpec, ssh: str = "ssh") -> list[str]:
    """The ssh command line for one tunnel attempt.

    ``ExitOnForwardFailure`` makes a busy local port a process exit (which we log and retry) rather than a
    silently useless connection; ``BatchMode`` forbids password prompts that would hang a service;
    ``ServerAlive*`` turns a dead network path into an exit within ~interval*count seconds.
    """
    # ssh keeps the FIRST value it sees for an option, so the user's options go first and win.
    argv = [ssh, "-N", "-T"]
    for opt in spec.ssh_options:
        argv += ["-o", opt]
    argv += ["-L", f"127.0.0.1:{spec.local_port}:{spec.remote_host}:{spec.remote_port}",
             "-p", str(spec.port),
             "-o", "ExitOnForwardFailure=yes",
             "-o", "BatchMode=yes",
             "-o", f"ServerAliveInterval={spec.server_alive_interval}",
             "-o", f"ServerAliveCountMax={spec.server_alive_count_max}",
             "-o", f"ConnectTimeout={spec.connect_timeout}",
             "-o", "StrictHostKeyChecking=accept-new"]
    if spec.identity:
        argv += ["-i", spec.identity, "-o", "IdentitiesOnly=yes"]
    argv.append(f"{spec.user}@{spec.host}")
    return argv


@dataclass
class Backoff:
    """Capped exponential backoff, reset once a connection has stayed up for ``stable_after`` seconds."""

    initial: float = 1.0
    cap: float = 30.0
    factor: float = 2.0
    stable_after: float = 30.0
    _next: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._next = self.initial

    def delay(self, uptime: float) -> float:
        """The wait before the next attempt, given how long the last connection lived."""
        if uptime >= self.stable_after:
            self._next = self.initial
        d = self._next
        self._next = min(self.cap, self._next * self.factor)
        return d


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class TunnelKeeper:
    """Runs ssh, restarts it when it exits, stops on :meth:`stop` (wired to SIGTERM/SIGINT by :meth:`run`)."""

    def __init__(self, spec: TunnelSpec, *, backoff: Backoff | None = None, ssh: str = "ssh",
                 logger: logging.Logger | None = None, up_timeout: float = 30.0,
                 max_attempts: int | None = None) -> None:
        self.spec = spec
        self.backoff = backoff or Backoff()
        self.ssh = ssh
        self.log = logger or logging.getLogger(__name__)
        self.up_timeout = up_timeout
        self.max_attempts = max_attempts
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()

    def _wait_up(self, child: subprocess.Popen[bytes]) -> bool:
        """True once the local end accepts connections; False if ssh exited or we were stopped first."""
        deadline = time.monotonic() + self.up_timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if child.poll() is not None:
                return False
            if port_open("127.0.0.1", self.spec.local_port, timeout=0.2):
                return True
            self._stop.wait(0.1)  # poll interval while ssh authenticates
        return False

    def run_forever(self) -> int:
        """Supervise until stopped (returns 0) or ``max_attempts`` attempts have failed (returns 1)."""
        spec = self.spec
        where = f"127.0.0.1:{spec.local_port} -> {spec.user}@{spec.host}:{spec.port} -> {spec.remote_host}:{spec.remote_port}"
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            started = time.monotonic()
            try:
                child = subprocess.Popen(ssh_argv(spec, self.ssh), stdin=subprocess.DEVNULL)
            except OSError as exc:
                self.log.error("cannot run ssh (%s): install openssh-client", exc)
                return 1
            self._child = child
            self.log.info("connecting (attempt %d, ssh pid %d): %s", attempt, child.pid, where)
            if self._wait_up(child):
                self.log.info("tunnel up (ssh pid %d): %s", child.pid, where)
            while child.poll() is None and not self._stop.is_set():
                self._stop.wait(0.5)  # a signal handler or stop() ends this wait early
            if self._stop.is_set():
                break
            uptime = time.monotonic() - started
            if self.max_attempts is not None and attempt >= self.max_attempts:
                self.log.error("ssh exited with status %s; giving up after %d attempts", child.returncode, attempt)
                return 1
            delay = self.backoff.delay(uptime)
            self.log.warning("ssh exited with status %s after %.1f s; reconnecting in %.1f s",
                             child.returncode, uptime, delay)
            self._stop.wait(delay)
        self._terminate_child()
        self.log.info("stopped")
        return 0

    def _terminate_child(self) -> None:
        child = self._child
        if child is None:
            return
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def run(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> int:
        """:meth:`run_forever` with the given signals wired to :meth:`stop` (main thread only)."""
        previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            self.log.info("received %s, stopping", signal.Signals(signum).name)
            self.stop()

        for s in signals:
            previous[s] = signal.signal(s, handler)
        try:
            return self.run_forever()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
