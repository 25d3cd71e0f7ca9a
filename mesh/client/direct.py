"""The client's side of the direct path (``mesh/directwire.py``): block reads and writes to an
agent of another machine over a plain TCP stream instead of ZeroMQ, on clusters without keys.

``DirectPath`` is the same-host path (``mesh/client/local.py``) on another transport: the same
messages, inline small operations and fallbacks, over a TCP connection per agent (its port asked
once with DIRECT over ZeroMQ; an agent without one is asked again after ``RETRY_ABSENT_S``), and
the bytes of a large operation streamed through that connection: sent from the caller's buffer,
received straight into it. Operations over ``INLINE_MAX`` and under ``MIN_BULK`` go over ZeroMQ,
whose chunk window serves them in one round trip. Every wait is a ``Wait`` on the socket
(readable, or writable while sending), so both clients and ``gather`` drive it as any other
operation. A broken connection makes the operation go over ZeroMQ, which finds out why.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

from mesh import directwire as D
from mesh import protocol as P
from mesh.client.batch import Op, Wait
from mesh.client.local import HELLO_TIMEOUT_S, LocalPath, _Fallback, _Link
from mesh.errors import MeshTimeout

RETRY_ABSENT_S = 30.0


class _Stream(_Link):
    def __init__(self, sock: socket.socket, address: str):
        super().__init__(sock, address)
        self.frames = D.Frames()


class DirectPath(LocalPath):
    NAME = "direct path"
    MIN_BULK = 8 << 20

    def __init__(self, core: Any):
        super().__init__(core)
        self.enabled = core.settings.direct_tcp and core.links.key is None

    def _new_link(self, sock: Any, address: str) -> _Link:
        return _Stream(sock, address)

    def _connect(self, address: str) -> Op:
        granted = yield from self.core.call(address, P.DIRECT, {}, timeout_s=HELLO_TIMEOUT_S,
                                            wait_moving=False)
        port = granted.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            return None  # (0: this agent serves none)
        host = D.host_of(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        D.tune(sock)
        err = sock.connect_ex((host, port))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            ready = yield Wait((), self.core.settings.connect_timeout_s, (sock,))
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ready else \
                errno.ETIMEDOUT
        if err:
            sock.close()
            return None
        return sock

    def _greet(self, link: _Link) -> Op:
        hello, _ = yield from self._ask(link, D.L.HELLO, {}, HELLO_TIMEOUT_S)
        return hello

    def _have(self, link: _Link, block_id: str, write: bool) -> int:
        return 0

    def _extra(self, write: bool) -> dict[str, Any]:
        if not write:
            return {}
        # when the client gives up, less the skew allowed between clocks (as on ZeroMQ)
        return {"deadline": P.deadline_for(time.time(), self.core.settings.request_timeout_s,
                                           self.core.settings.clock_skew_s)}

    def _send(self, link: _Link, message: Any, deadline: float) -> Op:
        parts = D.frame_parts(message)  # (an inline write's bytes: not copied again to join)
        try:
            sent = link.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(parts[0]) + len(parts[1]):  # (a full socket buffer: rarely)
            yield from self._send_bytes(link, memoryview(b"".join(parts))[sent:], deadline)

    def _send_bytes(self, link: _Link, data: memoryview, deadline: float) -> Op:
        sent, n = 0, data.nbytes
        while sent < n:
            try:
                sent += link.sock.send(data[sent : sent + D.SEND_PIECE])
                continue
            except (BlockingIOError, InterruptedError):
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                self._drop(link)
                raise MeshTimeout(f"{link.address} ({self.NAME}) took no bytes for too long",
                                  node=link.node)
            yield Wait((), left, (link.sock,))

    def _buffered(self, link: _Link) -> bool:
        return bool(link.frames.buf)  # type: ignore[attr-defined]

    def _recv(self, link: _Link) -> tuple[Any, list[int]]:
        frames = link.frames  # type: ignore[attr-defined]
        message = frames.next()
        if message is not None:
            return message, []
        frames.fill(link.sock)
        message = frames.next()
        if message is None:
            raise BlockingIOError
        return message, []

    def _bulk(self, link: _Link, block_id: str, fds: list[int], begun: dict[str, Any],
              offset: int, view: memoryview, write: bool) -> Op:
        timeout_s = self.core.settings.request_timeout_s
        try:
            if write:
                yield from self._send_bytes(link, view, time.monotonic() + timeout_s)
            else:
                yield from self._recv_bytes(link, view, timeout_s)
        except OSError:  # (reset, or closed: the agent dropped it)
            self._drop(link)
            raise _Fallback from None
        return True

    def _recv_bytes(self, link: _Link, view: memoryview, timeout_s: float) -> Op:
        """Exactly ``view.nbytes`` raw bytes into ``view``; ``timeout_s`` without a byte is a
        timeout."""
        early = link.frames.take(view.nbytes)  # type: ignore[attr-defined]
        got, n = len(early), view.nbytes
        view[:got] = early
        while got < n:
            try:
                k = link.sock.recv_into(view[got:], n - got)
            except (BlockingIOError, InterruptedError):
                ready = yield Wait((link.sock,), timeout_s)
                if not ready:
                    self._drop(link)
                    raise MeshTimeout(f"{link.address} ({self.NAME}) sent nothing for "
                                      f"{timeout_s:g} s", node=link.node) from None
                continue
            if k == 0:
                raise ConnectionResetError("the agent closed the connection mid-read")
            got += k
