#!/bin/sh
# VLA-RL container entrypoint: without arguments it runs sshd for user vla (SSH_PUBLIC_KEY required);
# with arguments it runs them directly (e.g. a training command). Logic: crane_x7_vla.net.entrypoint.
set -eu
exec crane-x7-vla entrypoint --role vla-rl -- "$@"
