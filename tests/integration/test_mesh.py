"""The mesh core against real agent processes on 127.0.0.1-3."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time

import msgpack
import psutil
import pytest
import zmq

from mesh import protocol as P
from mesh.client import AsyncMeshClient, MeshClient
from mesh.errors import (
    BlockNotFound,
    CapacityError,
    InvalidRequest,
    InvalidSize,
    NodeUnavailable,
    OutOfRange,
)

MiB = 1024 * 1024


def test_allocate_on_each_node_and_by_placement(shared_mesh):
    with shared_mesh.client() as c:
        names = {n.name for n in c.nodes() if n.state == "alive"}
        assert names == {"node1", "node2", "node3"}
        made = {}
        for name in sorted(names):
            block = c.allocate(3 * MiB, node=name)
            assert name in block and block.startswith("block_")
            assert c.stat(block).node == name
            made[name] = block
        # the node with the most room gets an unplaced block: fill node1 so it is not chosen
        big = c.allocate(200 * MiB, node="node1")
        auto = c.allocate(MiB)
        assert c.stat(auto).node != "node1"
        listed = {b.block_id for b in c.blocks()}
        assert set(made.values()) | {big, auto} <= listed
        for block in [*made.values(), big, auto]:
            c.free(block)
        assert not ({b.block_id for b in c.blocks()} & (set(made.values()) | {big, auto}))


def test_256_mib_at_odd_offsets_and_sizes_round_trips(shared_mesh):
    rng = random.Random(1234)
    total = 256 * MiB
    data = memoryview(os.urandom(total))
    sizes = [85 * MiB + 12345, 85 * MiB + 777, total - (170 * MiB + 12345 + 777)]
    with shared_mesh.client() as c:
        blocks = [c.allocate(size + 4099, node=f"node{i + 1}") for i, size in enumerate(sizes)]
        pos = 0
        placed = []  # (block, offset in block, start in data, length)
        for block, size in zip(blocks, sizes):
            off_in_block = 4099 - 3  # odd start inside the block
            done = 0
            while done < size:
                n = min(size - done, rng.choice([1, 7, 4093, 65537, MiB + 3, 5 * MiB + 11]))
                c.write(block, data[pos + done : pos + done + n], offset=off_in_block + done)
                done += n
            placed.append((block, off_in_block, pos, size))
            pos += size
        assert pos == total
        for block, off, start, size in placed:
            out = bytearray(size)
            view = memoryview(out)
            done = 0
            while done < size:  # read back in different odd pieces
                n = min(size - done, rng.choice([3, 8191, 3 * MiB + 1, 9 * MiB + 5]))
                c.read_into(block, view[done : done + n], offset=off + done)
                done += n
            assert out == data[start : start + size]
            # and once in one go with read()
            assert c.read(block, size, offset=off) == data[start : start + size]
        for block in blocks:
            c.free(block)


def test_bad_requests_give_typed_errors(shared_mesh):
    with shared_mesh.client() as c:
        block = c.allocate(1000, node="node2")
        with pytest.raises(OutOfRange):
            c.write(block, b"x" * 10, offset=995)
        with pytest.raises(OutOfRange):
            c.read(block, 10, offset=995)
        with pytest.raises(OutOfRange):
            c.read(block, 1, offset=1000)
        with pytest.raises(OutOfRange):
            c.write(block, b"x", offset=-1)
        with pytest.raises(InvalidSize):
            c.read(block, -5)
        with pytest.raises(InvalidSize):
            c.allocate(0)
        with pytest.raises(InvalidSize):
            c.allocate(-1)
        with pytest.raises(BlockNotFound):
            c.read("block_99_node2_zzzz", 1)
        with pytest.raises(BlockNotFound):
            c.write("no-such-block", b"x")
        with pytest.raises(InvalidRequest):
            c.write(block, "a str is not bytes")
        with pytest.raises(NodeUnavailable):
            c.allocate(10, node="nope")
        # nothing of the refused write landed
        assert c.read(block, 10, offset=990) == bytes(10)
        assert c.read(block, 0) == b""
        c.free(block)
        with pytest.raises(BlockNotFound):
            c.free(block)


def test_over_capacity_is_refused(shared_mesh):
    with shared_mesh.client() as c:
        with pytest.raises(CapacityError):
            c.allocate(2 * 1024 * MiB, node="node1")  # share is 1 GiB
        with pytest.raises(CapacityError, match="No available nodes"):
            c.allocate(2 * 1024 * MiB)
        first = c.allocate(700 * MiB, node="node3", lazy=True)
        with pytest.raises(CapacityError):
            c.allocate(400 * MiB, node="node3", lazy=True)  # 700 + 400 > 1024
        c.free(first)
        c.free(c.allocate(400 * MiB, node="node3", lazy=True))


def _raw(address: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(address)
    return sock


@pytest.mark.parametrize(
    "frames, code",
    [
        ([b"\xc1garbage"], "bad_frame"),
        ([b""], "bad_frame"),
        ([msgpack.packb([P.VERSION + 1, "ping", 5, {}])], "version_mismatch"),
        ([msgpack.packb([P.VERSION, "ping", 5, {}])[:-1]], "bad_frame"),  # truncated
        ([msgpack.packb([P.VERSION, "read", 6, {"block": "b"}])], "bad_request"),
        ([msgpack.packb([P.VERSION, "write", 7, {"block": "b", "offset": 0}])], "bad_frame"),
        ([msgpack.packb([P.VERSION, "alloc", 8, {"size": -3, "lazy": False}])], "invalid_size"),
        ([msgpack.packb([P.VERSION, "alloc", 9, {"size": 1 << 62, "lazy": True}])], "no_capacity"),
        ([msgpack.packb([P.VERSION, "read", 10, {"block": "b", "offset": 0, "length": 1 << 40}])], "too_large"),
        ([msgpack.packb([P.VERSION, "frobnicate", 11, {}])], "unknown_op"),
    ],
)
def test_garbage_on_the_data_port_gets_error_replies(shared_mesh, frames, code):
    agent = shared_mesh.node("node1")
    sock = _raw(agent.address)
    try:
        sock.send_multipart(frames)
        reply = P.parse_reply(sock.recv_multipart())
        assert not reply.ok and reply.body["code"] == code, reply.body
    finally:
        sock.close()
    with MeshClient(address=agent.address) as c:
        assert c.ping()["node"] == "node1"


def test_non_zmtp_bytes_and_oversized_frames_do_not_hurt_the_agent(shared_mesh):
    agent = shared_mesh.node("node2")
    with socket.create_connection((agent.host, agent.port), timeout=3) as s:
        s.sendall(os.urandom(4096))
        s.sendall(b"\xff" * 64 + b"\x00" * 64)
    sock = _raw(agent.address)
    try:  # a frame over the agent's maximum message size: the agent drops the connection
        sock.send_multipart([P.encode_request(P.WRITE, 1, {"block": "b", "offset": 0}),
                             b"\0" * (8 * MiB)])
        time.sleep(0.3)
    finally:
        sock.close()
    with shared_mesh.client() as c:
        block = c.allocate(10, node="node2")
        c.write(block, b"still here")
        assert c.read(block) == b"still here"
        c.free(block)


def test_client_from_one_address_learns_the_whole_mesh(shared_mesh):
    with MeshClient(address=shared_mesh.node("node3").address) as c:
        assert {n.name for n in c.nodes() if n.state == "alive"} == {"node1", "node2", "node3"}
        block = c.allocate(100, node="node1")
        c.write(block, b"a" * 100)
        c.free(block)


def held_by(pid: int) -> int:
    """What an agent holds: its resident pages, plus the pages of its blocks in memfds (the
    same-host path's; backed by fallocate, so not mapped in until touched)."""
    held = psutil.Process(pid).memory_info().rss
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                held += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
        except OSError:
            pass  # closed meanwhile
    return held


def test_freeing_gives_memory_back_to_the_os(shared_mesh):
    pid = shared_mesh.node("node2").proc.pid
    before = held_by(pid)
    with shared_mesh.client() as c:
        block = c.allocate(300 * MiB, node="node2")  # backed: pages there at allocation
        held = held_by(pid)
        c.free(block)
    after = held_by(pid)
    assert held - before > 250 * MiB
    assert held - after > 250 * MiB


def test_lazy_allocation_is_not_backed_until_written(shared_mesh):
    proc = psutil.Process(shared_mesh.node("node3").proc.pid)
    before = proc.memory_info().rss
    with shared_mesh.client() as c:
        block = c.allocate(300 * MiB, node="node3", lazy=True)
        assert proc.memory_info().rss - before < 50 * MiB
        assert c.stat(block).lazy
        c.free(block)


def test_reads_are_never_torn_by_concurrent_writes(shared_mesh):
    """A read chunk is sent zero-copy from the block; writes to that range must wait for it."""
    size = 2 * MiB  # one chunk
    with shared_mesh.client() as c:
        block = c.allocate(size, node="node1")
        c.write(block, b"A" * size)
    patterns = [b"A" * size, b"B" * size]
    stop = threading.Event()

    def writer():
        with shared_mesh.client() as w:
            i = 0
            while not stop.is_set():
                w.write(block, patterns[i % 2])
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        with shared_mesh.client() as r:
            for _ in range(150):
                data = r.read(block)
                assert data == patterns[0] or data == patterns[1], "torn read"
    finally:
        stop.set()
        t.join(timeout=30)
    with shared_mesh.client() as c:
        c.free(block)


def test_async_client_has_the_same_operations(shared_mesh):
    async def main():
        async with AsyncMeshClient(shared_mesh.config_path) as c:
            nodes = await c.nodes()
            assert {n.name for n in nodes} == {"node1", "node2", "node3"}
            block = await c.allocate(5 * MiB + 3, node="node2")
            payload = os.urandom(5 * MiB + 3)
            assert await c.write(block, payload) == len(payload)
            assert await c.read(block) == payload
            buf = bytearray(100)
            await c.read_into(block, buf, offset=17)
            assert buf == payload[17:117]
            assert (await c.stat(block)).size == len(payload)
            assert block in {b.block_id for b in await c.blocks()}
            stats = await c.stats()
            assert stats["live_nodes"] == 3
            # two tasks sharing one client are serialised, not interleaved
            await asyncio.gather(c.write(block, b"x" * 10), c.read(block, 10, offset=100))
            await c.free(block)
            with pytest.raises(BlockNotFound):
                await c.read(block, 1)

    asyncio.run(main())


def test_a_second_async_client_in_the_same_loop_is_not_slowed_by_the_first(shared_mesh):
    """Closing an AsyncMeshClient must unhook its sockets from the event loop: its socket fds
    are reused by the next client's sockets, and a stale reader on the loop swallowed their
    readiness (measured before the fix: the second client's allocate waited out the 10 s
    request timeout, 13 s for a pool initialized again after shutdown)."""
    timeout_s = 3.0  # far above a round trip on loopback, far below a timeout's worth

    async def main():
        first = AsyncMeshClient(shared_mesh.config_path, timeout_s=timeout_s)
        await first.nodes()
        block = await first.allocate(4096)
        await first.close()
        second = AsyncMeshClient(shared_mesh.config_path, timeout_s=timeout_s)
        try:
            for _ in range(3):  # each call waits on sockets whose fds the first client had
                await second.nodes()
                assert await second.read(block, 4) == bytes(4)
            await second.free(block)
        finally:
            await second.close()

    async def bounded():
        await asyncio.wait_for(main(), timeout=4 * timeout_s)

    asyncio.run(bounded())


def test_numpy_buffers_go_in_and_out_without_conversion(shared_mesh):
    np = pytest.importorskip("numpy")
    arr = np.arange(1_000_000, dtype=np.float64)
    with shared_mesh.client() as c:
        block = c.allocate(arr.nbytes)
        c.write(block, arr)
        out = np.empty_like(arr)
        c.read_into(block, out)
        assert np.array_equal(arr, out)
        with pytest.raises(InvalidRequest, match="contiguous"):
            c.write(block, arr[::2])
        c.free(block)


def test_kill_9_is_seen_dead_within_5_s_and_a_restart_is_a_new_incarnation(mesh3):
    with mesh3.client() as c:
        before = {n.name: n for n in c.nodes()}
        assert before["node2"].state == "alive"
        mesh3.kill("node2")
        t0 = time.monotonic()
        while True:
            state = {n.name: n.state for n in c.nodes()}["node2"]
            if state == "dead":
                break
            assert time.monotonic() - t0 < 5.0, f"node2 still {state} after 5 s"
            time.sleep(0.1)
        # the survivors keep serving
        block = c.allocate(10, node="node1")
        with pytest.raises(NodeUnavailable):
            c.allocate(10, node="node2")
        mesh3.start("node2")
        t0 = time.monotonic()
        while True:
            now = {n.name: n for n in c.nodes()}["node2"]
            if now.state == "alive":
                break
            assert time.monotonic() - t0 < 10.0
            time.sleep(0.1)
        assert now.incarnation > before["node2"].incarnation
        c.free(block)


def test_agent_refuses_non_loopback_bind_without_insecure(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nnodes:\n- {name: n1, host: 10.255.255.1}\n")
    r = subprocess.run([sys.executable, "-m", "agents.main", "-c", str(cfg), "--node", "n1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "refusing to bind" in r.stderr and "--insecure" in r.stderr
    assert "Traceback" not in r.stderr


def test_insecure_is_logged_at_start_and_shown_in_the_status(tmp_path):
    """--insecure without keys: a warning in the agent's log, and its heartbeat (so `grid agents
    status` and its --json) says "insecure"; a plain loopback agent says "loopback"."""
    import subprocess
    import sys

    from mesh.nodes.status import node_statuses
    from support.mesh import LocalMesh, ROOT

    mesh = LocalMesh.create(tmp_path, n=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    logs = [open(a.log, "ab") for a in mesh.nodes]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "agents.main", "-c", str(mesh.config_path), "--node", a.name]
        + (["--insecure"] if a.name == "node1" else []),
        stdout=log, stderr=log, env=env, cwd=tmp_path) for a, log in zip(mesh.nodes, logs)]
    mesh.started.extend(procs)
    try:
        for a, p in zip(mesh.nodes, procs):
            a.proc = p
            mesh.wait_ready(a)
        mesh.wait_converged()
        from mesh.config import load_cluster_config

        rows = {s.name: s.row() for s in node_statuses(load_cluster_config(mesh.config_path))}
        assert rows["node1"]["security"] == "insecure"
        assert rows["node2"]["security"] == "loopback"
        assert "INSECURE" in mesh.node("node1").log.read_text()
        assert "INSECURE" not in mesh.node("node2").log.read_text()
    finally:
        for log in logs:
            log.close()
        assert not mesh.stop_all()


def test_client_finds_the_one_live_agent_behind_three_silent_ones(tmp_path):
    from support.mesh import LocalMesh

    mesh = LocalMesh.create(tmp_path, n=4, connect_timeout_s=0.5)
    try:
        mesh.start("node4")
        with mesh.client() as c:
            states = {n.name: n.state for n in c.nodes()}
            assert states == {"node1": "down", "node2": "down", "node3": "down", "node4": "alive"}
            block = c.allocate(1000)
            assert c.stat(block).node == "node4"
            c.free(block)
    finally:
        assert not mesh.stop_all()


def test_no_agent_at_all_is_one_clear_error(tmp_path):
    from support.mesh import LocalMesh

    mesh = LocalMesh.create(tmp_path, n=2, connect_timeout_s=0.3)
    with mesh.client() as c:
        with pytest.raises(NodeUnavailable, match="no mesh agent answered"):
            c.allocate(10)
