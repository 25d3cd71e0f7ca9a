"""What crosses the wire of a keyed mesh, watched and played back through recording TCP proxies
(``tests/support/tcpproxy.py``): no plaintext of a block in either direction, client to agent
or agent to agent; recorded, tampered, replayed, reordered, truncated and cross-session sealed
messages refused; the same canary in the clear on a mesh without keys (the recording works).

The proxied node (node2) binds 127.0.0.2 and is started with ``--advertise 127.0.0.50`` and a
fixed ``--sealed-port``; three ``TcpProxy``s listen on 127.0.0.50 at its data, gossip and sealed
ports and forward to 127.0.0.2. The client and node1 use a copy of the cluster file naming
127.0.0.50 as node2's ``mesh_host``, so everything they send node2 goes through the proxies.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
import zmq

from mesh import protocol as P
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.security import link as links
from mesh.security import seal
from mesh.security.keys import KeyDir, load_client_key
from support.mesh import ROOT, LocalMesh, agent_command
from support.tcpproxy import TcpProxy

MiB = 1 << 20
PROXY_HOST = "127.0.0.50"
WAIT_S = 15.0


def _free_port(*hosts: str) -> int:
    """A port free on every one of ``hosts``."""
    for _ in range(200):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def _start(mesh: LocalMesh, name: str, config: Path, *extra: str) -> None:
    agent = mesh.node(name)
    with open(agent.log, "ab") as log:
        agent.proc = subprocess.Popen(
            agent_command(config, name) + list(extra), stdout=log, stderr=log,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=mesh.tmp)
    mesh.started.append(agent.proc)


def _nodes_table(client: MeshClient, address: str) -> dict[str, dict]:
    return {r["node"]: r for r in client._run(client._core.call(address, "nodes"))["nodes"]}


@contextlib.contextmanager
def proxied_mesh(tmp: Path, keyed: bool) -> Iterator[tuple[LocalMesh, Path, dict[str, TcpProxy]]]:
    """Two agents; node2 reached by node1 and the client only through proxies on 127.0.0.50.
    Yields (mesh, the client's cluster file, {"data", "gossip", "sealed": proxy})."""
    # node2 stands for a remote machine: no same-host path past the proxies
    mesh = LocalMesh.create(tmp, n=2, keyed=keyed, local_access=False)
    node2 = mesh.node("node2")
    doc = yaml.safe_load(mesh.config_path.read_text())
    for node in doc["nodes"]:
        if node["name"] == "node2":
            node["mesh_host"] = PROXY_HOST
    proxied = tmp / "cluster-proxied.yaml"
    proxied.write_text(yaml.safe_dump(doc))
    sealed_port = _free_port(node2.host, PROXY_HOST)
    ports = {"data": node2.port, "gossip": node2.port + 1}
    if keyed:
        ports["sealed"] = sealed_port
    proxies = {what: TcpProxy(node2.host, port, listen_host=PROXY_HOST, listen_port=port)
               for what, port in ports.items()}
    try:
        for proxy in proxies.values():
            proxy.start()
        _start(mesh, "node2", mesh.config_path, "--advertise", PROXY_HOST,
               "--sealed-port", str(sealed_port))
        _start(mesh, "node1", proxied)
        addresses = {"node1": mesh.node("node1").address,
                     "node2": f"tcp://{PROXY_HOST}:{node2.port}"}
        deadline = time.monotonic() + WAIT_S
        with MeshClient(proxied, timeout_s=1.0) as c:
            for name, address in addresses.items():
                while True:  # each agent, asked through the proxy for node2, knows both alive
                    for a in mesh.nodes:
                        assert a.proc.poll() is None, a.log.read_text()
                    try:
                        table = _nodes_table(c, address)
                        if all(table.get(n, {}).get("state") == "alive" for n in addresses) \
                                and table["node2"]["address"] == addresses["node2"]:
                            break
                    except Exception:
                        pass
                    assert time.monotonic() < deadline, (
                        f"{name} never saw both nodes alive:\n"
                        + "\n".join(a.log.read_text() for a in mesh.nodes))
                    time.sleep(0.1)
        yield mesh, proxied, proxies
    finally:
        leaked = mesh.stop_all()
        for proxy in proxies.values():
            proxy.stop()
        assert not leaked, f"agents ignored SIGTERM: {leaked}"


def _canary_traffic(mesh: LocalMesh, proxied: Path) -> tuple[bytes, str]:
    """Put the canary through every kind of traffic with node2: a client's write and read, a
    move node2 -> node1 (node1 reads the block from node2 through the proxy) and node1 -> node2
    (node2 pulls from node1 directly; node1's PULL and COMMIT, with the key records, go through
    the proxy), a named object. Returns (canary, the object's key)."""
    canary = os.urandom(32)
    data = canary * (MiB // 32)
    with MeshClient(proxied, timeout_s=20.0) as c:
        block = c.allocate(MiB, node="node2")
        c.write(block, data)
        assert c.read(block) == data
        c.move(block, "node1")  # node1 reads it from node2, through the proxy
        assert c.stat(block).node == "node1"
        assert c.read(block) == data
        c.move(block, "node2")
        assert c.stat(block).node == "node2"
        assert c.read(block) == data
        key = f"canary-{canary[:4].hex()}"
        info = c.put_bytes(key, data, node="node1")
        c.move(info.block_id, "node2")  # the COMMIT to node2 carries the key's record
        assert c.object_info(key).node == "node2"
        assert c.get_bytes(key) == data
        c.free(block)
        c.delete(key)
    return canary, key


def test_no_plaintext_crosses_the_wire_of_a_keyed_mesh(tmp_path):
    with proxied_mesh(tmp_path, keyed=True) as (mesh, proxied, proxies):
        canary, key = _canary_traffic(mesh, proxied)
        data, sealed = proxies["data"], proxies["sealed"]
        # the bulk went sealed, both ways: the block written to node2 by the client, read from
        # node2 twice by the client and once by node1, the object once
        assert len(sealed.recorded("c2s")) >= MiB
        assert len(sealed.recorded("s2c")) >= 4 * MiB
        assert len(data.recorded("c2s")) > 0 and len(data.recorded("s2c")) > 0  # handshakes
        assert len(proxies["gossip"].recorded("s2c")) > 0  # node2's heartbeats, to node1
        for what, proxy in proxies.items():
            assert proxy.unrecorded_bytes == 0, what
            assert not proxy.contains(canary), f"the canary crossed the {what} proxy in clear"
            assert not proxy.contains(canary[:16]), what
            assert not proxy.contains(key.encode()), f"the key name crossed the {what} proxy"


def test_the_canary_is_in_the_clear_without_keys(tmp_path):
    """The same traffic on a mesh without keys: the proxies see the canary (so the recording,
    and the keyed test's finding nothing, mean something)."""
    with proxied_mesh(tmp_path, keyed=False) as (mesh, proxied, proxies):
        canary, key = _canary_traffic(mesh, proxied)
        data = proxies["data"]
        assert canary in data.recorded("c2s")  # the client's write
        assert canary in data.recorded("s2c")  # reads, and node1 reading node2's block
        assert data.contains(key.encode())
        # and a recorded connection played back reaches the agent (the replay of the keyed test
        # is refused by the agent, not lost on the way)
        with MeshClient(proxied, timeout_s=10.0) as c:
            block = c.allocate(4096, node="node2")
            c.write(block, b"K" * 4096)
            recorded = _recorded_write(mesh, proxied, proxies, block, b"D" * 4096)
            c.write(block, b"K" * 4096)
            for index in recorded["data"]:
                _replay_paced(data, index)
            assert c.read(block) == b"D" * 4096
            c.free(block)


# --- recorded connections played back, and sealed messages made by hand -----------------------


def _stats(client: MeshClient, address: str) -> dict:
    return client._run(client._core.call(address, "stats"))


def _new_conns(proxy: TcpProxy, before: int) -> list[int]:
    return [c["index"] for c in proxy.connections()[before:]]


def _replay_paced(proxy: TcpProxy, index: int, timeout_s: float = 0.3) -> bytes:
    """Send connection ``index``'s recorded client bytes again on a new connection to the
    proxy's target, chunk by chunk as they were forwarded, waiting (at most ``timeout_s``) before
    each for as many server bytes as had come before it. (``TcpProxy.replay`` sends everything
    at once; libzmq drops a connection whose peer sends past its greeting before the greeting
    exchange is done, so such a replay would prove nothing.) Returns what the server sent."""
    chunks = [(d, b) for i, d, b in proxy.chunks() if i == index]
    got = bytearray()

    def read_until(want: int) -> None:
        end = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < end:
            if not select.select([sock], [], [], 0.05)[0]:
                continue
            try:
                chunk = sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            got.extend(chunk)

    with socket.create_connection((proxy.target_host, proxy.target_port), timeout=2.0) as sock:
        want = 0
        for direction, data in chunks:
            if direction == "s2c":
                want += len(data)
                continue
            read_until(want)
            try:
                sock.sendall(data)
            except OSError:
                break
        read_until(1 << 62)  # whatever else it says within timeout_s
    return bytes(got)


def _recorded_write(mesh: LocalMesh, proxied: Path, proxies: dict[str, TcpProxy],
                    block: str, data: bytes) -> dict[str, list[int]]:
    """A new client writes ``data`` to ``block`` (through the proxies) and reads it back;
    the proxies' connections it made, by proxy."""
    before = {w: len(p.connections()) for w, p in proxies.items()}
    with MeshClient(proxied, timeout_s=10.0) as writer:
        writer.write(block, data)
        assert writer.read(block) == data
    return {w: _new_conns(p, before[w]) for w, p in proxies.items()}


def test_a_recorded_connection_played_back_changes_nothing(tmp_path):
    """A client's sealed connection (a write of other bytes), recorded by the proxy and sent
    again byte for byte on a new connection after the known bytes were restored: the block keeps
    the known bytes, the agent counted the replayed messages as refused and answered nothing
    but the greeting. The same for the CURVE connection of the handshake."""
    with proxied_mesh(tmp_path, keyed=True) as (mesh, proxied, proxies):
        address = f"tcp://{PROXY_HOST}:{mesh.node('node2').port}"
        known, other = b"K" * 4096, b"D" * 4096
        with MeshClient(proxied, timeout_s=10.0) as c:
            block = c.allocate(4096, node="node2")
            c.write(block, known)
            recorded = _recorded_write(mesh, proxied, proxies, block, other)
            assert recorded["sealed"] and recorded["data"]
            c.write(block, known)
            refused_before = _stats(c, address)["auth"]["refused_sealed"]
            replies = []
            for what in ("sealed", "data"):
                for index in recorded[what]:
                    sent = proxies[what].connections()[index]["c2s"]
                    assert len(sent) > 4096 or what == "data"
                    assert other[:64] not in sent  # the write is on the wire, sealed
                    replies.append(_replay_paced(proxies[what], index))
            assert c.read(block) == known
            auth = _stats(c, address)["auth"]
            assert auth["refused_sealed"] > refused_before, auth
            # ZMTP greeting (64 bytes) and READY: nothing sealed came back
            assert all(len(r) < 200 for r in replies[:len(recorded["sealed"])]), \
                [len(r) for r in replies]
            c.free(block)


@pytest.fixture(scope="module")
def keyed_pair(tmp_path_factory):
    """Two keyed agents (no proxies) shared by the message-level tests."""
    tmp = tmp_path_factory.mktemp("sealed")
    mesh = LocalMesh.create(tmp, n=2, keyed=True, local_access=False)  # (remote, as above)
    try:
        mesh.start_all()
        yield mesh
    finally:
        leaked = mesh.stop_all()
        assert not leaked, f"agents ignored SIGTERM: {leaked}"


def _session(mesh: LocalMesh, ctx: zmq.Context, node: str = "node1") -> links.SealedLink:
    """A sealed session of the admin key with ``node``, made as an agent makes one
    (``agents/server.py`` ``_dial_peer``)."""
    key = load_client_key(mesh.admin_key)
    server_key = KeyDir(mesh.tmp / "keys").agent_public()[node]
    return links.run_blocking(links.handshake(
        ctx, mesh.node(node).address, server_key=server_key, public=key.public,
        secret=key.secret, key_name=key.name, timeout_s=5.0, hwm=64,
        max_message_bytes=64 * MiB, close=lambda s: s.close(0), node=node))


def _write_frames(link: links.SealedLink, rid: int, block: str, data: bytes,
                  sealer: seal.Sealer | None = None) -> list[bytes]:
    header = P.encode_request(P.WRITE, rid, {"block": block, "offset": 0})
    return (sealer or link.sealer).seal(header, data)


def _answer(link: links.SealedLink, timeout_s: float = 1.0) -> P.Reply | None:
    """The reply on ``link`` within ``timeout_s``, or None (a refused message gets none)."""
    if not link.sock.poll(int(timeout_s * 1000)):
        return None
    return P.parse_reply(link.open(link.sock.recv_multipart()))


class _KeptKey(links.SealedLink):
    """A ``SealedLink`` that keeps its session key (for sealing a message under it by hand)."""

    def __init__(self, sock: zmq.Socket, session_id: bytes, key: bytes, monitor=None):
        super().__init__(sock, session_id, key, monitor)
        self.key = key


def test_sealed_messages_replayed_reordered_tampered_or_spliced_are_refused(keyed_pair,
                                                                             monkeypatch):
    """One real session (the handshake of mesh/security/link.py, driven by run_blocking as an
    agent drives it), and WRITEs sealed by hand: each bad one gets no answer, changes nothing
    and is counted in STATS auth.refused_sealed; a genuine one after them works."""
    monkeypatch.setattr(links, "SealedLink", _KeptKey)
    mesh = keyed_pair
    ctx = zmq.Context()
    first = second = None
    try:
        with mesh.client(timeout_s=10.0) as c:
            address = mesh.node("node1").address
            block = c.allocate(64, node="node1")
            c.write(block, b"0" * 64)
            base = _stats(c, address)["auth"]["refused_sealed"]
            count = 0

            def refused(link: links.SealedLink) -> None:
                """The agent counted one more refused message, and answered none."""
                nonlocal count
                count += 1
                deadline = time.monotonic() + 5.0
                while _stats(c, address)["auth"]["refused_sealed"] < base + count:
                    assert time.monotonic() < deadline, f"message {count} was not refused"
                    time.sleep(0.02)
                assert _stats(c, address)["auth"]["refused_sealed"] == base + count
                assert _answer(link, 0.2) is None  # it came before the stats reply: no answer

            first = _session(mesh, ctx)
            genuine = _write_frames(first, 1, block, b"A" * 64)
            first.sock.send_multipart(genuine)
            reply = _answer(first, 5.0)
            assert reply is not None and reply.ok, reply
            assert c.read(block) == b"A" * 64

            # the same message again (the agent has taken its counter)
            c.write(block, b"0" * 64)
            first.sock.send_multipart(genuine)
            refused(first)
            assert c.read(block) == b"0" * 64

            # an older counter after a newer one
            older = _write_frames(first, 2, block, b"B" * 64)
            newer = _write_frames(first, 3, block, b"C" * 64)
            first.sock.send_multipart(newer)
            reply = _answer(first, 5.0)
            assert reply is not None and reply.ok and reply.request_id == 3
            first.sock.send_multipart(older)
            refused(first)
            assert c.read(block) == b"C" * 64

            # one bit of the payload's ciphertext flipped
            tampered = _write_frames(first, 4, block, b"E" * 64)
            flipped = bytearray(tampered[2])
            flipped[5] ^= 0x01
            first.sock.send_multipart([tampered[0], tampered[1], bytes(flipped)])
            refused(first)
            assert c.read(block) == b"C" * 64

            # the payload frame dropped (what is left is a whole, well-formed WRITE header)
            truncated = _write_frames(first, 5, block, b"F" * 64)
            first.sock.send_multipart(truncated[:2])
            refused(first)

            # a second session, in use on its own connection: its messages sent on the first
            # connection are refused (answered on neither)
            second = _session(mesh, ctx)
            second.sock.send_multipart(_write_frames(second, 1, block, b"G" * 64))
            reply = _answer(second, 5.0)
            assert reply is not None and reply.ok
            first.sock.send_multipart(_write_frames(second, 2, block, b"H" * 64))
            refused(first)
            assert _answer(second, 0.2) is None
            # session 1's envelope, sealed under session 2's key (with a fresh counter)
            spliced = seal.Sealer(first.sealer.session_id, second.key, seal.TO_AGENT)
            spliced.counter = first.sealer.counter + 10
            first.sock.send_multipart(_write_frames(first, 7, block, b"I" * 64, spliced))
            refused(first)
            assert c.read(block) == b"G" * 64

            # after all that, a genuine message on the first session still works
            first.sock.send_multipart(_write_frames(first, 6, block, b"Z" * 64))
            reply = _answer(first, 5.0)
            assert reply is not None and reply.ok and reply.request_id == 6
            assert c.read(block) == b"Z" * 64
            c.free(block)
    finally:
        for link in (first, second):
            if link is not None:
                link.unwatch(lambda sock: sock.close(0))
                link.sock.close(0)
        ctx.term()


# --- a reply tampered on its way to the client --------------------------------------------------


class _Flipper:
    """A TCP forwarder to one target that, while ``armed``, flips one bit of the agent's bytes
    (server to client) at ``offset`` of a connection's stream, once. Threads are daemons,
    every wait is a short poll, ``close`` joins them."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], offset: int):
        self.target, self.offset = target, offset
        self.armed = threading.Event()
        self.flipped = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.05)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(self.target, timeout=2.0)
            for src, dst, flip in ((client, server, False), (server, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, flip), daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, flip: bool) -> None:
        seen = 0
        src.settimeout(0.05)
        try:
            while not self._stop.is_set():
                try:
                    chunk = src.recv(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                if flip and self.armed.is_set() and seen <= self.offset < seen + len(chunk):
                    chunk = bytearray(chunk)
                    chunk[self.offset - seen] ^= 0x01
                    self.armed.clear()
                    self.flipped += 1
                seen += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        self._listener.close()
        assert not [t for t in self._threads if t.is_alive()]


def test_a_reply_tampered_on_the_way_is_never_returned_as_data(tmp_path, monkeypatch):
    """One bit of a sealed 1 MiB READ reply flipped in flight (a forwarder between the client
    and the agent's sealed port): the read fails at once instead of returning the bytes, and
    the next read on the same session returns the block as written."""
    monkeypatch.delenv("GRID_KEY", raising=False)
    host = "127.0.0.60"
    mesh = LocalMesh.create(tmp_path, n=1, keyed=True, local_access=False)  # (remote, as above)
    node1 = mesh.node("node1")
    doc = yaml.safe_load(mesh.config_path.read_text())
    doc["nodes"][0]["mesh_host"] = host
    proxied = tmp_path / "cluster-proxied.yaml"
    proxied.write_text(yaml.safe_dump(doc))
    sealed_port = _free_port(node1.host, host)
    data_proxy = TcpProxy(node1.host, node1.port, listen_host=host, listen_port=node1.port)
    # past the greeting and the small replies before the read: inside the READ's payload
    flipper = _Flipper((host, sealed_port), (node1.host, sealed_port), offset=512 * 1024)
    try:
        data_proxy.start()
        _start(mesh, "node1", mesh.config_path, "--advertise", host,
               "--sealed-port", str(sealed_port))
        mesh.wait_ready(node1)
        data = os.urandom(MiB)
        with MeshClient(proxied, timeout_s=10.0) as admin:
            block = admin.allocate(MiB)
            admin.write(block, data)
        with MeshClient(proxied, timeout_s=10.0) as c:
            flipper.armed.set()
            out, start = None, time.monotonic()
            try:
                out = c.read(block)
            except MeshError as exc:
                out = exc
            assert flipper.flipped == 1
            assert isinstance(out, seal.SealError), f"not refused as tampered: {out!r}"
            assert time.monotonic() - start < 5.0  # refused, not waited out (10 s)
            assert c.read(block) == data
            c.free(block)
    finally:
        leaked = mesh.stop_all()
        data_proxy.stop()
        flipper.close()
        assert not leaked, f"agents ignored SIGTERM: {leaked}"
