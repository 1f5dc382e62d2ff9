"""Connectivity for remote deployment: Tailscale in userspace mode, the SSH tunnel keeper, the training
container's sshd, waiting for the robot peer, and the container entrypoint that ties them together.

Every module separates pure decisions (argv lists, config text, parsed status) from the few functions that
run processes, so the decisions are unit-tested and the processes are tested against real daemons.
"""
