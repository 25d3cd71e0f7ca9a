"""Waiting for a reply without going to sleep, for a moment (the agent's loop, ``MeshClient``).

A process that blocks in ``poll`` and is woken by a socket pays for the sleep and the wake:
measured on this project's 2-core VM, 50-70 us of CPU each, on both sides of a request, which
is most of what a 4 KiB request/reply costs (docs/performance). When the answer is due within
tens of microseconds, polling without a timeout for that long first costs less CPU than the
sleep and halves the round trip (``tools/bench.py small``: one in flight).

- ``MeshClient`` (threads) polls for up to ``CLIENT_SPIN_S`` before it blocks on a plain socket
  (the same-host and direct paths): a reply of a small request comes in that time; a longer
  wait loses that much CPU once. ``AsyncMeshClient`` never does: its event loop has other
  tasks to run.
- The agent's loop polls for up to ``AGENT_SPIN_S`` after a turn only while work comes in
  quick succession on plain sockets (the last wait was that short: a client in a closed loop);
  an agent whose requests come sparsely, or none, sleeps at once as before.
- Neither spins for ZeroMQ sockets: libzmq's I/O thread moves their messages, and a spinning
  thread takes the CPU it needs (batches over ZeroMQ ran 10-20 % slower with it), nor on a
  machine with one CPU, where the other side needs it to answer.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

CLIENT_SPIN_S = 50e-6
AGENT_SPIN_S = 100e-6


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


CAN_SPIN = _cpus() > 1


def spin_poll(poll: Callable[[int], Any], spin_s: float) -> Any:
    """``poll(0)`` again and again for up to ``spin_s`` seconds: the first non-empty answer,
    else the last (empty) one."""
    end = time.perf_counter() + spin_s
    while True:
        got = poll(0)
        if got or time.perf_counter() >= end:
            return got
