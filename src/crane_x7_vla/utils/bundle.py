"""Move a run between machines: a tar archive split into size-capped parts, with a checksummed manifest.

Rented GPU machines come and go (spot instances, per-session leases), and what may be carried to or from one is
often capped per file or per transfer. A bundle directory holds ``part-000.tar``, ``part-001.tar``, ... (each at
most ``part_bytes``) and ``manifest.json`` (every part's size and SHA-256, plus the caller's metadata). The parts
are one uncompressed tar stream cut into pieces: compression gains little on model weights and costs minutes of
CPU. The stdlib ``tarfile`` does the archive; what no library does is the cutting into parts and checking them
on the way back, which is the little written here.

Writing builds the bundle under a temporary name and renames it into place; reading checks every part against
the manifest before anything is unpacked, and unpacks into a temporary directory that is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from crane_x7_vla.utils.atomic import atomic_directory

MANIFEST = "manifest.json"
FORMAT = "crane-x7-vla-bundle/1"


class BundleError(RuntimeError):
    """A bundle is incomplete, corrupted, or would overwrite something."""


class _PartWriter:
    """A write-only stream that starts a new part file every ``part_bytes`` bytes and hashes each part."""

    def __init__(self, directory: Path, part_bytes: int) -> None:
        if part_bytes < tarfile.RECORDSIZE:
            raise ValueError(f"part_bytes must be at least {tarfile.RECORDSIZE} (one tar record), got {part_bytes}")
        self.directory, self.part_bytes = directory, part_bytes
        self.parts: list[dict[str, Any]] = []
        self._fh: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._size = 0

    def _roll(self) -> None:
        self._finish()
        name = f"part-{len(self.parts):03d}.tar"
        self._fh = open(self.directory / name, "wb")  # noqa: SIM115 (closed in _finish)
        self.parts.append({"name": name})
        self._hash, self._size = hashlib.sha256(), 0

    def _finish(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self.parts[-1].update(bytes=self._size, sha256=self._hash.hexdigest())
            self._fh = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._fh is None or self._size == self.part_bytes:
                self._roll()
            assert self._fh is not None
            chunk = view[: self.part_bytes - self._size]
            self._fh.write(chunk)
            self._hash.update(chunk)
            self._size += len(chunk)
            view = view[len(chunk):]
        return len(data)

    def close(self) -> None:
        self._finish()


class _PartReader:
    """A read-only stream over the parts, in order (what ``tarfile`` in stream mode needs: ``read``)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._fh: BinaryIO | None = None

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._fh is None:
                if not self._paths:
                    break
                self._fh = open(self._paths.pop(0), "rb")  # noqa: SIM115 (closed when exhausted or in close)
            chunk = self._fh.read(-1 if n < 0 else n - len(out))
            if not chunk:
                self._fh.close()
                self._fh = None
                continue
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def __enter__(self) -> _PartReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_bundle(out_dir: Path, files: Mapping[str, Path], *, part_bytes: int,
                 metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Archive ``files`` (name in the bundle -> file on disk) into ``out_dir``; returns the manifest written.

    ``out_dir`` must not exist yet (a bundle is never half-overwritten)."""
    if out_dir.exists():
        raise BundleError(f"{out_dir} already exists; export into a new directory")
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise BundleError(f"cannot bundle missing files: {', '.join(missing[:3])}")
    with atomic_directory(out_dir) as tmp:
        writer = _PartWriter(tmp, part_bytes)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for name in sorted(files):
                tar.add(str(files[name]), arcname=name, recursive=False)
        writer.close()
        manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "files": len(files), "parts": writer.parts, "metadata": dict(metadata or {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} holds no {MANIFEST}: not a bundle directory (copy all of it, parts included)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """Check every part's presence, size and SHA-256 against the manifest; returns the manifest."""
    manifest = read_manifest(bundle)
    for part in manifest["parts"]:
        path = bundle / part["name"]
        if not path.is_file():
            raise BundleError(f"{bundle}: part {part['name']} is missing; copy every part-*.tar of the bundle")
        size = path.stat().st_size
        if size != part["bytes"]:
            raise BundleError(f"{path}: {size} bytes, the manifest says {part['bytes']} (a truncated copy?)")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != part["sha256"]:
            raise BundleError(f"{path}: SHA-256 differs from the manifest (a corrupted copy); copy it again")
    return manifest


def read_bundle(bundle: Path, dest: Path) -> dict[str, Any]:
    """Verify ``bundle`` and unpack it into ``dest``, which must not exist yet; returns the manifest."""
    manifest = verify_bundle(bundle)
    if dest.exists():
        raise BundleError(f"{dest} already exists; unpack into a new directory")
    with atomic_directory(dest) as tmp, _PartReader([bundle / p["name"] for p in manifest["parts"]]) as reader, \
            tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        tar.extractall(tmp, filter="data")  # plain files under tmp only: no links, devices or absolute paths
    return manifest
