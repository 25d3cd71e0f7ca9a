"""A userspace TCP proxy for tests: forwards, records and damages the bytes between a client and
one target (an agent's port), so a test can see what crossed the wire and play it again.

    with TcpProxy("127.0.0.1", agent_port) as proxy:
        client connects to proxy.address ...
        proxy.contains(b"secret")          # did these bytes cross in the clear?
        proxy.replay(0)                     # the first connection's client bytes, sent again

Each accepted connection gets its own connection to the target and two threads, one per
direction ("c2s": client to server, "s2c"), polling in ``POLL_S`` slices so that ``stop()``,
``cut()`` and a peer's close are seen at once. An end of stream in one direction is passed on as
a half-close (``shutdown(SHUT_WR)``); the pair is closed when both directions have ended.

Recording: every chunk forwarded is kept, in memory, per connection and direction, up to
``max_record_bytes`` in all; past that, nothing more is recorded and the chunks and bytes left
out are counted (``unrecorded_chunks``, ``unrecorded_bytes``).

Faults, changeable while running: ``delay_s`` (a sleep before forwarding each chunk), ``drop``
(chunks read are thrown away, not recorded, counted in ``dropped_bytes``: the stream the peer
sees has a hole), ``paused`` (nothing is read: bytes wait in the kernel buffers, TCP pushes
back, and forwarding resumes in order when cleared), ``cut()`` (close every current
connection, both sides; new ones are still accepted).

What it does not do: TLS, UDP, IPv6, or rewriting bytes. It is meant for 127.0.0.0/8; nothing
stops another address but the tests' own rule. The listening socket, every connection and every
wait have timeouts; the threads are daemons and ``stop()`` joins them.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

POLL_S = 0.05
CONNECT_TIMEOUT_S = 2.0
JOIN_TIMEOUT_S = 2.0
CHUNK_BYTES = 64 * 1024
DIRECTIONS = ("c2s", "s2c")


@dataclass
class _Conn:
    index: int
    client: socket.socket
    server: socket.socket | None = None
    data: dict[str, bytearray] = field(default_factory=lambda: {d: bytearray() for d in DIRECTIONS})
    ended: set[str] = field(default_factory=set)
    cut: bool = False
    closed: bool = False


class TcpProxy:
    """Listens on ``listen_host:listen_port`` (0: a free port) and forwards to the target."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, *, max_record_bytes: int = 256 * 1024 * 1024,
                 delay_s: float = 0.0):
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.max_record_bytes = max_record_bytes
        self.delay_s = delay_s
        self.drop = False
        self.paused = False
        self.recorded_bytes = 0
        self.unrecorded_bytes = 0
        self.unrecorded_chunks = 0
        self.dropped_bytes = 0
        self.failed_connects = 0
        self._requested_port = listen_port
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._chunks: list[tuple[int, str, int, int]] = []  # (conn, direction, start, length)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        if self._listener is not None:
            raise RuntimeError("the proxy is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, self._requested_port))
        listener.listen(128)
        listener.settimeout(POLL_S)
        self._listener = listener
        self._spawn(self._accept_loop, "tcpproxy-accept", listener)
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection and join the threads (within a few
        seconds; a thread still alive then is named in the ``RuntimeError``)."""
        self._stop.set()
        self.cut()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if self._listener is not None:
            self._listener.close()
        if alive:
            raise RuntimeError(f"tcpproxy threads did not stop: {alive}")

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the proxy is not running")
        return self._listener.getsockname()[1]

    @property
    def address(self) -> str:
        return f"tcp://{self.listen_host}:{self.port}"

    # --- faults ---------------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every current connection (both sides see an end of stream); the number cut."""
        n = 0
        with self._lock:
            conns = [c for c in self._conns if not c.closed]
        for conn in conns:
            conn.cut = True
            n += 1
            for sock in (conn.client, conn.server):
                if sock is not None:
                    try:  # shutdown wakes the pumps; they close the sockets themselves
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        return n

    # --- what crossed ---------------------------------------------------------------------------

    def connections(self) -> list[dict[str, Any]]:
        """One record per accepted connection, in order: {index, c2s, s2c, open}."""
        with self._lock:
            return [{"index": c.index, "c2s": bytes(c.data["c2s"]), "s2c": bytes(c.data["s2c"]),
                     "open": not c.closed} for c in self._conns]

    def chunks(self) -> list[tuple[int, str, bytes]]:
        """Every recorded chunk as (connection index, direction, bytes), in forwarding order."""
        with self._lock:
            return [(i, d, bytes(self._conns[i].data[d][s : s + n]))
                    for i, d, s, n in self._chunks]

    def recorded(self, direction: str | None = None, conn_index: int | None = None) -> bytes:
        """The recorded bytes of one direction (or both) of one connection (or all), in the
        order they were forwarded."""
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction is one of {DIRECTIONS}, not {direction!r}")
        with self._lock:
            return b"".join(bytes(self._conns[i].data[d][s : s + n])
                            for i, d, s, n in self._chunks
                            if (direction is None or d == direction)
                            and (conn_index is None or i == conn_index))

    def contains(self, needle: bytes) -> bool:
        """Whether ``needle`` crossed in one direction of one connection, also when it was
        split between chunks."""
        with self._lock:
            return any(needle in c.data[d] for c in self._conns for d in DIRECTIONS)

    # --- sending again --------------------------------------------------------------------------

    def replay(self, conn_index: int, direction: str = "c2s", host: str | None = None,
               port: int | None = None, timeout_s: float = 2.0,
               half_close: bool = False) -> bytes:
        """Send exactly the recorded ``direction`` bytes of connection ``conn_index`` on a new
        connection to the target (or ``host:port``); return what comes back until the server
        closes or ``timeout_s`` has passed."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction is one of {DIRECTIONS}, not {direction!r}")
        with self._lock:
            data = bytes(self._conns[conn_index].data[direction])
        return self.send_raw(data, timeout_s, host=host, port=port, half_close=half_close)

    def send_raw(self, data: bytes, timeout_s: float = 2.0, *, host: str | None = None,
                 port: int | None = None, half_close: bool = False) -> bytes:
        """Send ``data`` on a new connection to the target (or ``host:port``), then read until
        the server closes or ``timeout_s`` has passed (from the start). ``half_close`` shuts
        the sending side down after the data (some servers answer only then; a ZeroMQ peer
        takes it as a disconnect)."""
        deadline = time.monotonic() + timeout_s
        addr = (host or self.target_host, port or self.target_port)
        got = bytearray()
        with socket.create_connection(addr, timeout=min(timeout_s, CONNECT_TIMEOUT_S)) as s:
            s.settimeout(POLL_S)
            view = memoryview(data)
            while view and time.monotonic() < deadline:
                try:
                    view = view[s.send(view[:CHUNK_BYTES]):]
                except TimeoutError:
                    continue
                except OSError:
                    break  # the server closed before taking it all: read what it said
            if half_close:
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(CHUNK_BYTES)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                got += chunk
        return bytes(got)

    # --- threads --------------------------------------------------------------------------------

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(POLL_S)
            with self._lock:
                conn = _Conn(len(self._conns), client)
                self._conns.append(conn)
            try:
                server = socket.create_connection((self.target_host, self.target_port),
                                                  timeout=CONNECT_TIMEOUT_S)
            except OSError:
                self.failed_connects += 1
                conn.closed = True
                client.close()
                continue
            server.settimeout(POLL_S)
            conn.server = server
            if conn.cut or self._stop.is_set():  # cut while it was connecting
                conn.closed = True
                client.close()
                server.close()
                continue
            self._spawn(self._pump, f"tcpproxy-{conn.index}-c2s", conn, "c2s")
            self._spawn(self._pump, f"tcpproxy-{conn.index}-s2c", conn, "s2c")

    def _pump(self, conn: _Conn, direction: str) -> None:
        server = conn.server
        if server is None:  # never: the pumps start once the server side is connected
            return
        src, dst = (conn.client, server) if direction == "c2s" else (server, conn.client)
        try:
            while not (self._stop.is_set() or conn.cut):
                if self.paused:
                    self._stop.wait(POLL_S)
                    continue
                try:
                    chunk = src.recv(CHUNK_BYTES)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                if self.delay_s > 0:
                    self._stop.wait(self.delay_s)
                if self.drop:
                    with self._lock:
                        self.dropped_bytes += len(chunk)
                    continue
                self._record(conn, direction, chunk)
                if not self._send(conn, dst, chunk):
                    break
        finally:
            self._end(conn, direction, dst)

    def _send(self, conn: _Conn, dst: socket.socket, chunk: bytes) -> bool:
        view = memoryview(chunk)
        poller = select.poll()
        poller.register(dst, select.POLLOUT)
        while view:
            if self._stop.is_set() or conn.cut:
                return False
            try:
                # wait for room in slices: a peer that stops reading must not hold stop() up
                if poller.poll(POLL_S * 1000):
                    view = view[dst.send(view):]
            except TimeoutError:
                continue
            except OSError:
                return False
        return True

    def _record(self, conn: _Conn, direction: str, chunk: bytes) -> None:
        with self._lock:
            if self.unrecorded_chunks or self.recorded_bytes + len(chunk) > self.max_record_bytes:
                self.unrecorded_chunks += 1
                self.unrecorded_bytes += len(chunk)
                return
            buf = conn.data[direction]
            self._chunks.append((conn.index, direction, len(buf), len(chunk)))
            buf += chunk
            self.recorded_bytes += len(chunk)

    def _end(self, conn: _Conn, direction: str, dst: socket.socket) -> None:
        try:
            dst.shutdown(socket.SHUT_WR)  # pass the end of stream on
        except OSError:
            pass
        with self._lock:
            conn.ended.add(direction)
            last = len(conn.ended) == 2
            if last:
                conn.closed = True
        if last:
            conn.client.close()
            if conn.server is not None:
                conn.server.close()
