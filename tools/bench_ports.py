"""Free ports for the agents the benchmarks start (tools/bench.py and its modes)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port p with p and p + 1 free on ``host`` (an agent's data and gossip ports)."""
    for _ in range(200):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind((host, 0))
                port = a.getsockname()[1]
                b.bind((host, port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free pair of ports on {host}")
