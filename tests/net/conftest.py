"""Session-scoped fixtures for tests/net: one client key pair and one REAL sshd on 127.0.0.1, configured and
exec'd by our own entrypoint (``crane-x7-vla entrypoint --role vla-rl``) from a temporary root.

sshd needs root (privilege separation, logging in as another user), so these fixtures skip without it.
StrictModes stays on: the temporary root lives under ``~/.cache`` (not world-writable like /tmp).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from net_helpers import SECRETS, ClientKey, Sshd, crane_cli, free_port, wait_port


@pytest.fixture(scope="session")
def secure_dir() -> Iterator[Path]:
    base = Path.home() / ".cache"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="crane-x7-net-tests-", dir=base))
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def client_key(secure_dir: Path) -> ClientKey:
    key = secure_dir / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@crane-x7", "-f", str(key)],
                   check=True, timeout=30)
    return ClientKey(key, (secure_dir / "client_ed25519.pub").read_text())


@pytest.fixture(scope="session")
def sshd(secure_dir: Path, client_key: ClientKey) -> Iterator[Sshd]:
    if os.geteuid() != 0:
        pytest.skip("a real sshd needs root (CI runs as root)")
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("openssh-server is not installed (scripts/install.sh dev installs it)")
    root = secure_dir / "sshd-root"
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    env = {k: v for k, v in os.environ.items() if k not in ("TS_AUTHKEY", "SSH_PUBLIC_KEY")}
    env.update(SSH_PUBLIC_KEY=client_key.public_text, SSH_PORT=str(port), SSH_USER=user,
               SSH_LISTEN_ADDRESS="127.0.0.1", CRANE_X7_SSHD_ROOT=str(root),
               CRANE_X7_OUTPUTS=str(secure_dir / "outputs"), VLA_DEVICE="cpu",
               HF_TOKEN=SECRETS["HF_TOKEN"], WANDB_API_KEY=SECRETS["WANDB_API_KEY"])
    log = secure_dir / "sshd.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*crane_cli(), "entrypoint", "--role", "vla-rl"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield Sshd(port, user, root, client_key, proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
