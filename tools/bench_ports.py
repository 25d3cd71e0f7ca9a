"""Free ports for the agents the benchmarks start (tools/bench.py and its modes)."""

from __future__ import annotations

import contextlib
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port p with p to p + 3 free on ``host`` (an agent's data, gossip, metrics and direct
    ports)."""
    for _ in range(200):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind((host, 0))
            port = first.getsockname()[1]
            try:
                for i in (1, 2, 3):
                    held.enter_context(socket.socket()).bind((host, port + i))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free run of ports on {host}")
