"""Telling "no agent listens there" from "the agent is slow", fast: ``Probe`` and ``Reach``.

ZeroMQ hides a refused TCP connect: a DEALER whose agent is not running keeps retrying in the
background, and the request just waits its timeout (``connect_timeout_s``, 3 s), so every
command took 3.2 s when no agent ran (issue 13). A link that has not completed its ZMTP
handshake within ``PROBE_AFTER_S`` is probed here with one plain non-blocking TCP connect to
the same address:

- refused (RST: nothing listens on that port) or unreachable (no route): the link's calls fail
  at once with ``NodeUnavailable`` naming the address and why;
- accepted (an agent that is stopped or busy still has its port open: the kernel completes the
  connect): nothing changes, the request waits its normal timeout;
- no answer yet (a remote host that drops packets): looked at again every ``PROBE_POLL_S``
  until the request's own timeout.

A probe connects to IP literals (and ``localhost``) only: resolving a host name here could
block the caller; such addresses wait their timeout as before. The probe's socket closes
with a reset, so the agent sees an accepted connection end at once (``agents/limits.py``
counts it and forgets it).

Not here: the links themselves (``mesh/client/links.py``, ``mesh/security/link.py``), where
requests wait (``Core.execute`` in ``mesh/client/core.py``).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct

PROBE_AFTER_S = 0.05  # a link without a handshake after this long is probed
PROBE_POLL_S = 0.02  # how often a probe still connecting is looked at

PENDING, LISTENING = "pending", "listening"
_IN_PROGRESS = {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN}


def _endpoint(address: str) -> tuple[int, tuple] | None:
    """(family, sockaddr) of a ``tcp://host:port`` address with an IP literal; else None."""
    if not address.startswith("tcp://"):
        return None
    host, _, port = address[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        return None
    if ip.version == 6:
        return socket.AF_INET6, (str(ip), number, 0, 0)
    return socket.AF_INET, (str(ip), number)


class Probe:
    """One non-blocking TCP connect. ``state()``: ``PENDING``, ``LISTENING``, or why nothing
    listens (``"refused the connection"``, ``"is unreachable (No route to host)"``)."""

    def __init__(self, family: int, sockaddr: tuple):
        self._sock: socket.socket | None = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self._state = PENDING
        self._settle(self._sock.connect_ex(sockaddr))

    def _settle(self, code: int) -> None:
        if code in _IN_PROGRESS:
            return
        if code == 0:
            self._state = LISTENING
        elif code == errno.ECONNREFUSED:
            self._state = "refused the connection"
        else:
            self._state = f"is unreachable ({os.strerror(code)})"
        self.close()

    def state(self) -> str:
        if self._state == PENDING and self._sock is not None:
            poller = select.poll()
            poller.register(self._sock, select.POLLOUT)
            if poller.poll(0):
                self._settle(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        return self._state

    def close(self) -> None:
        if self._sock is not None:
            # a reset, not a FIN: no TIME_WAIT here, and the agent drops it at once
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._sock.close()
            self._sock = None


class Reach:
    """The probes of one client's links, by address. ``look(address, silent_s)`` is asked
    while a link's handshake has not completed (it has been silent ``silent_s``): it returns
    why nothing listens there, or None (go on waiting); ``poll_s(address)`` is how long the
    caller may wait before looking again (None: its normal timeout)."""

    def __init__(self) -> None:
        self._probes: dict[str, Probe | str] = {}  # a Probe, or its settled state

    def look(self, address: str, silent_s: float) -> str | None:
        found = self._probes.get(address)
        if found is None:
            if silent_s < PROBE_AFTER_S:
                return None
            endpoint = _endpoint(address)
            if endpoint is None:
                self._probes[address] = LISTENING  # not probed: wait as before
                return None
            try:
                found = Probe(*endpoint)
            except OSError:  # out of descriptors, no such family: not a verdict
                self._probes[address] = LISTENING
                return None
            self._probes[address] = found
        state = found if isinstance(found, str) else found.state()
        if state != PENDING:
            self._probes[address] = state
        return None if state in (PENDING, LISTENING) else state

    def poll_s(self, address: str, silent_s: float) -> float | None:
        found = self._probes.get(address)
        if found is None:
            return max(0.0, PROBE_AFTER_S - silent_s) + 0.001
        if isinstance(found, Probe):
            return PROBE_POLL_S
        return None

    def forget(self, address: str) -> None:
        """Drop what is known of ``address`` (its link was dropped or has shaken hands)."""
        found = self._probes.pop(address, None)
        if isinstance(found, Probe):
            found.close()

    def close(self) -> None:
        for address in list(self._probes):
            self.forget(address)
