"""The direct path (``mesh/directwire.py``, ``agents/direct.py``, ``mesh/client/direct.py``)
against real agents: without cluster keys, block reads and writes travel over a plain TCP
stream beside ZeroMQ, with the checks of the ZeroMQ path, and fall back to it where they must.
The meshes here run with ``local_access: false``, so that agents on this machine are reached as
remote ones are."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from mesh import localwire as L
from mesh.client import AsyncMeshClient
from mesh.errors import BlockNotFound, MeshTimeout, NodeUnavailable, OutOfRange
from support.mesh import running_mesh
from support.wire import read_when, write_is_held, DirectSocket, raw_call

MiB = 1 << 20


def direct_ops(client) -> int:
    return sum(core.direct.done for core in client._pool.cores)


def stats(address: str) -> dict:
    return raw_call(address, "stats", {}).body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("direct"), n=2, memory_gb=0.5,
                      local_access=False) as m:
        yield m


def test_large_and_small_reads_and_writes_take_the_direct_path(mesh):
    address = mesh.node("node1").address
    with mesh.client() as c:
        assert c._parts(lambda: 1 << 30) == 1
        block = c.allocate(40 * MiB, node="node1")
        data = os.urandom(40 * MiB)
        before, transfers = direct_ops(c), stats(address)["direct"]["transfers"]
        c.write(block, data)  # large: streamed, in one part (mesh/client/parallel.py)
        c.write(block, b"hello", 12345)  # small: inline
        assert bytes(c.read(block, 5, 12345)) == b"hello"
        out = bytearray(40 * MiB)
        c.read_into(block, out)
        assert out[:12345] == data[:12345] and out[12350:] == data[12350:]
        assert bytes(c.read(block, 9 * MiB, 31 * MiB)) == data[31 * MiB:]
        assert direct_ops(c) - before >= 5
        after = stats(address)
        assert after["direct"]["transfers"] - transfers >= 3
        assert after["direct"]["port"] > 0
        # counted as the reads and writes they are
        assert after["ops"]["by_op"]["read"] >= 3 and after["ops"]["by_op"]["write"] >= 2
        c.free(block)


def test_the_asyncio_client_streams_reads_side_by_side(mesh):
    blobs = [os.urandom(9 * MiB) for _ in range(4)]

    async def run():
        async with AsyncMeshClient(mesh.config_path) as c:
            blocks = [await c.allocate(9 * MiB, node=f"node{1 + i % 2}") for i in range(4)]
            await asyncio.gather(*(c.write(b, d) for b, d in zip(blocks, blobs)))
            got = await asyncio.gather(*(c.read(b) for b in blocks))
            for b in blocks:
                await c.free(b)
            return got, direct_ops(c)

    got, done = asyncio.run(run())
    assert [bytes(g) for g in got] == blobs and done >= 8


def test_bad_ranges_and_unknown_blocks_get_the_zeromq_paths_errors(mesh):
    with mesh.client() as c:
        block = c.allocate(16 * MiB)
        with pytest.raises(OutOfRange):
            c.write(block, b"x" * (9 * MiB), 8 * MiB)
        with pytest.raises(OutOfRange):
            c.read(block, 10, 16 * MiB - 5)
        c.free(block)
        with pytest.raises(BlockNotFound):
            c.read(block, 9 * MiB)
        with pytest.raises(BlockNotFound):
            c.write(block, b"x" * 10)


def test_a_block_that_moves_is_followed(mesh):
    with mesh.client() as c:
        block = c.allocate(16 * MiB, node="node1")
        data = os.urandom(16 * MiB)
        c.write(block, data)
        c.move(block, "node2")
        assert bytes(c.read(block)) == data  # from node2, over its own direct connection
        c.write(block, b"after")
        c.move(block, "node1")
        assert bytes(c.read(block, 5)) == b"after"
        c.free(block)


def test_garbage_on_the_direct_port_is_refused_and_the_agent_serves_on(mesh):
    address = mesh.node("node2").address
    raw = DirectSocket(address)
    try:
        ok, body = raw.call(L.BEGIN, {"block": "b", "offset": 0, "length": 1, "write": False,
                                      "have": 0})
        assert not ok and "hello" in body["message"]
        assert raw.call(L.HELLO, {})[0]
        for bad in (["begin", 2, {"block": 1}], ["nope", 3, {}], ["end", 4, {"pin": -1}],
                    ["begin", 5, {"block": "x", "offset": -5, "length": 1, "write": False,
                                  "have": 0}],
                    ["begin", 6, {"block": "x", "offset": 0, "length": 1 << 30, "write": True,
                                  "have": 0, "deadline": "soon"}]):
            raw.send(bad)
            message = raw.recv()
            assert message[1] == L.ERROR, bad
        ok, body = raw.call(L.END, {"pin": 999})
        assert not ok and body["code"] == "bad_request"
        raw.sock.sendall(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")  # not msgpack: dropped
        with pytest.raises((EOFError, ConnectionError, OSError)):
            raw.call(L.HELLO, {})
    finally:
        raw.close()
    for garbage in (b"\xff\xff\xff\xff" + b"x" * 100,  # a frame over the limit
                    b"".join(raw.D.frame(["hello", i, {}]) for i in range(200))):  # a flood
        bad = DirectSocket(address)
        try:
            bad.sock.sendall(garbage)
            with pytest.raises((EOFError, ConnectionError, OSError)):
                for _ in range(300):
                    bad.recv()
        finally:
            bad.close()
    half = DirectSocket(address)  # half a frame, then gone
    half.sock.sendall(b"\x00\x00\x01\x00abc")
    half.close()
    assert raw_call(address, "ping", {}).ok
    assert stats(address)["direct"]["refused"] >= 3


def _begin(raw: DirectSocket, block: str, length: int, write: bool, **extra) -> dict:
    assert raw.call(L.HELLO, {})[0]
    ok, begun = raw.call(L.BEGIN, {"block": block, "offset": 0, "length": length,
                                   "write": write, "have": 0, **extra})
    assert ok, begun
    return begun


def test_a_write_past_its_deadline_stops_landing_and_a_stalled_one_lets_go(mesh):
    address = mesh.node("node1").address
    with mesh.client() as c:
        block = c.allocate(8 * MiB, node="node1")
        raw = DirectSocket(address)
        try:
            _begin(raw, block, 8 * MiB, True, deadline=time.time() + 1.0)
            raw.sock.sendall(b"\xaa" * (2 * MiB))
            time.sleep(1.5)  # its client has given up by now
            with pytest.raises((ConnectionError, OSError, EOFError)):
                for _ in range(8):
                    raw.sock.sendall(b"\xbb" * MiB)
                    time.sleep(0.05)
                raw.recv()  # (dropped: no END reply comes)
        finally:
            raw.close()
        data = c.read(block)
        assert data.count(b"\xbb") == 0, "bytes sent after the deadline landed"
        assert stats(address)["late_requests"] >= 1
        # a client that begins a write and goes away leaves the agent serving
        gone = DirectSocket(address)
        _begin(gone, block, 8 * MiB, True)
        gone.sock.sendall(b"\xcc" * 1000)
        gone.close()
        deadline = time.monotonic() + 10  # (its 1000 bytes land; then it is dropped)
        while stats(address)["direct"]["connections"] > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.write(block, b"fine")
        assert bytes(c.read(block, 4)) == b"fine"
        c.free(block)


def test_a_zeromq_write_waits_for_a_direct_read_of_its_range(mesh):
    address = mesh.node("node2").address
    with mesh.client() as c:
        block = c.allocate(16 * MiB, node="node2")
        c.write(block, b"old!" * (4 * MiB))
        raw = DirectSocket(address)
        try:
            begun = _begin(raw, block, 16 * MiB, False)
            assert write_is_held(address, block)  # no reply while the read is open
            assert raw.recv_raw(16 * MiB) == b"old!" * (4 * MiB)
            assert raw.call(L.END, {"pin": begun["pin"]})[0]
        finally:
            raw.close()
        assert read_when(c, block, b"new!") == b"new!"  # then the held write is applied
        c.free(block)


def test_a_replicated_blocks_writes_go_through_its_primary(tmp_path):
    with running_mesh(tmp_path, n=2, memory_gb=0.25, replica_spread="node",
                      local_access=False) as m:
        with m.client() as c:
            block = c.allocate(16 * MiB, replicas=2)
            data = os.urandom(16 * MiB)
            c.write(block, data)
            assert bytes(c.read(block)) == data
            for node in c.stat(block).nodes:
                got = raw_call(m.node(node).address, "read",
                               {"block": block, "offset": 9 * MiB, "length": MiB})
                assert bytes(got.payload[0]) == data[9 * MiB : 10 * MiB], node


@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_a_paused_or_killed_agent_fails_as_on_zeromq(tmp_path, fault):
    with running_mesh(tmp_path, n=1, memory_gb=0.25, local_access=False) as m:
        with m.client(timeout_s=1.0) as c:
            block = c.allocate(16 * MiB)
            c.write(block, b"x" * (16 * MiB))  # the direct connection is made
            assert direct_ops(c) >= 1
            m.kill("node1", getattr(signal, fault))
            try:
                start = time.monotonic()
                with pytest.raises(NodeUnavailable if fault == "SIGKILL" else
                                   (MeshTimeout, NodeUnavailable)):
                    c.read(block)
                with pytest.raises(NodeUnavailable if fault == "SIGKILL" else
                                   (MeshTimeout, NodeUnavailable)):
                    c.write(block, b"y" * (16 * MiB))
                assert time.monotonic() - start < 10
            finally:
                if fault == "SIGSTOP":
                    m.kill("node1", signal.SIGCONT)
            if fault == "SIGSTOP":
                time.sleep(0.5)  # (the late BEGIN of the timed-out write is answered)
                data = c.read(block)
                assert data == b"x" * (16 * MiB), "a write that timed out was applied"


def test_with_direct_tcp_off_or_keys_the_client_uses_zeromq(tmp_path):
    (tmp_path / "off").mkdir()
    (tmp_path / "keyed").mkdir()
    with running_mesh(tmp_path / "off", n=1, memory_gb=0.25, local_access=False,
                      direct_tcp=False) as m:
        assert raw_call(m.node("node1").address, "direct", {}).body["port"] == 0
        with m.client() as c:
            block = c.allocate(16 * MiB)
            c.write(block, b"z" * (16 * MiB))
            assert bytes(c.read(block)) == b"z" * (16 * MiB) and direct_ops(c) == 0
    with running_mesh(tmp_path / "keyed", n=1, memory_gb=0.25, local_access=False,
                      keyed=True) as m:
        with m.client() as c:
            assert c._run(c._core.call(m.node("node1").address, "direct", {}))["port"] == 0
            block = c.allocate(16 * MiB)
            c.write(block, b"k" * (16 * MiB))
            assert bytes(c.read(block)) == b"k" * (16 * MiB) and direct_ops(c) == 0


def test_a_move_copies_over_the_sources_direct_port(mesh):
    data = os.urandom(70 * MiB)  # two pieces of a direct pull (agents/direct_pull.py)
    with mesh.client() as c:
        block = c.allocate(70 * MiB, node="node1")
        c.write(block, data)
        pulls = {n: stats(mesh.node(n).address)["direct"]["pulls"] for n in ("node1", "node2")}
        c.move(block, "node2")
        assert c.stat(block).node == "node2"
        assert bytes(c.read(block)) == data
        c.write(block, b"moved")
        c.move(block, "node1")
        assert bytes(c.read(block, 5)) == b"moved"
        assert bytes(c.read(block, 1000, 5)) == data[5:1005]
        for n in ("node1", "node2"):
            assert stats(mesh.node(n).address)["direct"]["pulls"] == pulls[n] + 1, n
        c.free(block)


def test_an_operation_given_up_mid_stream_leaves_nothing_for_the_next(mesh):
    """A cancelled asyncio read leaves the rest of its bytes in the stream; the connection is
    dropped, so the next request never takes them for its reply (a block's bytes could be
    made to look like one)."""
    from dataclasses import replace

    from mesh.config import load_cluster_config

    cfg = load_cluster_config(mesh.config_path)
    cfg = replace(cfg, mesh=replace(cfg.mesh, client_connections=1))
    data = os.urandom(64 * MiB)

    async def run():
        async with AsyncMeshClient(cfg) as c:
            block = await c.allocate(64 * MiB, node="node1")
            await c.write(block, data)
            direct = c._core.direct
            dropped = 0
            for wait_s in (0.002, 0.005, 0.01, 0.02):
                await c.read(block, 10)  # (the link is made)
                before = direct._links.get(mesh.node("node1").address)
                task = asyncio.ensure_future(c.read(block))
                await asyncio.sleep(wait_s)
                if task.done():
                    continue
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                dropped += before is not None and \
                    direct._links.get(mesh.node("node1").address) is not before
                assert bytes(await c.read(block, 1000, 5)) == data[5:1005]
                assert bytes(await c.read(block, 9 * MiB, MiB)) == data[MiB : 10 * MiB]
            await c.free(block)
            return dropped

    assert asyncio.run(run()) >= 1
