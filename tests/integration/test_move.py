"""Moving blocks agent to agent (MOVE/PULL/COMMIT/ABORT) with real agents: ids, bytes and keys
survive a move, changes during a move wait and land, and a move that dies half-way leaves the
original intact."""

from __future__ import annotations

import os
import threading
import time

import pytest
import xxhash

from mesh import protocol as P
from mesh.client import MeshClient
from mesh.errors import InvalidRequest, MoveFailed, NodeUnavailable
from support.wire import raw_call

MiB = 1 << 20


def _pattern(n: int) -> bytes:
    return os.urandom(MiB) * (n // MiB) + os.urandom(n % MiB)


def _blocks_on(client: MeshClient, node: str) -> set[str]:
    return {b.block_id for b in client.blocks() if b.node == node}


def test_a_moved_block_keeps_its_id_and_bytes(shared_mesh):
    with shared_mesh.client() as c:
        data = _pattern(48 * MiB + 123)
        block = c.allocate(len(data), node="node1")
        c.write(block, data)
        used_before = {n["node"]: n["used"] for n in c.stats()["nodes"]}
        report = c.move(block, "node2")
        assert report["from"] == "node1" and report["to"] == "node2"
        assert report["size"] == len(data)
        assert report["checksum"] == f"xxh3:{xxhash.xxh3_64_intdigest(data):016x}"
        assert c.stat(block).node == "node2"
        assert block in _blocks_on(c, "node2") and block not in _blocks_on(c, "node1")
        used_after = {n["node"]: n["used"] for n in c.stats()["nodes"]}
        assert used_after["node1"] == used_before["node1"] - len(data)
        assert used_after["node2"] == used_before["node2"] + len(data)
        with shared_mesh.client() as fresh:  # knows nothing: finds it by the old id
            assert fresh.read(block) == data
        # and back again, through a client whose cache still points at node2
        c.move(block, "node1")
        with shared_mesh.client() as fresh:
            assert fresh.read(block) == data
        c.free(block)


def test_a_client_with_a_stale_location_follows_the_block(shared_mesh):
    with shared_mesh.client() as a, shared_mesh.client() as b:
        block = a.allocate(MiB, node="node1")
        a.write(block, b"x" * MiB)
        assert b.read(block, 4) == b"xxxx"  # b caches node1
        a.move(block, "node3")
        b.write(block, b"yy", offset=1)  # node1 says "not here"; b looks again
        assert a.read(block, 4) == b"xyyx"
        b.free(block)
        assert block not in _blocks_on(a, "node3")


def test_keys_move_with_their_block(shared_mesh):
    np = pytest.importorskip("numpy")
    with shared_mesh.client() as c:
        c.put_bytes("move/k", b"payload under a key", node="node1")
        c.put_array("move/a", np.arange(1000), node="node1")
        info = c.object_info("move/k")
        array_block = c.object_info("move/a").block_id
        c.move(info.block_id, "node2")
        c.move(array_block, "node3")
        with shared_mesh.client() as fresh:
            assert fresh.get_bytes("move/k") == b"payload under a key"
            assert (fresh.get_array("move/a") == np.arange(1000)).all()
            moved = fresh.object_info("move/k")
            assert moved.node == "node2" and moved.block_id == info.block_id
            assert moved.created == info.created and moved.checksum == info.checksum
            assert fresh.object_info("move/a").node == "node3"
        assert [k.key for k in c.keys() if k.key == "move/k"] == ["move/k"]  # once, not twice
        c.delete("move/k")
        c.delete("move/a")


def test_writes_during_a_move_wait_and_land(shared_mesh):
    with shared_mesh.client() as c:
        size = 192 * MiB
        block = c.allocate(size, node="node2")
        c.write(block, b"\0" * size)
        errors: list[BaseException] = []
        done = threading.Event()
        writes = []

        def writer():
            with shared_mesh.client() as w:
                i = 0
                while not done.is_set() and i < 500:
                    payload = i.to_bytes(4, "little")
                    try:
                        w.write(block, payload, offset=(i * 4096) % size)
                    except BaseException as exc:  # noqa: BLE001 - reported below
                        errors.append(exc)
                        return
                    writes.append(((i * 4096) % size, payload))
                    i += 1
                    time.sleep(0.002)

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.05)
        report = c.move(block, "node3")
        time.sleep(0.1)
        done.set()
        t.join(timeout=30)
        assert not errors, errors
        assert report["to"] == "node3" and len(writes) > 5
        final = c.read(block)
        for offset, payload in writes:
            assert final[offset : offset + 4] == payload
        c.free(block)


