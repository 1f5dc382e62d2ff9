"""``crane-x7-vla doctor``: what this machine can run, and what to install for what it cannot.

Every probe runs in a subprocess-free, exception-safe way: a missing or broken package is a finding,
never a crash.
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


PACKAGES: tuple[tuple[str, str, str], ...] = (
    # (distribution, import name, what to install when missing)
    ("torch", "torch", "CPU: pip install torch==2.13.0 ; GPU: pip install torch"),
    ("transformers", "transformers", "scripts/install.sh model"),
    ("timm", "timm", "scripts/install.sh model"),
    ("peft", "peft", "scripts/install.sh model"),
    ("websockets", "websockets", "scripts/install.sh"),
    ("cbor2", "cbor2", "scripts/install.sh"),
    ("mujoco", "mujoco", "scripts/install.sh mujoco"),
    ("mani-skill", "mani_skill", "scripts/install.sh maniskill (Debian 12: Mesa >= 25 from bookworm-backports)"),
    ("genesis-world", "genesis", "scripts/install.sh genesis"),
    ("wandb", "wandb", "scripts/install.sh train"),
    ("tensorboard", "tensorboard", "scripts/install.sh train"),
)


def check_packages() -> list[Finding]:
    out = []
    for dist, _module, fix in PACKAGES:
        v = _version(dist)
        out.append(Finding(dist, v is not None, v or "not installed", "" if v else fix))
    return out


def check_gpu() -> list[Finding]:
    out = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
            gpus = res.stdout.strip() or res.stderr.strip()
            out.append(Finding("nvidia-smi", res.returncode == 0, gpus.replace("\n", "; ")))
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.append(Finding("nvidia-smi", False, str(exc), "check the NVIDIA driver / --gpus all"))
    else:
        out.append(Finding("nvidia-smi", False, "not found (CPU only)",
                           "for GPU inference run the container with --gpus all and nvidia-container-toolkit"))
    if _version("torch"):
        try:
            torch = importlib.import_module("torch")
            if torch.cuda.is_available():
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                out.append(Finding("torch.cuda", True, f"CUDA {torch.version.cuda}: {', '.join(names)}"))
            else:
                out.append(Finding("torch.cuda", False, f"torch {torch.__version__} sees no CUDA device",
                                   "CPU works for tiny models; use a GPU for OpenVLA-7B"))
        except Exception as exc:  # a broken torch install is a finding, not a crash
            out.append(Finding("torch.cuda", False, f"import failed: {exc}", "reinstall torch"))
    return out


def check_rendering() -> list[Finding]:
    out = []
    for lib, fix in (("EGL", "apt-get install libegl1"), ("OSMesa", "apt-get install libosmesa6"),
                     ("vulkan", "apt-get install libvulkan1 mesa-vulkan-drivers")):
        path = ctypes.util.find_library(lib)
        out.append(Finding(f"lib{lib}", path is not None, path or "not found", "" if path else fix))
    icd_dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
    icds = sorted(f for d in icd_dirs if os.path.isdir(d) for f in os.listdir(d))
    out.append(Finding("vulkan ICDs", bool(icds), ", ".join(icds) or "none",
                       "" if icds else "apt-get install mesa-vulkan-drivers (bookworm-backports on Debian 12)"))
    try:
        mesa = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "mesa-vulkan-drivers"],
                              capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        mesa = ""
    if mesa:
        major = int(mesa.split(".")[0]) if mesa.split(".")[0].isdigit() else 0
        out.append(Finding("mesa-vulkan-drivers", major >= 25, mesa,
                           "" if major >= 25 else "ManiSkill/SAPIEN CPU rendering needs Mesa >= 25 "
                           "(Debian 12: apt-get install -t bookworm-backports mesa-vulkan-drivers)"))
    return out


def check_simulators() -> list[Finding]:
    out = []
    for name, module in (("mujoco", "mujoco"), ("maniskill", "mani_skill"), ("genesis", "genesis")):
        try:
            importlib.import_module(module)
            out.append(Finding(f"simulator {name}", True, "imports"))
        except Exception as exc:  # any import failure is reported, whatever its type
            out.append(Finding(f"simulator {name}", False, f"{type(exc).__name__}: {exc}"[:200],
                               f"scripts/install.sh {name}"))
    out.append(Finding("simulator isaacsim", False, "not supported here",
                       "Isaac Sim needs an RTX GPU and NVIDIA's isaacsim packages; use maniskill or genesis"))
    return out


def run_checks() -> list[Finding]:
    base = [Finding("python", True, f"{platform.python_version()} ({platform.machine()})")]
    return base + check_packages() + check_gpu() + check_rendering() + check_simulators()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def main(args: argparse.Namespace) -> int:
    findings = run_checks()
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="crane-x7-vla doctor")
    for col in ("check", "status", "detail", "to fix"):
        table.add_column(col)
    for f in findings:
        table.add_row(f.name, "[green]ok[/]" if f.ok else "[yellow]missing[/]", f.detail, f.fix)
    Console().print(table)
    return 0
