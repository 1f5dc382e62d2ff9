"""Is rosbridge reachable yet? One TCP connect, direct or through the Tailscale SOCKS5 proxy.

A diagnostic only: the entrypoint logs the answer and starts the service either way, because the service's
rosbridge client reconnects by itself (the robot may come up after the GPU container).
"""

from __future__ import annotations

import socket


def probe_tcp(host: str, port: int, proxy: str | None = None, timeout: float = 5.0) -> str | None:
    """None when ``host:port`` accepts a TCP connection (through ``proxy`` if given), else the reason."""
    try:
        if proxy:
            # python-socks is a core dependency (websockets' own proxy support uses it).
            from python_socks.sync import Proxy

            sock = Proxy.from_url(proxy).connect(dest_host=host, dest_port=port, timeout=timeout)
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
    except Exception as exc:  # every failure is a diagnostic string, never a crash
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    sock.close()
    return None
