#!/usr/bin/env bash
# Rebuild the *installed* mani_skill as a slim wheel in wheels/ for GPU machines without network, where one file
# transfer is capped at 64 MiB (the full mani_skill wheel is ~101 MB; sapien's own wheel, ~51 MB, fits as is).
#   scripts/build_slim_maniskill_wheel.sh [--check]
# Dropped: the bundled robot models (our CRANE-X7 is generated from the spec), scene-builder assets, environment
# maps, demo scenes and examples -- nothing PickPlace-CRANE-X7 loads. --check imports the slim package in place of
# the installed one and builds/steps the Lift "maniskill" simulator once.
# Environment: PYTHON (default: .venv/bin/python of this repo).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
out="$repo/wheels"
mkdir -p "$out"

wheel="$("$py" - "$out" <<'PY'
"""Re-pack an installed distribution from its RECORD, minus unused asset trees (a wheel is a zip + RECORD)."""
import base64, csv, hashlib, io, os, re, sys, tempfile, zipfile
from importlib.metadata import distribution

EXCLUDE = [
    r"^mani_skill/assets/robots/",
    r"^mani_skill/assets/environment_maps/",
    r"^mani_skill/assets/maniskill2-scene-2\.glb$",
    r"^mani_skill/utils/scene_builder/.*/assets/",
    r"\.hdr$",  # environment maps of other scenes
    r"^mani_skill/examples/",
    r"(^|/)__pycache__/",
    r"\.pyc$",
]
drop = re.compile("|".join(EXCLUDE))
dist = distribution("mani_skill")
name, version = dist.metadata["Name"].replace("-", "_"), dist.version
info_dir = f"{name}-{version}.dist-info"
out_dir = sys.argv[1]
target = os.path.join(out_dir, f"{name}-{version}-py3-none-any.whl")

def digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

record_rows = []
fd, tmp = tempfile.mkstemp(prefix=".slim-", suffix=".whl", dir=out_dir)
os.close(fd)
kept = skipped = 0
try:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for f in dist.files or []:
            rel = f.as_posix()
            if rel.startswith("..") or rel.endswith("RECORD") or rel.endswith("INSTALLER") or rel.endswith("REQUESTED"):
                continue  # scripts outside site-packages and install-time metadata are not part of the wheel
            if drop.search(rel):
                skipped += 1
                continue
            path = f.locate()
            if not os.path.isfile(path):
                continue
            data = open(path, "rb").read()
            zf.writestr(rel, data)
            record_rows.append((rel, digest(data), str(len(data))))
            kept += 1
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerows(record_rows)
        w.writerow((f"{info_dir}/RECORD", "", ""))
        zf.writestr(f"{info_dir}/RECORD", buf.getvalue())
    os.replace(tmp, target)  # atomic: a half-written wheel never appears under its final name
finally:
    if os.path.exists(tmp):
        os.unlink(tmp)
print(f"kept {kept} files, dropped {skipped}", file=sys.stderr)
print(target)
PY
)"
size=$(stat -c %s "$wheel")
printf '[slim-wheel] %s: %.1f MB (limit per transfer: 64 MiB = 67.1 MB)\n' "$wheel" "$(echo "$size / 1000000" | bc -l)" >&2
[ "$size" -lt 67108864 ] || { echo "[slim-wheel] error: still over 64 MiB; extend EXCLUDE" >&2; exit 1; }

if [ "${1:-}" = --check ]; then
  tmpd="$(mktemp -d)"; trap 'rm -rf "$tmpd"' EXIT
  "$py" -m zipfile -e "$wheel" "$tmpd"
  PYTHONPATH="$tmpd:$repo/src" "$py" - <<'PY'
import mani_skill, numpy as np
assert "/tmp" in mani_skill.__file__, f"not the slim package: {mani_skill.__file__}"
from crane_x7_vla.lift.registry import create_simulator
from crane_x7_vla.lift.types import SimulatorConfig
sim = create_simulator("maniskill", SimulatorConfig(image_size=(64, 64)))
obs, _ = sim.reset(seed=0)
r = sim.step(obs.qpos)
assert obs.rgb_image.shape == (1, 64, 64, 3) and np.isfinite(r.observation.qpos).all()
sim.close()
print("[slim-wheel] check ok: PickPlace-CRANE-X7 builds, renders and steps from the slim package")
PY
fi
echo "$wheel"
