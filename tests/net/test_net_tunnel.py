"""``crane-x7-vla tunnel``: argv and backoff (pure), then a real ssh -L tunnel through a local sshd carrying a
rosbridge websocket session, surviving the ssh child being killed, and stopping cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import websockets
from net_helpers import LogLines, Sshd, crane_cli, free_port

from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.net.tunnel import Backoff, TunnelError, TunnelSpec, check_ssh_option, parse_target, ssh_argv


def test_parse_target() -> None:
    assert parse_target("ssh://pi@robot.local") == ("pi", "robot.local", 22)
    assert parse_target("ssh://root@10.0.0.5:2222") == ("root", "10.0.0.5", 2222)
    for bad, needle in [("pi@robot", "ssh://"), ("http://pi@robot", "scheme"), ("ssh://robot", "no user"),
                        ("ssh://pi:pw@robot", "password"), ("ssh://pi@robot:99999", "port"),
                        ("ssh://pi@robot/x", "path")]:
        with pytest.raises(TunnelError, match=needle):
            parse_target(bad)


def test_ssh_argv_forwards_local_to_remote_with_keepalives() -> None:
    spec = TunnelSpec(user="pi", host="robot", port=2222, local_port=9091, remote_port=9090,
                      identity="/k", ssh_options=("StrictHostKeyChecking=yes",))
    argv = ssh_argv(spec)
    assert argv[:3] == ["ssh", "-N", "-T"]
    assert argv[argv.index("-L") + 1] == "127.0.0.1:9091:localhost:9090"  # -L: GPU host port -> robot port
    assert "-R" not in argv
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert {"ExitOnForwardFailure=yes", "BatchMode=yes", "ServerAliveInterval=10"} <= set(opts)
    # ssh keeps the first value of an option: the user's must come before our defaults to win.
    assert opts.index("StrictHostKeyChecking=yes") < opts.index("StrictHostKeyChecking=accept-new")
    assert argv[-1] == "pi@robot" and argv[argv.index("-p") + 1] == "2222"
    with pytest.raises(TunnelError, match="Key=Value"):
        check_ssh_option("-v")


def test_backoff_is_capped_and_resets_after_a_stable_connection() -> None:
    b = Backoff(initial=1, cap=8, factor=2, stable_after=30)
    assert [b.delay(0.5) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert b.delay(60) == 1 and b.delay(1) == 2


async def _roundtrip(local_port: int, server: RosbridgeServer, text: str) -> None:
    """A client publishes over the tunnel; the rosbridge server on the far side receives it."""
    got: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
    remove = server.add_subscriber("/vla/update_instruction",
                                   lambda m: got.done() or got.set_result(m))
    try:
        async with websockets.connect(f"ws://127.0.0.1:{local_port}") as ws:
            await ws.send(json.dumps({"op": "advertise", "topic": "/vla/update_instruction", "type": "std_msgs/String"}))
            await ws.send(json.dumps({"op": "publish", "topic": "/vla/update_instruction", "msg": {"data": text}}))
            assert (await asyncio.wait_for(got, 10))["data"] == text
    finally:
        remove()


def test_tunnel_carries_rosbridge_and_reconnects(sshd: Sshd) -> None:
    local_port = free_port()

    async def scenario() -> tuple[subprocess.Popen[str], LogLines, int]:
        async with RosbridgeServer("127.0.0.1", 0) as server:
            proc = subprocess.Popen(
                [*crane_cli(), "tunnel", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}",
                 "--local-port", str(local_port), "--remote-port", str(server.port),
                 "--identity", str(sshd.key.private), "--max-backoff", "1",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"],
                stderr=subprocess.PIPE, text=True)
            lines = LogLines(proc)
            try:
                pid = int((await asyncio.to_thread(lines.wait_for, r"tunnel up \(ssh pid (\d+)\)")).group(1))
                await _roundtrip(local_port, server, "pick up the red cube")
                os.kill(pid, signal.SIGKILL)  # the network drops: ssh dies
                await asyncio.to_thread(lines.wait_for, r"ssh exited with status .* reconnecting")
                pid2 = int((await asyncio.to_thread(lines.wait_for, r"tunnel up \(ssh pid (\d+)\)")).group(1))
                assert pid2 != pid
                await _roundtrip(local_port, server, "place it on the plate")
            except BaseException:
                proc.kill()
                raise
            return proc, lines, pid2

    proc, lines, pid2 = asyncio.run(scenario())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    lines.wait_for(r"\bstopped\b")
    assert not Path(f"/proc/{pid2}").exists()  # the ssh child was terminated and reaped
    assert any("connecting (attempt 2" in ln for ln in lines.seen)


def test_tunnel_cli_rejects_bad_input() -> None:
    res = subprocess.run([*crane_cli(), "tunnel", "robot:22"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "ssh://user@robot" in res.stderr
    res = subprocess.run([*crane_cli(), "tunnel", "ssh://pi@robot", "--identity", "/nonexistent/key"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--identity" in res.stderr
