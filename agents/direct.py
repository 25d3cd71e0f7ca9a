"""The agent's side of the direct path (``mesh/directwire.py``): block reads and writes over a
plain TCP stream, for clusters without keys.

``DirectServer`` is the same-host server (``agents/local.py``) on another transport: the same
HELLO/BEGIN/END, the same checks, pins and inline small operations, served in the loop, but
over TCP connections from anywhere (frames of ``directwire``), and with the bytes of a large
operation moved through the connection instead of a shared mapping. Once a large BEGIN is
answered, the connection leaves the loop's poll and a worker thread (at most ``WORKERS``)
sends the pinned range, or receives the write straight into it, each receive allowed to wait
only until the write's deadline: a write whose deadline passes is stopped before any more of
it lands, and its connection dropped. The worker
hands the connection back through a pipe the loop polls; the client's END then runs in the loop.

A client that queues more than ``MAX_QUEUED`` requests without reading their replies, sends a
broken frame, or stalls a transfer for ``STALL_S`` loses its connection (it falls back to
ZeroMQ); the agent goes on.

Not here: the rules and the pins (``agents/local.py``), the client (``mesh/client/direct.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agents.local import Conn, LocalServer, Pin
from agents.store import Block
from mesh import directwire as D
from mesh.errors import InvalidRequest

log = logging.getLogger("mesh.agent")

WORKERS = 4
STALL_S = 10.0  # a transfer without a byte moving for this long is given up
# ... and one slower than this on average (beyond STALL_S), so a client trickling bytes cannot
# hold a worker for ever; moves wait for the same floor (agents/moves.py)
MIN_BYTES_PER_S = 20e6
CHUNK = 4 << 20  # a write is taken in at most this much a receive (its deadline checked between;
# 1 MiB receives wrote 1 GiB striped over two agents at 4.3-4.6 GB/s, 4 MiB ones at 4.5-5.7)
MAX_QUEUED = 64


@dataclass(eq=False)
class DirectConn(Conn):
    frames: D.Frames = field(default_factory=D.Frames)
    busy: bool = False  # a worker has it
    job: tuple[Pin, float | None] | None = None  # a large operation to start once answered
    region: memoryview | None = None


class _Late(Exception):
    pass


def _check_limit(limit: float) -> None:
    if time.monotonic() > limit:
        raise TimeoutError("the transfer ran below the direct path's slowest rate")


class DirectServer(LocalServer):
    def __init__(self, agent: Any):
        super().__init__(agent)
        self.port = 0
        self._workers: ThreadPoolExecutor | None = None
        self._done: deque[tuple[DirectConn, BaseException | None]] = deque()
        self._wake_r, self._wake_w = -1, -1
        self.transfers = 0

    def bind(self, host: str, port: int = 0) -> None:  # type: ignore[override]
        """Listen on ``host``:``port`` (0: any free port). An agent that cannot serves over
        ZeroMQ only, and says so."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(256)
        except OSError as exc:
            sock.close()
            log.warning("direct path off: cannot listen on %s:%d: %s", host, port, exc)
            return
        self.listener, self.port = sock, sock.getsockname()[1]
        self.name = f"{host}:{self.port}"
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._workers = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="direct")
        self.version += 1

    def describe(self) -> dict[str, Any]:
        return {"port": self.port, "connections": len(self.conns), "refused": self.refused,
                "transfers": self.transfers, "pulls": self.agent.moves.pulled_direct}

    def sockets(self) -> list[Any]:
        if self.listener is None:
            return []
        return [self.listener, self._wake_r, *(s for s, c in self.conns.items()
                                               if not c.busy)]  # type: ignore[attr-defined]

    def close(self) -> None:
        for conn in self.conns.values():
            if conn.busy:  # type: ignore[attr-defined]
                try:  # its worker's send or receive ends now
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._workers is not None:
            self._workers.shutdown(wait=True, cancel_futures=True)
            self._workers = None
        for conn in self.conns.values():
            conn.busy = False  # type: ignore[attr-defined]
        super().close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def drain(self, events: dict[Any, int]) -> None:
        if self._wake_r >= 0 and self._wake_r in events:
            self._finished()
        super().drain(events)

    def _adopt(self, sock: socket.socket) -> Conn:
        D.tune(sock)
        return DirectConn(sock, -1)

    def _drop(self, sock: socket.socket) -> None:
        conn = self.conns.get(sock)
        if conn is not None and conn.busy:  # type: ignore[attr-defined]
            return  # its worker finishes first, then hands it back to be dropped
        super()._drop(sock)

    def _hello(self, conn: Conn, fields: dict[str, Any]) -> dict[str, Any]:
        conn.hello = True  # (served only without cluster keys: anyone may, as on ZeroMQ)
        return {"node": self.agent.s.node, "incarnation": self.agent.incarnation,
                "version": D.L.VERSION}

    def _serve(self, sock: socket.socket) -> None:
        conn: DirectConn = self.conns[sock]  # type: ignore[assignment]
        try:
            conn.frames.fill(sock)
        except (BlockingIOError, InterruptedError):
            return
        except (EOFError, OSError):
            self._drop(sock)
            return
        for _ in range(MAX_QUEUED):
            try:
                message = conn.frames.next()
            except D.BrokenStream:
                self.refused += 1
                self._drop(sock)
                return
            if message is None:
                return
            reply, _ = self._handle(conn, message)
            out = D.frame_parts(reply)  # (an inline read's bytes: not copied again to join)
            try:
                sent = sock.sendmsg(out)
            except OSError:
                sent = -1
            if sent != len(out[0]) + len(out[1]):  # it stopped reading, or went away: a
                self._drop(sock)                     # reply is never cut
                return
            if conn.job is not None:
                self._start(conn)
                return
        self.refused += 1  # requests queued without their replies being read
        self._drop(sock)

    def _open(self, conn: Conn, block: Block, offset: int, end: int, write: bool,
              arrived: float, f: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...]]:
        deadline = f.get("deadline")
        if deadline is not None and (isinstance(deadline, bool)
                                     or not isinstance(deadline, (int, float))):
            raise InvalidRequest("begin: deadline must be wall-clock seconds")
        pin = self._pin(conn, block, offset, end, write, arrived)
        assert isinstance(conn, DirectConn)
        conn.job, conn.region = (pin, deadline), block.view[offset:end]
        return {"pin": pin.pin_id, "ino": block.ino, "size": block.size}, ()

    # --- the bytes, on a worker ---------------------------------------------------------------

    def _start(self, conn: DirectConn) -> None:
        pin, deadline = conn.job  # type: ignore[misc]
        conn.job, conn.busy = None, True
        self.version += 1
        early = conn.frames.take(pin.end - pin.start) if pin.write else b""
        assert self._workers is not None
        self._workers.submit(self._transfer, conn, pin, deadline, early)

    def _transfer(self, conn: DirectConn, pin: Pin, deadline: float | None,
                  early: bytes) -> None:
        error: BaseException | None = None
        region = conn.region
        assert region is not None
        limit = time.monotonic() + STALL_S + region.nbytes / MIN_BYTES_PER_S
        try:
            conn.sock.settimeout(STALL_S)
            if pin.write:
                self._take_write(conn.sock, region, deadline, early, limit)
            else:
                for i in range(0, region.nbytes, D.SEND_PIECE):  # (time limit checked between)
                    _check_limit(limit)
                    conn.sock.sendall(region[i : i + D.SEND_PIECE])
        except BaseException as exc:  # handed to the loop, which drops the connection
            error = exc
        finally:
            conn.region = None
            region.release()
            try:
                conn.sock.setblocking(False)
            except OSError:
                pass
            self._done.append((conn, error))
            try:
                os.write(self._wake_w, b"\0")
            except OSError:  # (full: the loop is already woken; closed: shutting down)
                pass

    def _take_write(self, sock: socket.socket, region: memoryview, deadline: float | None,
                    early: bytes, limit: float) -> None:
        """The write's bytes straight into the block, each receive allowed to wait only until
        the write's deadline: what lands, lands before it; past it, nothing more does."""
        n, got = region.nbytes, len(early)
        region[:got] = early
        while got < n:
            _check_limit(limit)
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0:
                    raise _Late  # its client has given up on it: no more of it lands
                sock.settimeout(min(STALL_S, left))
            try:
                k = sock.recv_into(region[got:], min(CHUNK, n - got))
            except socket.timeout:
                if deadline is not None and time.time() >= deadline:
                    raise _Late from None
                raise
            if k == 0:
                raise EOFError("the client closed the connection mid-write")
            got += k

    def _finished(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except OSError:
            pass
        while self._done:
            conn, error = self._done.popleft()
            conn.busy = False
            self.version += 1
            if error is None:
                self.transfers += 1
                continue
            if isinstance(error, _Late):
                self.agent.late_requests += 1
            else:
                log.debug("direct transfer dropped: %r", error)
            self._drop(conn.sock)
