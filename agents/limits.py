"""Keeping an agent inside its file-descriptor limit, whoever connects to it.

Every TCP connection libzmq accepts costs the agent a file descriptor, and libzmq has no cap of
its own: 20,548 idle connections against a 20,000 limit left the agent unable to open anything
(reading host memory raised EMFILE), and creating a socket at that point makes libzmq abort.

Covers:
- ``raise_fd_limit``: at start, the soft limit goes up to the hard one (as root the hard one too,
  up to ``FD_LIMIT_WANT`` and the kernel's ``/proc/sys/fs/nr_open``).
- ``connection_cap``: how many accepted connections the agent allows, below the limit, leaving
  room for its own files, peers and moves.
- ``ConnectionGuard``: counts the connections each listening socket (the ROUTER and the PUB) holds
  from a libzmq socket monitor (ACCEPTED minus DISCONNECTED) and, when all of them together
  reach the cap, unbinds the socket holding the most. libzmq then closes every connection it
  accepted on that endpoint (clients' DEALERs reconnect by themselves, a request in flight times
  out in the client); the socket is bound again after ``REBIND_AFTER_S``. Idle connections that
  never speak ZMTP are closed by libzmq after the handshake interval (``mesh/sockets.py``), so a
  flood of them ends by itself.

Does not cover: authenticating who may connect (a separate issue), the sockets' other options
(``mesh/sockets.py``), the loop that polls the monitors (``agents/server.py``).
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

import zmq
from zmq.utils.monitor import parse_monitor_message

from mesh.sockets import AGENT_FD_LIMIT

log = logging.getLogger("mesh.agent")

FD_LIMIT_WANT = AGENT_FD_LIMIT  # the systemd unit asks for the same (mesh/nodes/nodectl.py)
MAX_CONNECTIONS = 10_000  # accepted connections, ROUTER and PUB together, at most
FD_RESERVE_MIN = 256  # descriptors always left for the agent's own use
REBIND_AFTER_S = 1.0
MONITOR_BATCH = 4096  # monitor events read per loop turn
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


def raise_fd_limit(want: int = FD_LIMIT_WANT) -> int:
    """Raise RLIMIT_NOFILE towards ``want``; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = want
        try:
            new = max(hard, min(want, nr_open))
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, new))
            return new
        except (OSError, ValueError):
            pass
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(fd_limit: int, max_connections: int = MAX_CONNECTIONS) -> int:
    """Accepted connections allowed under ``fd_limit``: a fifth of it (at least
    ``FD_RESERVE_MIN``) stays for the agent's files, its peers and its moves."""
    if fd_limit == resource.RLIM_INFINITY or fd_limit <= 0:
        return max_connections
    reserve = max(FD_RESERVE_MIN, fd_limit // 5)
    return max(16, min(max_connections, fd_limit - reserve))


class _Listener:
    def __init__(self, ctx: zmq.Context, sock: zmq.Socket, endpoint: str, name: str):
        self.sock, self.endpoint, self.name = sock, endpoint, name
        address = f"inproc://mesh-monitor-{name}-{id(sock):x}"
        sock.monitor(address, _EVENTS)
        # libzmq blocks its I/O thread when a monitor's queue is full: ours has no limit, and
        # the loop reads it every turn
        self.monitor = ctx.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.LINGER, 0)
        self.monitor.setsockopt(zmq.RCVHWM, 0)
        self.monitor.connect(address)
        self.connections = 0
        self.bound = True
        self.rebind_at = 0.0

    def drain(self) -> None:
        for _ in range(MONITOR_BATCH):
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if not self.bound:
                continue  # events of connections the unbind closed
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.connections += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connections = max(0, self.connections - 1)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)


class ConnectionGuard:
    """Caps the connections that ``listeners`` ((socket, endpoint it is bound to, name)) accept
    at ``cap`` together. The loop polls ``monitors``, calls ``check(now)`` when they have
    events and ``tick(now)`` every turn (it binds unbound sockets again when it is time);
    ``wake_in(now)`` is how long the loop may sleep."""

    def __init__(self, ctx: zmq.Context, listeners: list[tuple[zmq.Socket, str, str]], cap: int):
        self.cap = cap
        self.unbinds = 0
        self._listeners = [_Listener(ctx, *entry) for entry in listeners]

    @property
    def monitors(self) -> list[zmq.Socket]:
        return [listener.monitor for listener in self._listeners]

    @property
    def connections(self) -> int:
        return sum(listener.connections for listener in self._listeners)

    def check(self, now: float) -> None:
        for listener in self._listeners:
            listener.drain()
        if self.connections < self.cap:
            return
        worst = max((x for x in self._listeners if x.bound), key=lambda x: x.connections,
                    default=None)
        if worst is None:
            return
        self.unbinds += 1
        log.warning("%d connections reach the cap of %d: unbinding %s %s for %.1f s (its %d "
                    "connections are closed)", self.connections, self.cap, worst.name,
                    worst.endpoint, REBIND_AFTER_S, worst.connections)
        worst.sock.unbind(worst.endpoint)
        worst.bound, worst.connections, worst.rebind_at = False, 0, now + REBIND_AFTER_S

    def tick(self, now: float) -> None:
        for listener in self._listeners:
            if listener.bound or now < listener.rebind_at:
                continue
            listener.drain()  # the closed connections' last events
            try:
                listener.sock.bind(listener.endpoint)
            except zmq.ZMQError as exc:
                log.error("binding %s %s again failed (%s); retrying in %.1f s", listener.name,
                          listener.endpoint, exc, REBIND_AFTER_S)
                listener.rebind_at = now + REBIND_AFTER_S
                continue
            listener.bound = True
            log.warning("%s %s is bound again", listener.name, listener.endpoint)

    def wake_in(self, now: float) -> float | None:
        waits = [x.rebind_at - now for x in self._listeners if not x.bound]
        return max(0.0, min(waits)) if waits else None

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
