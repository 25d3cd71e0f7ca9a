"""The connection a client (or an agent pulling from a peer) keeps to one agent: a ``Link``.

- ``PlainLink``: one DEALER, frames as they are (a cluster without keys).
- ``SealedLink``: after ``handshake``, a DEALER to the agent's sealed endpoint; every message is
  sealed with the session's key (``mesh/security/seal.py``).

``handshake`` is a generator in the style of the client core (it yields ``Wait`` and is driven
by the sync or the async client, or by ``run_blocking`` in an agent's thread):

1. a CURVE DEALER to the agent's data port, with the agent's public key as the server key and
   ours as the client key, watched by a socket monitor;
2. SESSION over it; the agent answers with a session id, a 32-byte key and its sealed port,
   all inside CURVE (only the holder of our secret can read them; only the holder of the agent's
   secret can have written them);
3. the CURVE socket is closed and the sealed DEALER connected.

The monitor turns a refused handshake into ``AuthenticationError`` at once (the ZAP handler
denied our key: HANDSHAKE_FAILED_AUTH; the peer could not read our hello because it is not the
agent whose key we hold, or it runs without keys: HANDSHAKE_FAILED_NO_DETAIL or _PROTOCOL)
instead of a timeout.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Callable, Generator

import zmq

from mesh import protocol as P
from mesh import sockets
from mesh.client.batch import Wait
from mesh.errors import (
    AuthenticationError, MeshError, MeshTimeout, NodeUnavailable, ProtocolError, SealError,
    SessionLost,
)

# A client refreshes a session used less recently than this (agents drop them after an hour
# idle: agents/access.py SESSION_IDLE_S).
SESSION_REFRESH_S = 1800.0
# Sizes of mesh/security/seal.py, repeated so that a client without keys never loads it (nor
# cryptography); tests/unit/test_seal.py checks that they agree.
SESSION_ID_BYTES = 8
KEY_BYTES = 32
SEALED_OVERHEAD_BYTES = 2 * 16 + 20  # two GCM tags and the envelope
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
CONTROL_BYTES = 64 * 1024  # the SESSION reply
# A link keeps watching for this: the agent's end of the connection went away (it was killed or
# restarted), so nothing in flight on it will be answered.
LOST_EVENTS = zmq.EVENT_DISCONNECTED


def _lost(address: str) -> NodeUnavailable:
    return NodeUnavailable(f"{address} closed the connection (its agent stopped or restarted); "
                           "what was in flight to it may or may not have been applied")


class _Watched:
    """A link's socket monitor: handshake results until the first handshake succeeds, and the
    connection's loss for as long as the link lives."""

    monitor: zmq.Socket | None
    sock: zmq.Socket
    shaken = False  # a handshake has succeeded on this link

    def refused(self, address: str, close: "Close") -> MeshError | None:
        """Read the monitor: ``AuthenticationError`` if the first handshake failed,
        ``NodeUnavailable`` if the connection was lost (or a reconnection's handshake failed:
        the agent went away mid-way), else None."""
        # EVENTS, not poll(0): a poll builds a Poller, and this runs before every request
        while self.monitor is not None and self.monitor.get(zmq.EVENTS) & zmq.POLLIN:
            event = _event(self.monitor)
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.shaken = True
                continue
            if event & LOST_EVENTS or self.shaken:
                return _lost(address)
            self.unwatch(close)
            return AuthenticationError(
                f"{address} refused the connection: it runs with keys and this client has "
                "none (pass key=, set GRID_KEY, or use the cluster's key file)")
        return None

    def unwatch(self, close: "Close") -> None:
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            close(self.monitor)
            self.monitor = None


class PlainLink(_Watched):
    """A DEALER as it is. A monitor watches it: until its ZMTP handshake is known to have
    succeeded, so a client without a key that reaches a keyed agent (a mechanism mismatch)
    fails at once instead of waiting out its requests; and for as long as it lives, so requests
    to an agent that was killed fail when its end of the connection goes, not at their
    timeout."""

    sealed = False

    def __init__(self, sock: zmq.Socket, monitor: zmq.Socket | None):
        self.sock = sock
        self.monitor = monitor  # attached before the connect: see ``plain``

    def send(self, frames: list[Any]) -> None:
        self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)

    def open(self, frames: list[Any]) -> list[Any]:
        return frames

    def stale(self, now: float) -> bool:
        return False


class SealedLink(_Watched):
    sealed = True

    def __init__(self, sock: zmq.Socket, session_id: bytes, key: bytes,
                 monitor: zmq.Socket | None = None):
        from mesh.security import seal

        self.sock = sock
        self.monitor = monitor  # the connection's loss (``_Watched``)
        self.sealer = seal.Sealer(session_id, key, seal.TO_AGENT)
        self.opener = seal.Opener(session_id, key, seal.TO_CLIENT)
        self.used_at = time.monotonic()

    def send(self, frames: list[Any]) -> None:
        self.used_at = time.monotonic()
        sealed = self.sealer.seal(frames[0], frames[1] if len(frames) > 1 else None)
        self.sock.send_multipart(sealed, zmq.NOBLOCK, copy=False)

    def open(self, frames: list[Any], lazy_payload: bool = True) -> list[Any]:
        """The reply's [header, payload?]; ``SealError`` (drop it) or ``SessionLost``. The
        payload stays sealed (``seal.SealedPayload``) for the client core to open straight into
        its buffer, unless ``lazy_payload`` is False."""
        header, payload = self.opener.open(frames, lazy_payload=lazy_payload)
        return [header] if payload is None else [header, payload]

    def stale(self, now: float) -> bool:
        return now - self.used_at > SESSION_REFRESH_S


