"""The same-host path (``mesh/localwire.py``, ``agents/local.py``, ``mesh/client/local.py``)
against real agents: a client on the agents' machine reads and writes blocks in shared memory,
with the checks of the network path, and falls back to the network where it must."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import time

import pytest

from mesh import localwire as L
from mesh.client import AsyncMeshClient
from mesh.errors import BlockNotFound, Forbidden, MeshTimeout, NodeUnavailable, OutOfRange
from support.mesh import running_mesh
from support.wire import read_when, write_is_held, LocalSocket, raw_call

MiB = 1 << 20


def local_ops(client) -> int:
    return sum(core.local.done for core in client._pool.cores)


def served(address: str) -> dict:
    return raw_call(address, "stats", {}).body["ops"]["by_op"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("local"), n=2, memory_gb=0.5) as m:
        yield m


def test_reads_and_writes_on_this_machine_go_through_shared_memory(mesh):
    with mesh.client() as c:
        block = c.allocate(40 * MiB, node="node1")
        data = os.urandom(40 * MiB)
        before = local_ops(c)
        c.write(block, data)
        c.write(block, b"hello", 12345)
        assert bytes(c.read(block, 5, 12345)) == b"hello"
        out = bytearray(40 * MiB)
        c.read_into(block, out)
        assert out[:12345] == data[:12345] and out[12350:] == data[12350:]
        assert local_ops(c) - before >= 4
        # the network carried none of those bytes; the agent counted them as reads and writes
        ops = served(mesh.node("node1").address)
        assert ops["read"] >= 2 and ops["write"] >= 2
        c.free(block)


def test_the_asyncio_client_takes_the_same_path(mesh):
    async def run():
        async with AsyncMeshClient(mesh.config_path) as c:
            block = await c.allocate(MiB)
            await c.write(block, b"x" * 1000, 10)
            got = await asyncio.gather(*(c.read(block, 1000, 10) for _ in range(8)))
            await c.free(block)
            return got, local_ops(c)

    got, done = asyncio.run(run())
    assert all(bytes(g) == b"x" * 1000 for g in got) and done >= 9


def test_bad_ranges_and_unknown_blocks_get_the_network_paths_errors(mesh):
    with mesh.client() as c:
        block = c.allocate(4096)
        with pytest.raises(OutOfRange):
            c.write(block, b"x" * 10, 4090)
        with pytest.raises(OutOfRange):
            c.read(block, 10, 4090)
        c.free(block)
        with pytest.raises(BlockNotFound):
            c.read(block, 10)
        with pytest.raises(BlockNotFound):
            c.write(block, b"late")


def test_a_freed_block_gives_its_memory_back_even_while_a_client_maps_it(mesh):
    """Another process still maps the block after the free; the agent punched its pages out, so
    the host gets the memory back at once and the old mapping reads zeros, never other bytes.
    The client that freed it unmapped it."""
    with mesh.client() as c:
        block = c.allocate(64 * MiB, node="node2")
        c.write(block, b"\xab" * (64 * MiB))
        raw = LocalSocket(mesh.node("node2").address)
        try:
            assert raw.call(L.HELLO, {})[0]
            ok, begun, fds = raw.call(L.BEGIN, {"block": block, "offset": 0, "length": 4096,
                                               "write": False, "have": 0})
            assert ok and len(fds) == 1
            mapped = mmap.mmap(fds[0], 64 * MiB, flags=mmap.MAP_SHARED)
            os.close(fds[0])
            assert mapped[:4] == b"\xab" * 4
            assert raw.call(L.END, {"pin": begun["pin"]})[0]
        finally:
            raw.close()
        c.free(block)
        assert mapped[: 64 * MiB : 4096] == bytes(16384)  # every page: zeros, not 0xab
        mapped.close()
        assert all(block not in link.maps for link in c._core.local._links.values())
        with pytest.raises(BlockNotFound):
            c.read(block, 16)


def test_a_block_that_moved_away_and_back_is_read_and_written_right(mesh):
    """Its memory changed under the same id twice; the client never uses the old mapping."""
    with mesh.client() as c:
        block = c.allocate(8 * MiB, node="node1")
        c.write(block, b"first" * 100)
        assert bytes(c.read(block, 5)) == b"first"
        c.move(block, "node2")
        c.write(block, b"after")  # follows the block, and maps node2's memory
        c.move(block, "node1")  # back: new memory under the same id
        assert bytes(c.read(block, 5)) == b"after"
        c.write(block, b"again")
        with mesh.client() as other:  # a fresh client sees what the first one wrote
            assert bytes(other.read(block, 5)) == b"again"
        c.free(block)


def test_a_replicated_blocks_writes_go_through_its_primary_and_reach_every_copy(tmp_path):
    with running_mesh(tmp_path, n=2, memory_gb=0.25, replica_spread="node") as m:
        with m.client() as c:
            block = c.allocate(MiB, replicas=2)
            c.write(block, b"copied")
            info = c.stat(block)
            assert sorted(info.nodes) == ["node1", "node2"]
            reads_before = local_ops(c)
            assert bytes(c.read(block, 6)) == b"copied"
            assert local_ops(c) == reads_before + 1  # the read was local, the write was not
            backup = m.node(info.nodes[1]).address
            got = raw_call(backup, "read", {"block": block, "offset": 0, "length": 6})
            assert bytes(got.payload[0]) == b"copied"


def test_a_network_write_waits_for_a_local_read_of_its_range(mesh):
    with mesh.client() as c:
        block = c.allocate(MiB, node="node1")
        c.write(block, b"old!")
        address = mesh.node("node1").address
        raw = LocalSocket(address)
        try:
            assert raw.call(L.HELLO, {})[0]
            ok, begun, fds = raw.call(L.BEGIN, {"block": block, "offset": 0, "length": 4,
                                               "write": False, "have": 0})
            assert ok and len(fds) == 1
            for fd in fds:
                os.close(fd)
            assert write_is_held(address, block)  # no reply while the read is open
            assert bytes(c.read(block, 4)) == b"old!"
            assert raw.call(L.END, {"pin": begun["pin"]})[0]
        finally:
            raw.close()
        assert read_when(c, block, b"new!") == b"new!"  # then the held write is applied
        c.free(block)


def test_garbage_on_the_unix_socket_is_refused_and_the_agent_serves_on(mesh):
    address = mesh.node("node2").address
    raw = LocalSocket(address)
    try:
        ok, body, _ = raw.call(L.BEGIN, {"block": "b", "offset": 0, "length": 1,
                                         "write": False, "have": 0})
        assert not ok and "hello" in body["message"]
        assert raw.call(L.HELLO, {})[0]
        for bad in (["begin", 2, {"block": 1}], ["nope", 3, {}], ["end", 4, {"pin": -1}],
                    ["begin", 5, {"block": "x", "offset": -5, "length": 1, "write": False,
                                  "have": 0}]):
            raw.L.send(raw.sock, bad)
            message, _ = raw.L.recv(raw.sock)
            assert message[1] == L.ERROR, bad
        ok, body, _ = raw.call(L.END, {"pin": 999})
        assert not ok and body["code"] == "bad_request"
        ok, body, _ = raw.call(L.BEGIN, {"block": "block_0_nowhere_x", "offset": 0,
                                         "length": 1, "write": True, "have": 0})
        assert not ok and body["code"] == "unknown_block"
        raw.sock.send(b"\xc1 not msgpack")  # garbled: the connection is dropped
        with pytest.raises((EOFError, ConnectionError, OSError)):
            raw.call(L.HELLO, {})
    finally:
        raw.close()
    big = LocalSocket(address)
    try:
        big.sock.send(b"\x00" * (L.MAX_MESSAGE + 1000))  # over the limit: dropped too
        with pytest.raises((EOFError, ConnectionError, OSError)):
            big.call(L.HELLO, {})
    finally:
        big.close()
    assert raw_call(address, "ping", {}).ok


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run a client as another user")
def test_a_process_of_another_user_is_refused_without_keys(mesh):
    address = mesh.node("node1").address
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: another user, one HELLO, its answer down the pipe
        try:
            os.setuid(65534)
            raw = LocalSocket(address, timeout_s=5)
            ok, body, _ = raw.call(L.HELLO, {})
            os.write(write_end, f"{ok} {body.get('code')}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        answer = os.read(read_end, 100).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert answer == "False forbidden"


@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_a_paused_or_killed_agent_fails_as_on_the_network(tmp_path, fault):
    """Paused: the operation times out (MeshTimeout), in about the client's timeout, and works
    again once the agent goes on. Killed: the agent is found gone (NodeUnavailable)."""
    with running_mesh(tmp_path, n=1, memory_gb=0.25) as m:
        with m.client(timeout_s=1.0) as c:
            block = c.allocate(MiB)
            c.write(block, b"x")
            m.kill("node1", getattr(signal, fault))
            try:
                start = time.monotonic()
                with pytest.raises(NodeUnavailable if fault == "SIGKILL" else
                                   (MeshTimeout, NodeUnavailable)):
                    c.read(block, 1)
                assert time.monotonic() - start < 5
            finally:
                if fault == "SIGSTOP":
                    m.kill("node1", signal.SIGCONT)
            if fault == "SIGSTOP":
                assert bytes(c.read(block, 1)) == b"x"


def test_with_local_access_off_the_client_uses_the_network(tmp_path):
    with running_mesh(tmp_path, n=1, memory_gb=0.25, local_access=False) as m:
        with pytest.raises(OSError):  # nothing listens at the name
            LocalSocket(m.node("node1").address)
        with m.client() as c:
            block = c.allocate(MiB)
            c.write(block, b"net")
            assert bytes(c.read(block, 3)) == b"net" and local_ops(c) == 0
            with pytest.raises(Exception, match="same-host path"):
                c._run(c._core.call(m.node("node1").address, "local", {}))


def test_on_a_keyed_cluster_a_ticket_carries_its_keys_role(tmp_path):
    with running_mesh(tmp_path, n=1, memory_gb=0.25, keyed=True,
                      client_keys={"ro": "reader"}) as m:
        address = m.node("node1").address
        raw = LocalSocket(address)  # no ticket, no session: whatever the user
        try:
            ok, body, _ = raw.call(L.HELLO, {})
            assert not ok and body["code"] == "unauthenticated"
            ok, body, _ = raw.call(L.HELLO, {"ticket": b"\x00" * 16})
            assert not ok and body["code"] == "unauthenticated"
        finally:
            raw.close()
        with m.client(key=m.admin_key) as admin:
            block = admin.allocate(MiB)
            admin.write(block, b"secret")
            assert local_ops(admin) >= 1
        with m.client(key=m.keys["ro"]) as reader:
            assert bytes(reader.read(block, 6)) == b"secret"
            assert local_ops(reader) == 1
            with pytest.raises(Forbidden):
                reader.write(block, b"nope")
            # a reader's descriptor of the block maps read-only, never writable
            ticket = reader._run(reader._core.call(address, "local", {}))["ticket"]
            raw = LocalSocket(address)
            try:
                assert raw.call(L.HELLO, {"ticket": ticket})[0]
                assert not raw.call(L.HELLO, {"ticket": ticket})[0]  # one use
                ok, begun, fds = raw.call(L.BEGIN, {"block": block, "offset": 0, "length": 6,
                                                   "write": False, "have": 0})
                assert ok and len(fds) == 1
                with pytest.raises(PermissionError):
                    mmap.mmap(fds[0], MiB, flags=mmap.MAP_SHARED)
                seen = mmap.mmap(fds[0], MiB, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
                assert seen[:6] == b"secret"
                seen.close()
                os.close(fds[0])
                ok, body, _ = raw.call(L.BEGIN, {"block": block, "offset": 0, "length": 6,
                                                 "write": True, "have": begun["ino"]})
                assert not ok and body["code"] == "forbidden"
            finally:
                raw.close()
        with m.client(key=m.admin_key) as admin:
            assert bytes(admin.read(block, 6)) == b"secret"
            admin.free(block)


def test_files_stream_through_shared_memory_on_this_machine(mesh, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(9 * MiB + 123))  # several chunks and a short last one
    with mesh.client() as c:
        before = local_ops(c)
        info = c.put_file("local-file", source, node="node1")
        c.get_file("local-file", tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
        assert c.object_info("local-file").checksum == info.checksum
        assert local_ops(c) - before >= 10  # 5 chunks each way, none over TCP
        c.delete("local-file")


def test_a_replicated_files_chunks_take_the_network_and_arrive_whole(tmp_path):
    with running_mesh(tmp_path, n=2, memory_gb=0.25, replica_spread="node") as m:
        source = tmp_path / "in.bin"
        source.write_bytes(os.urandom(5 * MiB))
        with m.client() as c:
            c.put_file("copied-file", source, replicas=2)
            c.get_file("copied-file", tmp_path / "out.bin")
            assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
