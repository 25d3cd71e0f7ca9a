"""Free ports for the agents the benchmarks start (tools/bench.py and its modes)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port p with p to p + 3 free on ``host`` (an agent's data, gossip, metrics and direct
    ports)."""
    for _ in range(200):
        socks = [socket.socket() for _ in range(4)]
        try:
            socks[0].bind((host, 0))
            port = socks[0].getsockname()[1]
            for i, s in enumerate(socks[1:], 1):
                s.bind((host, port + i))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no free run of ports on {host}")
