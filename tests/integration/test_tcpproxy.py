"""tests/support/tcpproxy.py against a small echo server on 127.0.0.1 (threads, a free port):
forwarding both ways, recording (and finding bytes split between chunks), the record bound,
drop, pause, cut, delay, replay and raw sends, and that stop() leaves no thread behind."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from support.tcpproxy import TcpProxy

WAIT_S = 5.0


class EchoServer:
    """Echoes every byte back on each connection; closes its side after the client's EOF."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepted = 0

    def __enter__(self) -> EchoServer:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in list(self.threads):
            t.join(WAIT_S)
        self.listener.close()
        assert not [t for t in self.threads if t.is_alive()]

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.settimeout(0.05)
            self._spawn(self._echo, conn)

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return


@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT_S)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + WAIT_S
    while len(got) < n and time.monotonic() < deadline:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def read_to_end(sock: socket.socket) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(got)
        got += chunk
    raise AssertionError("the connection did not end")


def exchange(proxy: TcpProxy, data: bytes) -> bytes:
    """Send ``data`` (from a thread, so the echo can flow back meanwhile), half-close, and read
    everything that comes back."""
    with connect(proxy) as sock:
        def send() -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = read_to_end(sock)
        sender.join(WAIT_S)
        return got


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tcpproxy-")]


def test_forwards_both_ways_and_records_each_direction(echo):
    data = bytes(range(256)) * 8192  # 2 MiB: many chunks each way
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        assert proxy.address == f"tcp://127.0.0.1:{proxy.port}"
        assert exchange(proxy, data) == data
        wait_for(lambda: not proxy.connections()[0]["open"], "the connection to close")
        [conn] = proxy.connections()
        assert conn["index"] == 0
        assert conn["c2s"] == data and conn["s2c"] == data
        assert proxy.recorded("c2s") == data and proxy.recorded("s2c") == data
        assert len(proxy.recorded()) == 2 * len(data)
        assert proxy.recorded_bytes == 2 * len(data)
        assert proxy.unrecorded_bytes == 0
        chunks = proxy.chunks()
        assert b"".join(c for _, d, c in chunks if d == "c2s") == data
        assert {i for i, _, _ in chunks} == {0}
        with pytest.raises(ValueError):
            proxy.recorded("sideways")


def test_connections_are_recorded_apart(echo):
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        assert exchange(proxy, b"first") == b"first"
        assert exchange(proxy, b"second") == b"second"
        wait_for(lambda: len(proxy.connections()) == 2, "two connections")
        assert [c["c2s"] for c in proxy.connections()] == [b"first", b"second"]
        assert proxy.recorded("c2s", conn_index=1) == b"second"
        assert proxy.recorded("c2s") == b"firstsecond"


def test_contains_finds_bytes_split_between_chunks(echo):
    with TcpProxy("127.0.0.1", echo.port) as proxy, connect(proxy) as sock:
        sock.sendall(b"xxsec")
        assert read_exactly(sock, 5) == b"xxsec"  # echoed: the proxy forwarded it as a chunk
        sock.sendall(b"retyy")
        assert read_exactly(sock, 5) == b"retyy"
        c2s = [c for _, d, c in proxy.chunks() if d == "c2s"]
        assert c2s == [b"xxsec", b"retyy"]
        assert proxy.contains(b"secret")
        assert not proxy.contains(b"secrets")
        # not across directions or connections: "xxsec" then "retyy" is only one direction's
        assert not proxy.contains(b"yyxx")