Link = PlainLink | SealedLink


def _event(monitor: zmq.Socket) -> int:
    """The next event of a socket monitor (libzmq's two frames: u16 event, u32 value; then the
    endpoint). Read here rather than with ``zmq.utils.monitor``, which imports asyncio."""
    frames = monitor.recv_multipart(zmq.NOBLOCK)
    return struct.unpack_from("=H", frames[0])[0]


def _watched_dealer(ctx: zmq.Context, address: str, events: int = HANDSHAKE_EVENTS | LOST_EVENTS,
                    **options: Any) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER (``sockets.dealer`` with ``options``) and its handshake monitor, attached before
    it connects: libzmq does not retry after a refused handshake, so a refusal that came before
    the monitor was there would never be seen."""
    watched: list[zmq.Socket] = []
    sock = sockets.dealer(ctx, address, **options, before_connect=lambda s: watched.append(
        s.get_monitor_socket(events)))
    return sock, watched[0]


def plain(ctx: zmq.Context, address: str, *, hwm: int, max_message_bytes: int) -> PlainLink:
    """A plain link, watched until its handshake is known to have worked."""
    return PlainLink(*_watched_dealer(ctx, address, hwm=hwm, max_message_bytes=max_message_bytes))


Close = Callable[[zmq.Socket], None]


def handshake(ctx: zmq.Context, address: str, *, server_key: bytes, public: bytes, secret: bytes,
              key_name: str, timeout_s: float, hwm: int, max_message_bytes: int,
              close: Close, node: str | None = None) -> Generator[Wait, Any, SealedLink]:
    """Shake hands with the agent at ``address``; see the module's docstring."""
    curve, monitor = _watched_dealer(ctx, address, HANDSHAKE_EVENTS, hwm=4,
                                     max_message_bytes=CONTROL_BYTES,
                                     curve=(server_key, public, secret))
    where = f"node {node} ({address})" if node else address
    try:
        curve.send(P.encode_request(P.SESSION, 1, {}), zmq.NOBLOCK)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MeshTimeout(f"no answer from {where} to the handshake within "
                                  f"{timeout_s:g} s", node=node)
            ready = yield Wait((curve, monitor), remaining)
            while monitor.poll(0):
                _refused(_event(monitor), where, key_name,
                         node)
            if curve in ready or curve.poll(0):
                reply = P.parse_reply(curve.recv_multipart())
                reply.raise_for_error(node)
                body = reply.body
                break
    finally:
        try:
            curve.disable_monitor()
        except zmq.ZMQError:
            pass
        close(monitor)
        close(curve)
    session, key, port = parse_session(body, where, node)
    endpoint = f"{address.rsplit(':', 1)[0]}:{port}"  # the host we reached it at
    sealed, lost = _watched_dealer(ctx, endpoint, LOST_EVENTS, hwm=hwm,
                                   max_message_bytes=max_message_bytes + SEALED_OVERHEAD_BYTES)
    return SealedLink(sealed, session, key, lost)


def parse_session(body: Any, where: str = "the agent",
                  node: str | None = None) -> tuple[bytes, bytes, int]:
    """(session id, key, sealed port) of a SESSION reply's body; ``ProtocolError`` if it is not
    exactly that."""
    if isinstance(body, dict):
        session, key, port = body.get("session"), body.get("key"), body.get("port")
        if isinstance(session, bytes) and len(session) == SESSION_ID_BYTES \
                and isinstance(key, bytes) and len(key) == KEY_BYTES \
                and type(port) is int and 0 < port < 65536:
            return session, key, port
    raise ProtocolError(f"{where} answered the handshake with a malformed session", node=node)


def _refused(event: int, where: str, key_name: str, node: str | None) -> None:
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        raise AuthenticationError(f"{where} refused key {key_name!r}: it is unknown there or "
                                  "revoked", node=node)
    raise AuthenticationError(
        f"the handshake with {where} failed for key {key_name!r}: it is not the agent whose key "
        "we hold (a key of another cluster?), or it runs without keys", node=node)


def run_blocking(gen: Generator[Wait, Any, Any]) -> Any:
    """Drive a generator that yields ``Wait`` with blocking polls (an agent's worker thread)."""
    try:
        wait = next(gen)
        while True:
            poller = zmq.Poller()
            for sock in wait.sockets:
                poller.register(sock, zmq.POLLIN)
            ready = {s for s, _ in poller.poll(max(1, int(wait.timeout_s * 1000)))}
            wait = gen.send(ready)
    except StopIteration as stop:
        return stop.value


class BlockingPeer:
    """A ``SealedLink`` with the few blocking socket calls an agent's move or pull makes
    (``agents/moves.py``: send, poll, recv_multipart, close)."""

    def __init__(self, link: SealedLink):
        self.link = link
        self._more: list[Any] = []

    def send(self, data: Any, flags: int = 0, copy: bool = True) -> None:
        self._more.append(data)
        if flags & zmq.SNDMORE:
            return
        frames, self._more = self._more, []
        self.link.send(frames)

    def poll(self, timeout_ms: int) -> int:
        return self.link.sock.poll(timeout_ms)

    def recv_multipart(self, copy: bool = True) -> list[Any]:
        while True:
            try:
                return self.link.open(self.link.sock.recv_multipart(copy=copy),
                                      lazy_payload=False)
            except SessionLost:
                raise
            except SealError:
                if not self.link.sock.poll(1000):  # dropped; the genuine reply may follow
                    raise MeshTimeout("only unreadable replies from the peer") from None

    def close(self, linger: int = 0) -> None:
        self.link.unwatch(lambda sock: sock.close(0))
        self.link.sock.close(linger)
