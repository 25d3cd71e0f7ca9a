"""This machine's identity as a failure domain: two agents (or an agent and a client) with the same
one share a machine. ``$MESH_DOMAIN`` overrides it (tests that stand several machines up on one,
operators whose machines share an image and so a machine id); else ``/etc/machine-id``; else the
host name.

``kernel_key()`` is another identity, never overridden: the running kernel's. Agents with the same
share CPUs (containers and network namespaces included), which is what heartbeats cost: together
they stretch their heartbeat interval (``mesh/membership.py``: ``stretched_interval``).
"""

from __future__ import annotations

import hashlib
import os
import socket


def kernel_key() -> int:
    """This boot of this machine's kernel as a positive 31-bit int (its ``boot_id``); 0 where it
    cannot be read (then the agent counts as alone on its machine)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return 0
    return int(hashlib.sha256(boot.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF or 1


def machine_id() -> str:
    override = os.environ.get("MESH_DOMAIN", "").strip()
    if override:
        return override[:64]
    try:
        with open("/etc/machine-id") as f:
            found = f.read().strip()
    except OSError:
        found = ""
    return found[:32] or socket.gethostname()
