#!/usr/bin/env bash
# Set up (or reuse) the project's virtualenv with the given extras, plus the system packages they need.
#   scripts/install.sh [EXTRAS]        e.g. scripts/install.sh model,mujoco,dev
# Environment: CRANE_X7_VENV (default: .venv in the repo; "system" = install into the current python),
#              TORCH_SPEC (default: torch==2.13.0 without a GPU, torch with one), SKIP_APT=1 to skip apt.
# Used by the README's commands, CI and both Dockerfiles, so every path is exercised by CI.
set -euo pipefail

extras="${1:-model,mujoco}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CRANE_X7_VENV:-$repo/.venv}"
log() { printf '[install] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- system packages (Debian/Ubuntu)
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_pkgs=(libegl1 libgl1 libosmesa6 libglib2.0-0)
case ",$extras," in *,dev,*) apt_pkgs+=(openssh-server openssh-client xauth shellcheck x11-apps);; esac
case ",$extras," in *,maniskill,*) apt_pkgs+=(libvulkan1);; esac
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done

# ManiSkill/SAPIEN renders on the CPU only with Mesa >= 25 lavapipe, which Debian 12 ships in
# bookworm-backports. The backports source is derived from the machine's own configured Debian source.
need_backports_mesa=0
if [[ ",$extras," == *,maniskill,* ]] && grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
  ver="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
  case "$ver" in 2[5-9].*|[3-9][0-9].*) ;; *) need_backports_mesa=1;; esac
fi

if [ "${SKIP_APT:-0}" != 1 ] && { [ ${#missing[@]} -gt 0 ] || [ $need_backports_mesa = 1 ]; }; then
  if command -v apt-get >/dev/null && as_root true 2>/dev/null; then
    if [ $need_backports_mesa = 1 ] && [ ! -e /etc/apt/sources.list.d/crane-x7-backports.sources ]; then
      uri="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
      [ -n "$uri" ] || uri="$(awk '$1=="deb" && $3=="bookworm"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
      if [ -n "$uri" ]; then
        log "adding bookworm-backports from the configured Debian source"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
          "$uri" | as_root tee /etc/apt/sources.list.d/crane-x7-backports.sources >/dev/null
      fi
    fi
    log "apt-get install ${missing[*]:-} (mesa from backports: $need_backports_mesa)"
    as_root apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ $need_backports_mesa = 1 ]; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
    fi
  else
    log "warning: cannot install system packages ${missing[*]:-} (no apt-get or no root); continuing"
  fi
fi

# ---------------------------------------------------------------- virtualenv
if [ "$venv" = system ]; then
  py="$(command -v python3)"
else
  if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv"
    python3 -m venv "$venv"
  fi
  py="$venv/bin/python"
fi

stamp_constraints="$(mktemp)"; trap 'rm -f "$stamp_constraints"' EXIT
# torch first, so that nothing that depends on it pulls a CUDA build onto a CPU machine.
if [[ ",$extras," =~ ,(model|train|all|maniskill|genesis), ]] && ! "$py" -c 'import torch' 2>/dev/null; then
  if [ -z "${TORCH_SPEC:-}" ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then TORCH_SPEC=torch; else TORCH_SPEC=torch==2.13.0; fi
  fi
  log "pip install $TORCH_SPEC"
  "$py" -m pip install -q "$TORCH_SPEC"
fi
# Keep the installed torch: a dependency that asks for a newer one must not swap in a CUDA build.
if tv="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)"; then
  export PIP_CONSTRAINT="$stamp_constraints"
  printf 'torch==%s\n' "$tv" >"$PIP_CONSTRAINT"
fi

# Re-install only when pyproject.toml, the extras or the checkout location changed.
stamp_dir="${venv%/}"; [ "$venv" = system ] && stamp_dir="$repo/.install"
mkdir -p "$stamp_dir"
stamp="$stamp_dir/.crane-x7-install-$(printf '%s' "$extras" | tr ',' '-')"
want="$(sha256sum <"$repo/pyproject.toml" | cut -d' ' -f1) $repo"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  log "pip install -e .[$extras]"
  "$py" -m pip install -q -e "${repo}[$extras]"
  printf '%s' "$want" >"$stamp"
else
  log "virtualenv up to date ($extras)"
fi
