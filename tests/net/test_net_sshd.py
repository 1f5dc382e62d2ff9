"""The VLA-RL container's sshd, configured by our entrypoint and run for real on 127.0.0.1."""

from __future__ import annotations

import stat
from pathlib import Path

from net_helpers import SECRETS, Sshd

from crane_x7_vla.net.sshd import (
    SshdSettings,
    paths_for,
    render_profile,
    render_sshd_config,
    session_environment,
)
from crane_x7_vla.net.sshkeys import parse_public_keys


def test_key_login_works(sshd: Sshd) -> None:
    res = sshd.ssh("echo logged-in-as-$(id -un)", options=("-i", str(sshd.key.private), "-o", "IdentitiesOnly=yes"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"logged-in-as-{sshd.user}"


def test_password_login_is_refused_and_not_offered(sshd: Sshd) -> None:
    res = sshd.ssh("true", options=("-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"))
    assert res.returncode == 255
    assert "Permission denied (publickey)" in res.stderr  # the only method the server offers


def test_unknown_key_is_refused(sshd: Sshd, secure_dir: Path) -> None:
    import subprocess

    other = secure_dir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    res = sshd.ssh("true", options=("-i", str(other), "-o", "IdentitiesOnly=yes"))
    assert res.returncode == 255 and "Permission denied" in res.stderr


def test_ssh_x_gets_a_display(sshd: Sshd) -> None:
    import os

    env = {**os.environ, "DISPLAY": ":99"}  # the client needs a DISPLAY to request forwarding at all
    # Print the forwarded display and its xauth cookie, then remove the cookie we added to the user's file.
    res = sshd.ssh('echo "D=$DISPLAY"; xauth list "$DISPLAY" | wc -l; xauth remove "$DISPLAY"',
                   options=("-X", "-i", str(sshd.key.private), "-o", "IdentitiesOnly=yes"), env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert lines[0].startswith("D=localhost:1"), res.stdout  # X11DisplayOffset 10 -> localhost:10.0 or above
    assert int(lines[1]) >= 1  # sshd stored a cookie through xauth


def test_entrypoint_log_and_files_keep_secrets(sshd: Sshd) -> None:
    log = sshd.log.read_text()
    assert "authorized key ssh-ed25519 SHA256:" in log
    key_b64 = sshd.key.public_text.split()[1]
    for secret in [*SECRETS.values(), key_b64]:
        assert secret not in log
    p = paths_for(SshdSettings(user=sshd.user), sshd.root)
    assert stat.S_IMODE(p.secrets.stat().st_mode) == 0o600
    assert f"HF_TOKEN='{SECRETS['HF_TOKEN']}'" in p.secrets.read_text() or \
        f"HF_TOKEN={SECRETS['HF_TOKEN']}" in p.secrets.read_text()
    for f in (p.config, p.profile, p.authorized_keys):
        text = f.read_text()
        assert all(s not in text for s in SECRETS.values()), f
    assert "PasswordAuthentication no" in p.config.read_text()


def test_login_shell_gets_container_settings_and_secrets(sshd: Sshd) -> None:
    p = paths_for(SshdSettings(user=sshd.user), sshd.root)
    res = sshd.ssh(f'. {p.profile}; echo "$VLA_DEVICE $HF_TOKEN"',
                   options=("-i", str(sshd.key.private), "-o", "IdentitiesOnly=yes"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["cpu", SECRETS["HF_TOKEN"]]


def _key() -> SshdSettings:
    line = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuF3AxkXOqFVb2Wd1C8D8Zb2ZRbUYF3aM4U7bGvKkqH user@host")
    return SshdSettings(user="vla", port=2222, keys=tuple(parse_public_keys(line)))


def test_config_is_a_pure_function_of_settings_and_root(tmp_path: Path) -> None:
    s = _key()
    text = render_sshd_config(s, tmp_path)
    assert text == render_sshd_config(s, tmp_path)
    assert "Port 2222\n" in text and "AllowUsers vla\n" in text and "PermitRootLogin no\n" in text
    assert f"AuthorizedKeysFile {tmp_path}/etc/ssh/authorized_keys/%u\n" in text
    assert f"HostKey {tmp_path}/etc/ssh/ssh_host_ed25519_key\n" in text
    assert "X11Forwarding yes\n" in text and "PasswordAuthentication no\n" in text
    root_cfg = render_sshd_config(SshdSettings(user="root", keys=s.keys), tmp_path)
    assert "PermitRootLogin prohibit-password\n" in root_cfg


def test_session_environment_splits_secrets(tmp_path: Path) -> None:
    env = {"VLA_MODEL_PATH": "openvla/openvla-7b", "PATH": "/opt/venv/bin:/usr/bin", "HOME": "/root",
           "TS_AUTHKEY": SECRETS["TS_AUTHKEY"], "HF_TOKEN": SECRETS["HF_TOKEN"],
           "WANDB_API_KEY": SECRETS["WANDB_API_KEY"], "WANDB_DIR": "/workspace/vla-rl/outputs"}
    public, secret = session_environment(env)
    assert public == {"VLA_MODEL_PATH": "openvla/openvla-7b", "PATH": "/opt/venv/bin:/usr/bin",
                      "WANDB_DIR": "/workspace/vla-rl/outputs"}
    assert secret == {"HF_TOKEN": SECRETS["HF_TOKEN"], "WANDB_API_KEY": SECRETS["WANDB_API_KEY"]}
    profile = render_profile(public, tmp_path / "s.env", "/workspace/vla-rl")
    assert "export VLA_MODEL_PATH=openvla/openvla-7b" in profile
    assert all(v not in profile for v in SECRETS.values())
