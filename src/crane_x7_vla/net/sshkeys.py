"""Validate ``SSH_PUBLIC_KEY`` before it becomes an ``authorized_keys`` file.

Two layers: a pure parser (key type allow-list, strict base64, the blob's embedded type must match the
declared one: catches truncated pastes and swapped fields) and then ``ssh-keygen -l -f`` as the authority
(OpenSSH's own parser; it also reports the key size so weak RSA keys are refused). Error messages name
the problem and the fix but never echo key material; keys are identified by their SHA256 fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

ALLOWED_TYPES: frozenset[str] = frozenset({
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})
MIN_RSA_BITS = 2048
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9@.-]{2,40}$")


class SshKeyError(ValueError):
    """SSH_PUBLIC_KEY is missing or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH's ``SHA256:...`` fingerprint (unpadded base64 of the blob's SHA-256)."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"

    def line(self) -> str:
        b64 = base64.b64encode(self.blob).decode()
        return f"{self.key_type} {b64} {self.comment}".rstrip()


def _blob_type(blob: bytes) -> str | None:
    if len(blob) < 4:
        return None
    (n,) = struct.unpack(">I", blob[:4])
    if n == 0 or n > 64 or len(blob) < 4 + n:
        return None
    try:
        return blob[4:4 + n].decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_public_keys(text: str, source: str = "SSH_PUBLIC_KEY") -> list[PublicKey]:
    """Parse one or more ``type base64 [comment]`` lines; raise :class:`SshKeyError` on anything else."""
    if not text or not text.strip():
        raise SshKeyError(f"{source} is not set; pass your public key, e.g. -e {source}=\"$(cat ~/.ssh/id_ed25519.pub)\"")
    if "PRIVATE KEY" in text:
        raise SshKeyError(f"{source} contains a PRIVATE key; pass the public key (the .pub file) and keep the private key secret")
    keys: list[PublicKey] = []
    for lineno, raw in enumerate(text.strip().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        where = f"{source} line {lineno}"
        if fields[0] not in ALLOWED_TYPES:
            if "=" in fields[0] or "," in fields[0]:
                kind = "options before the key are not accepted"
            elif _TYPE_NAME.match(fields[0]) and not fields[0].startswith("AAAA"):
                kind = f"key type {fields[0]!r} is not supported"
            else:  # likely key data without its type: do not echo it
                kind = "the line does not start with a key type"
            raise SshKeyError(f"{where}: {kind}; expected 'ssh-ed25519 AAAA... comment' "
                              f"(one of {', '.join(sorted(ALLOWED_TYPES))})")
        if len(fields) < 2:
            raise SshKeyError(f"{where}: the base64 key data is missing; paste the whole line of the .pub file")
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            raise SshKeyError(f"{where}: the key data is not valid base64 (truncated or wrapped paste?); "
                              "paste the .pub file's single line unchanged") from None
        if _blob_type(blob) != fields[0]:
            raise SshKeyError(f"{where}: the key data does not match its type {fields[0]!r} (corrupted or "
                              "truncated paste?); paste the .pub file's single line unchanged")
        keys.append(PublicKey(fields[0], blob, fields[2].strip() if len(fields) > 2 else ""))
    if not keys:
        raise SshKeyError(f"{source} holds no key (only blank or comment lines); pass the .pub file's contents")
    return keys


def verify_with_ssh_keygen(key: PublicKey, ssh_keygen: str | None = None) -> int:
    """Have OpenSSH parse the key; return its size in bits. Raises :class:`SshKeyError` if it refuses."""
    exe = ssh_keygen or shutil.which("ssh-keygen")
    if exe is None:
        raise SshKeyError("ssh-keygen not found; install openssh-client (the images include it)")
    fd, path = tempfile.mkstemp(suffix=".pub")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(key.line() + "\n")
        res = subprocess.run([exe, "-l", "-f", path], capture_output=True, text=True, timeout=30, check=False)
    finally:
        os.unlink(path)
    if res.returncode != 0:
        raise SshKeyError(f"ssh-keygen rejects the key {key.fingerprint} ({key.key_type}); "
                          "generate a new one with: ssh-keygen -t ed25519")
    try:
        bits = int(res.stdout.split()[0])
    except (IndexError, ValueError):
        raise SshKeyError(f"ssh-keygen gave unexpected output for key {key.fingerprint}") from None
    if key.key_type == "ssh-rsa" and bits < MIN_RSA_BITS:
        raise SshKeyError(f"RSA key {key.fingerprint} has only {bits} bits; use ssh-keygen -t ed25519 "
                          f"(or RSA >= {MIN_RSA_BITS} bits)")
    return bits


def validate_public_keys(text: str, source: str = "SSH_PUBLIC_KEY") -> list[PublicKey]:
    keys = parse_public_keys(text, source)
    for k in keys:
        verify_with_ssh_keygen(k)
    return keys
