"""Every ZeroMQ socket of the mesh is made here, with its options, in one place.

    dealer(ctx, address, ...)      a client's (or an agent's, to a peer) request socket
    router(ctx, endpoint, ...)     an agent's data plane
    publisher(ctx, endpoint)       an agent's heartbeats and gossip
    subscriber(ctx, ...)           an agent's view of its peers' heartbeats

Options every socket gets: linger 0 (closing never waits for unsent messages), high-water marks
(they count messages, not bytes: the callers bound bytes with a window of chunks in flight), and
on receiving sockets a maximum message size, so a peer can never make us buffer more than one
chunk plus its header. CURVE is set here too: ``curve=(server key, our public, our secret)`` makes
a DEALER a CURVE client; ``prepare`` (``agents/access.py``: ``Access.serve``) makes a listening
socket a CURVE server before it binds. Which keys and which ZAP domain is the callers' business.

Not here: what travels on the sockets (``mesh/protocol.py``), when to send and wait (the client's
``mesh/client/core.py``, the agent's ``agents/server.py``).
"""

from __future__ import annotations

from typing import Callable

import zmq

from mesh.errors import NodeUnavailable

# Room for a reply's header on top of its payload, in MAXMSGSIZE.
HEADER_ALLOWANCE_BYTES = 64 * 1024
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
PUB_SNDHWM = 64
# A connection to an agent that has not finished the ZMTP greeting by then is closed (libzmq's
# default is 30 s), so idle TCP connections cannot hold the agent's descriptors for long.
HANDSHAKE_IVL_MS = 5000
# Connections the kernel completes before the agent's I/O thread accepts them (libzmq: 100): a
# burst of clients beyond it has its SYNs dropped and waits a second for the retry.
LISTEN_BACKLOG = 1024
# The file-descriptor limit an agent asks for at start (and its systemd unit, LimitNOFILE): each
# connection it accepts costs one, and it caps them below the limit (agents/limits.py).
AGENT_FD_LIMIT = 65536
SUB_RCVHWM = 256
# Sockets an agent's context may hold (libzmq's default is 1023): a gossip link per peer, a
# DEALER per move or pull, the listeners and their monitors.
AGENT_MAX_SOCKETS = 4096


Curve = tuple[bytes, bytes, bytes]  # (the server's public key, our public key, our secret key)
Prepare = Callable[[zmq.Socket], None]


def dealer(ctx: zmq.Context, address: str, *, hwm: int, max_message_bytes: int,
           curve: Curve | None = None, before_connect: Prepare | None = None) -> zmq.Socket:
    """A DEALER connected to ``address`` that accepts replies of up to ``max_message_bytes`` of
    payload; ``NodeUnavailable`` when the address cannot be connected to. ``before_connect``
    runs on the socket first (a monitor attached there sees the whole handshake)."""
    sock = ctx.socket(zmq.DEALER)
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes + HEADER_ALLOWANCE_BYTES)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    try:
        if before_connect is not None:
            before_connect(sock)
        sock.connect(address)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise NodeUnavailable(f"cannot connect to {address}: {exc}") from None
    return sock


def router(ctx: zmq.Context, endpoint: str, *, sndhwm: int, rcvhwm: int,
           max_message_bytes: int, prepare: Prepare | None = None) -> zmq.Socket:
    """The agent's ROUTER bound to ``endpoint``. ROUTER_MANDATORY makes a reply to a client that
    went away fail at once (EHOSTUNREACH) instead of vanishing; ``zmq.ZMQError`` if the bind
    fails."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
    _bind(sock, endpoint, prepare)
    return sock


def publisher(ctx: zmq.Context, endpoint: str, prepare: Prepare | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
    _bind(sock, endpoint, prepare)
    return sock


def subscriber(ctx: zmq.Context, *, topic: bytes, max_message_bytes: int) -> zmq.Socket:
    """A SUB for one topic; the caller connects it to each peer it learns of."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    return sock


def _bind(sock: zmq.Socket, endpoint: str, prepare: Prepare | None = None) -> None:
    try:
        if prepare is not None:
            prepare(sock)
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