def test_recording_stops_at_its_bound_and_counts_the_rest(echo):
    with TcpProxy("127.0.0.1", echo.port, max_record_bytes=10) as proxy, connect(proxy) as sock:
        sock.sendall(b"12345678")
        assert read_exactly(sock, 8) == b"12345678"
        sock.sendall(b"ab")
        assert read_exactly(sock, 2) == b"ab"  # forwarding goes on past the bound
        wait_for(lambda: proxy.recorded_bytes + proxy.unrecorded_bytes == 20, "all 4 chunks")
        assert proxy.recorded_bytes <= 10
        assert proxy.recorded("c2s") == b"12345678"
        # once full it stays stopped: the 2-byte chunks that would still fit are not recorded
        assert proxy.unrecorded_chunks == 3 and proxy.unrecorded_bytes == 12
        assert proxy.recorded("s2c") == b""


def test_drop_throws_bytes_away_until_cleared(echo):
    with TcpProxy("127.0.0.1", echo.port) as proxy, connect(proxy) as sock:
        sock.sendall(b"one")
        assert read_exactly(sock, 3) == b"one"
        proxy.drop = True
        sock.sendall(b"lost")
        wait_for(lambda: proxy.dropped_bytes == 4, "the dropped bytes")
        proxy.drop = False
        sock.sendall(b"two")
        assert read_exactly(sock, 3) == b"two"  # "lost" never reached the echo server
        assert proxy.recorded("c2s") == b"onetwo"
        assert not proxy.contains(b"lost")


def test_paused_holds_bytes_and_forwards_them_in_order_when_cleared(echo):
    with TcpProxy("127.0.0.1", echo.port) as proxy, connect(proxy) as sock:
        proxy.paused = True
        sock.sendall(b"held")
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(16)
        sock.settimeout(WAIT_S)
        proxy.paused = False
        assert read_exactly(sock, 4) == b"held"
        assert proxy.dropped_bytes == 0


def test_cut_closes_current_connections_and_new_ones_still_work(echo):
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        with connect(proxy) as sock:
            sock.sendall(b"hi")
            assert read_exactly(sock, 2) == b"hi"
            assert proxy.cut() == 1
            assert read_to_end(sock) == b""
        wait_for(lambda: not proxy.connections()[0]["open"], "the cut connection to close")
        assert exchange(proxy, b"again") == b"again"
        wait_for(lambda: not proxy.connections()[1]["open"], "the second connection to close")
        assert proxy.cut() == 0


def test_delay_still_forwards(echo):
    with TcpProxy("127.0.0.1", echo.port, delay_s=0.02) as proxy:
        assert exchange(proxy, b"slow but sure") == b"slow but sure"
        proxy.delay_s = 0.0
        assert exchange(proxy, b"fast") == b"fast"


def test_replay_sends_a_connections_bytes_again(echo):
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        assert exchange(proxy, b"request one") == b"request one"
        accepted = echo.accepted
        # the echo server closes once the replayed side half-closes
        assert proxy.replay(0, half_close=True) == b"request one"
        # without half-closing, it reads until the timeout, keeping what came back
        assert proxy.replay(0, timeout_s=0.3) == b"request one"
        assert proxy.replay(0, direction="s2c", half_close=True) == b"request one"
        assert echo.accepted == accepted + 3  # new connections, straight to the target
        assert len(proxy.connections()) == 1  # not through the proxy
        assert proxy.send_raw(b"raw bytes", half_close=True) == b"raw bytes"
        with EchoServer() as other:
            assert proxy.replay(0, port=other.port, half_close=True) == b"request one"
            assert other.accepted == 1


def test_a_target_that_refuses_ends_the_client_connection():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    with TcpProxy("127.0.0.1", port) as proxy, connect(proxy) as sock:
        assert read_to_end(sock) == b""
        assert proxy.failed_connects == 1


def test_stop_joins_every_thread_even_with_open_connections(echo):
    before = proxy_threads()
    proxy = TcpProxy("127.0.0.1", echo.port)
    with proxy:
        socks = [connect(proxy) for _ in range(3)]
        for s in socks:
            s.sendall(b"x")
            assert read_exactly(s, 1) == b"x"
    try:
        assert proxy_threads() == before
        for s in socks:
            assert read_to_end(s) == b""
    finally:
        for s in socks:
            s.close()
