"""SSH_PUBLIC_KEY validation: the pure parser and ssh-keygen as the authority; no key material in errors."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from crane_x7_vla.net.sshkeys import SshKeyError, parse_public_keys, validate_public_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name, args in {"ed25519": ["-t", "ed25519"], "rsa1024": ["-t", "rsa", "-b", "1024"],
                       "ecdsa": ["-t", "ecdsa"]}.items():
        subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", f"{name}@test", "-f", str(d / name)],
                       check=True, timeout=60)
        out[name] = (d / f"{name}.pub").read_text()
        out[f"{name}_private"] = (d / name).read_text()
    return out


def test_valid_keys_parse_with_openssh_fingerprints(keys: dict[str, str], tmp_path: Path) -> None:
    text = keys["ed25519"] + "\n# a comment\n" + keys["ecdsa"]
    parsed = validate_public_keys(text)
    assert [k.key_type for k in parsed] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]
    (tmp_path / "k.pub").write_text(keys["ed25519"])
    ref = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True,
                         check=True).stdout.split()[1]
    assert parsed[0].fingerprint == ref
    assert parsed[0].line() == keys["ed25519"].strip()


@pytest.mark.parametrize("mutate, message", [
    (lambda k: "", "not set"),
    (lambda k: "\n# only a comment\n", "holds no key"),
    (lambda k: k.split()[1], "does not start with a key type"),  # base64 only, no type
    (lambda k: "ssh-dss " + k.split()[1], "not supported"),
    (lambda k: 'command="rm -rf /" ' + k, "options before the key"),
    (lambda k: "ssh-ed25519", "base64 key data is missing"),
    (lambda k: "ssh-ed25519 " + k.split()[1][:-7] + " x", "not valid base64"),
    (lambda k: "ssh-rsa " + k.split()[1], "does not match its type"),
])
def test_malformed_keys_are_refused_without_echoing_them(keys: dict[str, str], mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    text = mutate(keys["ed25519"])
    with pytest.raises(SshKeyError, match=message) as info:
        validate_public_keys(text)
    assert keys["ed25519"].split()[1][:20] not in str(info.value)


def test_private_key_is_refused_without_echo(keys: dict[str, str]) -> None:
    with pytest.raises(SshKeyError, match="PRIVATE key") as info:
        parse_public_keys(keys["ed25519_private"])
    body = keys["ed25519_private"].splitlines()[1]
    assert body[:16] not in str(info.value)


def test_ssh_keygen_is_the_authority(keys: dict[str, str]) -> None:
    # A blob with the right type prefix but a wrong-length key passes the pure parser; OpenSSH refuses it.
    blob = base64.b64decode(keys["ed25519"].split()[1])
    broken = "ssh-ed25519 " + base64.b64encode(blob[:-5]).decode()
    assert parse_public_keys(broken)
    with pytest.raises(SshKeyError, match="ssh-keygen rejects"):
        validate_public_keys(broken)


def test_short_rsa_keys_are_refused(keys: dict[str, str]) -> None:
    with pytest.raises(SshKeyError, match="only 1024 bits"):
        validate_public_keys(keys["rsa1024"])
