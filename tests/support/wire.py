"""Talking to a real agent below the client: one raw request on a DEALER of its own, for tests
of ops the client does not send that way (PULL, ABORT between agents, forged fields)."""

from __future__ import annotations

import msgpack
import zmq

from mesh import protocol as P


def raw_call(address: str, op: str, fields: dict, timeout_ms: int = 10_000,
             request_id: int = 7, payload: bytes | None = None) -> P.Reply:
    """Send ``op`` with ``fields`` (and a ``payload`` frame) to the agent at ``address`` and
    parse its reply (raises ``zmq.Again`` after ``timeout_ms`` without one)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(address)
    try:
        header = msgpack.packb([P.VERSION, op, request_id, fields])
        sock.send_multipart([header] if payload is None else [header, payload])
        return P.parse_reply(sock.recv_multipart())
    finally:
        sock.close()


def write_is_held(address: str, block: str, data: bytes = b"new!") -> bool:
    """A raw WRITE of ``data`` at offset 0 gets no reply within 300 ms: it waits (for a read of
    its range to end)."""
    try:
        raw_call(address, P.WRITE, {"block": block, "offset": 0}, timeout_ms=300, payload=data)
    except zmq.Again:
        return True
    return False


def read_when(client, block: str, want: bytes, timeout_s: float = 5.0) -> bytes:
    """The block's first ``len(want)`` bytes once they are ``want`` (or at the timeout)."""
    import time

    deadline = time.monotonic() + timeout_s
    while (got := bytes(client.read(block, len(want)))) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


class LocalSocket:
    """A raw connection to an agent's same-host path (``mesh/localwire.py``), below the client:
    for tests of what the client never sends (garbage, pins left open, other users)."""

    def __init__(self, address: str, timeout_s: float = 10.0):
        import socket

        from mesh import localwire as L

        self.L = L
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout_s)
        self.sock.connect(L.socket_name(address))
        self._ids = iter(range(1, 1 << 30))

    def call(self, op: str, fields: dict) -> tuple[bool, dict, list[int]]:
        """(ok, result or {code, message}, descriptors sent with the reply)."""
        rid = next(self._ids)
        self.L.send(self.sock, [op, rid, fields])
        message, fds = self.L.recv(self.sock)
        got, ok, body = self.L.parse_reply(message)
        assert got == rid
        return ok, body, fds

    def close(self) -> None:
        self.sock.close()


class DirectSocket:
    """A raw connection to an agent's direct path (``mesh/directwire.py``), below the client."""

    def __init__(self, address: str, timeout_s: float = 10.0):
        import socket

        from mesh import directwire as D

        self.D = D
        port = raw_call(address, P.DIRECT, {}).body["port"]
        assert port, "this agent serves no direct path"
        self.sock = socket.create_connection((D.host_of(address), port), timeout=timeout_s)
        self.frames = D.Frames()
        self._ids = iter(range(1, 1 << 30))

    def send(self, message) -> None:
        self.sock.sendall(self.D.frame(message))

    def recv(self):
        while (message := self.frames.next()) is None:
            self.frames.fill(self.sock)
        return message

    def call(self, op: str, fields: dict) -> tuple[bool, dict]:
        rid = next(self._ids)
        self.send([op, rid, fields])
        got, ok, body = self.D.L.parse_reply(self.recv())
        assert got == rid
        return ok, body

    def recv_raw(self, n: int) -> bytes:
        data = self.frames.take(n)
        while len(data) < n:
            more = self.sock.recv(n - len(data))
            if not more:
                raise EOFError
            data += more
        return data

    def close(self) -> None:
        self.sock.close()