def test_move_refusals(shared_mesh):
    with shared_mesh.client() as c:
        block = c.allocate(MiB, node="node1")
        with pytest.raises(NodeUnavailable, match="unknown node 'nope'"):
            c.move(block, "nope")
        with pytest.raises(InvalidRequest, match="already on node node1"):
            c.move(block, "node1")
        node1 = shared_mesh.node("node1").address
        node2 = shared_mesh.node("node2").address
        bad = [
            (node1, P.MOVE, {"block": block, "target": "not an address", "timeout_s": 5}),
            (node1, P.MOVE, {"block": block, "target": node1, "timeout_s": 5}),
            (node1, P.MOVE, {"block": block, "target": node2, "timeout_s": -1}),
            (node1, P.MOVE, {"block": "block_9_x_y", "target": node2, "timeout_s": 5}),
            (node2, P.PULL, {"block": block, "source": node2, "size": 10, "created": 0.0,
                             "lazy": False}),
            (node2, P.PULL, {"block": "b", "source": node1, "size": 1 << 60, "created": 0.0,
                             "lazy": False}),
            (node2, P.COMMIT, {"block": block, "keys": []}),
            (node2, P.MOVE, {"block": block, "target": node1}),  # missing field
        ]
        for address, op, fields in bad:
            reply = raw_call(address, op, fields)
            assert not reply.ok, (op, fields)
        assert raw_call(node2, P.ABORT, {"block": block}).body == {"block": block,
                                                                   "dropped": False}
        assert c.read(block, 3) == b"\0\0\0" and c.stat(block).node == "node1"
        assert c.ping(node1)["node"] == "node1" and c.ping(node2)["node"] == "node2"
        c.free(block)


def test_killing_the_target_mid_move_leaves_the_original(mesh3):
    with mesh3.client() as c:
        data = _pattern(512 * MiB)
        block = c.allocate(len(data), node="node1")
        c.write(block, data)
        outcome: dict = {}

        def mover():
            with mesh3.client() as m:
                try:
                    outcome["report"] = m.move(block, "node2")
                except BaseException as exc:  # noqa: BLE001
                    outcome["error"] = exc

        t = threading.Thread(target=mover)
        t.start()
        time.sleep(0.3)
        mesh3.kill("node2")  # SIGKILL while the copy is under way
        t.join(timeout=60)
        assert not t.is_alive()
        assert isinstance(outcome.get("error"), MoveFailed), outcome
        assert "intact on node1" in str(outcome["error"])
        with mesh3.client() as fresh:
            assert fresh.stat(block).node == "node1"
            assert fresh.read(block) == data
            fresh.write(block, b"after", offset=0)  # no longer held by the move
            assert fresh.read(block, 5) == b"after"
            report = fresh.move(block, "node3")  # and it can still move elsewhere
            assert report["to"] == "node3"
            assert fresh.read(block, 5) == b"after"


def test_killing_the_source_mid_move_drops_the_partial_copy(mesh3):
    with mesh3.client() as c:
        size = 512 * MiB
        block = c.allocate(size, node="node1")
        c.write(block, b"\1" * size)
        used_before = {n["node"]: n["used"] for n in c.stats()["nodes"]}["node2"]

        def mover():
            with mesh3.client() as m:
                try:
                    m.move(block, "node2", timeout_s=3)
                except Exception:  # noqa: BLE001 - the source dies under it
                    pass

        t = threading.Thread(target=mover)
        t.start()
        time.sleep(0.3)
        mesh3.kill("node1")
        deadline = time.monotonic() + 20
        while True:  # the target gives up when node1's heartbeat goes dead
            used = {n["node"]: n["used"] for n in c.stats()["nodes"]}["node2"]
            if used == used_before:
                break
            assert time.monotonic() < deadline, f"node2 still holds {used} bytes"
            time.sleep(0.2)
        assert block not in _blocks_on(c, "node2")
        t.join(timeout=30)


def test_readers_follow_blocks_and_keys_that_keep_moving(shared_mesh):
    with shared_mesh.client() as c:
        data = _pattern(32 * MiB)
        block = c.allocate(len(data), node="node1")
        c.write(block, data)
        small = data[: 256 * 1024]
        c.put_bytes("move/busy", small, node="node2")
        key_block = c.object_info("move/busy").block_id
        errors: list[BaseException] = []
        reads = {"block": 0, "key": 0}
        done = threading.Event()

        def reader(what: str):
            with shared_mesh.client() as r:
                while not done.is_set():
                    try:
                        if what == "block":
                            assert r.read(block) == data
                        else:
                            assert r.get_bytes("move/busy") == small
                    except BaseException as exc:  # noqa: BLE001 - reported below
                        errors.append(exc)
                        return
                    reads[what] += 1

        threads = [threading.Thread(target=reader, args=(w,)) for w in reads]
        for t in threads:
            t.start()
        try:
            nodes = ["node1", "node2", "node3"]
            for i in range(60):  # around the ring: the key's block every time, the big one less
                for b in ((block, key_block) if i % 10 == 0 else (key_block,)):
                    here = c.stat(b).node
                    c.move(b, nodes[(nodes.index(here) + 1) % 3])
        finally:
            done.set()
            for t in threads:
                t.join(timeout=60)
        assert not errors, errors
        assert reads["block"] >= 3 and reads["key"] >= 30, reads
        c.delete("move/busy")
        c.free(block)
