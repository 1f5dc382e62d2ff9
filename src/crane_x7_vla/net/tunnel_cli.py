"""``crane-x7-vla tunnel ssh://user@robot[:port]``: keep the SSH tunnel to the robot's rosbridge alive.

Run it on the GPU host when the GPU host can reach the robot's SSH server; afterwards the inference service
uses ``ROSBRIDGE_HOST=localhost ROSBRIDGE_PORT=<local-port>``. For a robot behind NAT run the reverse on the
robot instead (see docs/deployment.md): ``ssh -N -R 9090:localhost:9090 -p PORT root@gpu-host``.
"""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="ssh://user@robot[:port] (the machine that can reach rosbridge)")
    parser.add_argument("--local-port", type=int, default=9090, help="port opened on 127.0.0.1 here (default 9090)")
    parser.add_argument("--remote-port", type=int, default=9090,
                        help="rosbridge port as seen from the robot (default 9090)")
    parser.add_argument("--remote-host", default="localhost",
                        help="rosbridge host as seen from the robot (default localhost)")
    parser.add_argument("--identity", "-i", metavar="FILE", help="private key file (key auth only; no prompts)")
    parser.add_argument("--ssh-option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="extra ssh -o option, repeatable (e.g. StrictHostKeyChecking=yes)")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="longest wait between reconnects, s")
    parser.add_argument("--max-attempts", type=int, default=None,
                        help="give up after this many failed attempts (default: never)")


def main(args: argparse.Namespace) -> int:
    from crane_x7_vla.net.redact import setup_logging
    from crane_x7_vla.net.tunnel import (
        Backoff,
        TunnelError,
        TunnelKeeper,
        TunnelSpec,
        check_port,
        check_ssh_option,
        parse_target,
    )

    log = setup_logging("tunnel", os.environ)
    try:
        user, host, port = parse_target(args.target)
        if args.identity and not os.path.isfile(args.identity):
            raise TunnelError(f"--identity {args.identity!r} does not exist; pass the private key file")
        spec = TunnelSpec(user=user, host=host, port=port,
                          local_port=check_port("--local-port", args.local_port),
                          remote_port=check_port("--remote-port", args.remote_port),
                          remote_host=args.remote_host, identity=args.identity,
                          ssh_options=tuple(check_ssh_option(o) for o in args.ssh_option))
        if args.max_backoff <= 0:
            raise TunnelError("--max-backoff must be positive (seconds)")
    except TunnelError as exc:
        print(f"crane-x7-vla tunnel: {exc}", file=sys.stderr)
        return 2
    keeper = TunnelKeeper(spec, backoff=Backoff(cap=args.max_backoff), logger=log,
                          max_attempts=args.max_attempts)
    return keeper.run()
