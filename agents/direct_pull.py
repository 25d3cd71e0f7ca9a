"""A move's copy over the direct path (``mesh/directwire.py``): the target of a move on a
cluster without keys reads the block from its source's direct port, straight into the copy's
memory, instead of READ chunks over ZeroMQ (one copy fewer per byte, and no libzmq thread).

``pull`` runs on the target's pull thread (``agents/moves.py``). It reads the block in pieces
of ``PIECE`` bytes, each a BEGIN / raw bytes / END of the source's direct server, so the
source's END of each piece tells its move that the copy is progressing; it checksums what has
landed every ``HASH_STEP`` bytes, while it is warm. It checks between receives (every
``SLICE_S`` at most) whether the move was cancelled, the agent is stopping, the deadline passed
or the source went ``stall_s`` without sending a byte. ``Unavailable`` means "copy over ZeroMQ
instead" (the connection could not be made or broke, or the source declined); any other error
ends the pull as a READ's would.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

from mesh import checksum as C
from mesh import directwire as D
from mesh import localwire as L
from mesh.errors import MeshTimeout, error_from_wire

PIECE = 64 << 20
HASH_STEP = 2 << 20
SLICE_S = 0.2


class Unavailable(Exception):
    """Copy over ZeroMQ instead."""


class _Stream:
    def __init__(self, sock: socket.socket, source: str, check: Callable[[], None],
                 stall_s: float):
        self.sock, self.source, self.check, self.stall_s = sock, source, check, stall_s
        self.frames = D.Frames()
        self.ids = 0
        self.heard = time.monotonic()

    def _wait_more(self) -> None:
        """Nothing arrived within a slice: stop if the pull must, else wait again."""
        self.check()
        if time.monotonic() - self.heard > self.stall_s:
            raise MeshTimeout(f"{self.source} sent nothing for {self.stall_s:g} s")

    def ask(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        self.sock.sendall(D.frame([op, self.ids, fields]))
        while (message := self.frames.next()) is None:
            try:
                self.frames.fill(self.sock)
            except socket.timeout:
                self._wait_more()
                continue
            except EOFError:
                raise Unavailable("the source closed the connection") from None
            self.heard = time.monotonic()
        rid, ok, body = L.parse_reply(message)
        if rid != self.ids:
            raise Unavailable("a reply out of turn")
        if ok:
            return body
        if body.get("code") in L.FALLBACK_CODES:
            raise Unavailable(str(body.get("message")))
        raise error_from_wire(str(body.get("code")), str(body.get("message")))

    def receive(self, view: memoryview, hashed: Callable[[memoryview], None]) -> None:
        """Exactly ``view.nbytes`` raw bytes into ``view``, each ``HASH_STEP`` checksummed as
        it completes."""
        n = view.nbytes
        early = self.frames.take(n)
        got = done = len(early)
        view[:got] = early
        if got:
            hashed(view[:got])
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], min(n - got, 4 * HASH_STEP))
            except socket.timeout:
                self._wait_more()
                continue
            if k == 0:
                raise Unavailable("the source closed the connection mid-copy")
            self.heard = time.monotonic()
            got += k
            if got - done >= HASH_STEP or got == n:
                hashed(view[done:got])
                done = got


def pull(view: memoryview, block_id: str, source: str, port: int, algorithm: str, *,
         check: Callable[[], None], stall_s: float) -> str:
    """Copy block ``block_id`` of the agent at ``source`` (its direct ``port``) into ``view``;
    the copy's checksum. ``check()`` raises when the pull must stop."""
    try:
        sock = socket.create_connection((D.host_of(source), port), timeout=stall_s)
    except OSError as exc:
        raise Unavailable(f"cannot connect: {exc}") from None
    try:
        sock.settimeout(SLICE_S)
        D.tune(sock)
        stream = _Stream(sock, source, check, stall_s)
        hasher = C.new(algorithm)
        stream.ask(L.HELLO, {})
        size = view.nbytes
        for offset in range(0, size, PIECE):
            n = min(PIECE, size - offset)
            begun = stream.ask(L.BEGIN, {"block": block_id, "offset": offset, "length": n,
                                         "write": False, "have": 0})
            if "pin" not in begun:
                raise Unavailable("the source did not pin the range")
            piece = view[offset : offset + n]
            try:
                stream.receive(piece, hasher.update)
            finally:
                piece.release()
            stream.ask(L.END, {"pin": begun["pin"]})
        return hasher.text()
    except (OSError, L.BadMessage) as exc:
        raise Unavailable(f"the connection broke: {exc}") from None
    finally:
        sock.close()
