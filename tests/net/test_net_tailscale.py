"""Tailscale decisions: settings from the environment, argv (auth key never in it), status parsing and the
peer wait loop. tailscaled itself cannot run here (no tailnet), so the status source is passed in."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from net_helpers import SECRETS

from crane_x7_vla.net import tailscale
from crane_x7_vla.net.tailscale import TailscaleError, find_peer, settings_from_env

STATUS = {
    "BackendState": "Running",
    "Self": {"HostName": "crane-x7-inference", "Online": True},
    "Peer": {
        "nodekey:1": {"HostName": "crane-x7-local", "DNSName": "crane-x7-local.tail1234.ts.net.", "Online": True,
                      "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1"]},
        "nodekey:2": {"HostName": "laptop", "DNSName": "laptop.tail1234.ts.net.", "Online": False,
                      "TailscaleIPs": ["100.64.0.9"]},
    },
}


def test_unset_or_empty_authkey_skips_tailscale() -> None:
    assert settings_from_env({}, "crane-x7-inference") is None
    assert settings_from_env({"TS_AUTHKEY": "  "}, "crane-x7-inference") is None


def test_settings_defaults_follow_the_seed() -> None:
    s = settings_from_env({"TS_AUTHKEY": SECRETS["TS_AUTHKEY"]}, "crane-x7-vla-rl")
    assert s is not None
    assert (s.hostname, s.state_dir, s.userspace, s.proxy_url) == (
        "crane-x7-vla-rl", Path("/var/lib/tailscale"), True, "socks5h://localhost:1055")
    assert SECRETS["TS_AUTHKEY"] not in repr(s)
    with pytest.raises(TailscaleError, match="TS_USERSPACE"):
        settings_from_env({"TS_AUTHKEY": "k" * 10, "TS_USERSPACE": "maybe"}, "x")
    tun = settings_from_env({"TS_AUTHKEY": "k" * 10, "TS_USERSPACE": "false"}, "x")
    assert tun is not None and tun.proxy_url is None


def test_argv_uses_userspace_socks5_and_an_authkey_file(tmp_path: Path) -> None:
    s = settings_from_env({"TS_AUTHKEY": SECRETS["TS_AUTHKEY"], "TS_STATE_DIR": str(tmp_path),
                           "TS_HOSTNAME": "gpu-1"}, "x")
    assert s is not None
    d = tailscale.tailscaled_argv(s)
    assert "--tun=userspace-networking" in d and "--socks5-server=localhost:1055" in d
    assert f"--state={tmp_path}/tailscaled.state" in d and f"--socket={tmp_path}/tailscaled.sock" in d
    up = tailscale.up_argv(s, tmp_path / "key")
    assert f"--auth-key=file:{tmp_path}/key" in up and "--hostname=gpu-1" in up
    assert all(SECRETS["TS_AUTHKEY"] not in a for a in d + up)


def test_find_peer_by_name_dns_or_ip() -> None:
    for name in ("crane-x7-local", "CRANE-X7-LOCAL", "crane-x7-local.tail1234.ts.net", "100.101.102.103"):
        p = find_peer(STATUS, name)
        assert p is not None and p.hostname == "crane-x7-local" and p.online
    laptop = find_peer(STATUS, "laptop")
    assert laptop is not None and not laptop.online
    assert find_peer(STATUS, "robot") is None
    assert find_peer({"BackendState": "NeedsLogin"}, "robot") is None


class _Statuses:
    """Successive ``tailscale status --json`` answers, with a clock that advances on every sleep."""

    def __init__(self, answers: list[dict[str, object] | None]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []
        self.now = 0.0

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        ans = self.answers[min(len(self.calls) - 1, len(self.answers) - 1)]
        if ans is None:
            return subprocess.CompletedProcess(argv, 1, "", "failed to connect to local tailscaled")
        return subprocess.CompletedProcess(argv, 0, json.dumps(ans), "")

    def sleep(self, dt: float) -> None:
        self.now += dt


def test_wait_for_peer_polls_until_online() -> None:
    s = settings_from_env({"TS_AUTHKEY": "k" * 10}, "x")
    assert s is not None
    offline = json.loads(json.dumps(STATUS))
    offline["Peer"]["nodekey:1"]["Online"] = False
    src = _Statuses([None, {"BackendState": "Starting"}, offline, STATUS])
    peer = tailscale.wait_for_peer(s, "crane-x7-local", 60, run=src.run, clock=lambda: src.now,
                                   sleep=src.sleep, interval=2)
    assert peer.ips[0] == "100.101.102.103" and len(src.calls) == 4
    assert src.calls[0][1:] == [f"--socket={s.socket}", "status", "--json"]


def test_wait_for_peer_times_out_with_the_fix() -> None:
    s = settings_from_env({"TS_AUTHKEY": "k" * 10}, "x")
    assert s is not None
    src = _Statuses([STATUS])
    with pytest.raises(TailscaleError, match=r"peer 'robot' not online .* after 10 s .*not in the tailnet.*PEER_WAIT_TIMEOUT"):
        tailscale.wait_for_peer(s, "robot", 10, run=src.run, clock=lambda: src.now, sleep=src.sleep, interval=2)
    assert src.now >= 10


def test_start_without_binaries_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no tailscale binaries
    s = settings_from_env({"TS_AUTHKEY": "k" * 10, "TS_STATE_DIR": str(tmp_path)}, "x")
    assert s is not None
    with pytest.raises(TailscaleError, match="not installed in this image; unset TS_AUTHKEY"):
        tailscale.start(s, logging.getLogger("t"))
