#!/bin/sh
# Inference container entrypoint. All logic (Tailscale, checks, service) lives in Python
# (crane_x7_vla.net.entrypoint) so it is tested; this only hands over. Arguments replace the service.
set -eu
exec crane-x7-vla entrypoint --role inference -- "$@"
