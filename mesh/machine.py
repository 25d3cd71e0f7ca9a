"""This machine's identity as a failure domain: two agents (or an agent and a client) with the same
one share a machine. ``$MESH_DOMAIN`` overrides it (tests that stand several machines up on one,
operators whose machines share an image and so a machine id); else ``/etc/machine-id``; else the
host name.
"""

from __future__ import annotations

import os
import socket


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
