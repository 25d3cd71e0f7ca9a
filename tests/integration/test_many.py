"""Many small operations per message (MANY and RANGES: ``agents/many.py``,
``mesh/client/many.py``) against real agents: values, an error per item, a hostile batch,
replicated blocks, both clients, roles on a keyed mesh (sealed sessions), and the metrics (each
sub-op counted as its op)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import msgpack
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from mesh import batchwire as B
from mesh import protocol as P
from mesh.client import AsyncMeshClient, MeshClient
from mesh.errors import (
    BlockNotFound, Forbidden, InvalidSize, KeyExists, KeyNotFound, OutOfRange,
)
from support.mesh import clean_client, running_mesh
from support.wire import raw_call


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("many"), n=2, replica_spread="node") as m:
        yield m


@pytest.fixture
def client(mesh):
    with clean_client(mesh) as c:
        yield c


def _data(i: int, n: int = 4096) -> bytes:
    return bytes([i % 251]) * n


def test_write_many_then_read_many_over_two_agents(client):
    blocks = [client.allocate(64 * 1024, node=node) for node in ("node1", "node2")]
    items = [(blocks[i % 2], _data(i), (i // 2) * 4096) for i in range(32)]
    assert client.write_many(items) == [4096] * 32
    got = client.read_many([(b, 4096, off) for b, _, off in items])
    assert [bytes(g) for g in got] == [d for _, d, _ in items]
    assert bytes(client.read(blocks[1], 4096, 4096)) == _data(3)  # the single op agrees
    # more items than one message takes (256 sub-ops): several messages, in order
    many = [(blocks[0], bytes([i % 256]) * 16, i * 16) for i in range(600)]
    client.write_many(many)
    assert [bytes(g) for g in client.read_many([(blocks[0], 16, i * 16) for i in range(600)])] \
        == [d for _, d, _ in many]


def test_each_item_fails_alone(client):
    block = client.allocate(8192)
    out = client.write_many([(block, b"a" * 10), (block, b"b" * 10, 8190), ("block_0_x_y", b"c"),
                             (block, b"d" * 5, 100)], return_exceptions=True)
    assert out[0] == 10 and out[3] == 5
    assert isinstance(out[1], OutOfRange) and isinstance(out[2], BlockNotFound)
    got = client.read_many([(block, 10), (block, -1), (block, 5, 8190), (block, 5, 100)],
                           return_exceptions=True)
    assert bytes(got[0]) == b"a" * 10 and bytes(got[3]) == b"d" * 5
    assert isinstance(got[1], InvalidSize) and isinstance(got[2], OutOfRange)
    with pytest.raises(OutOfRange):  # without return_exceptions: the first error, after all ran
        client.write_many([(block, b"z", 9000), (block, b"e" * 3, 200)])
    assert bytes(client.read(block, 3, 200)) == b"eee"


def test_items_of_blocks_freed_or_moved_since_they_were_found_fail_or_follow_alone(mesh,
                                                                                  client):
    """Every item plain (the lean path: ``mesh/client/ranges.py``), but another client freed one
    block and moved another after this one found them: the freed block's items fail alone,
    the moved block's follow it, the rest are done in the same messages."""
    gone, moved, kept = (client.allocate(64 * 1024, node="node1") for _ in range(3))
    items = [(b, _data(i), i * 4096) for i in range(12) for b in (gone, moved, kept)]
    assert client.write_many(items) == [4096] * 36  # (every block found, and cached)
    with mesh.client() as other:
        other.free(gone)
        other.move(moved, "node2")
    again = [(b, _data(i + 100), off) for i, (b, _, off) in enumerate(items)]
    out = client.write_many(again, return_exceptions=True)
    assert [type(x).__name__ for x, (b, _, _) in zip(out, again) if b == gone] == \
        ["BlockNotFound"] * 12
    assert [x for x, (b, _, _) in zip(out, again) if b != gone] == [4096] * 24
    got = client.read_many([(b, 4096, off) for b, _, off in again], return_exceptions=True)
    for (b, data, _), value in zip(again, got):
        if b == gone:
            assert isinstance(value, BlockNotFound)
        else:
            assert type(value) is bytearray and bytes(value) == data
    assert client.stat(moved).node == "node2"


def test_the_agent_answers_each_sub_op_and_refuses_a_hostile_batch_whole(mesh, client):
    block = client.allocate(4096, node="node1")
    address = mesh.node("node1").address
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(address)
    try:
        ops = [[P.WRITE, {"block": block, "offset": 0, "length": 4}],
               [P.READ, {"block": block, "offset": 0, "length": 4}],
               [P.READ, {"block": block, "offset": 4094, "length": 4}],
               [P.MANY, {"ops": []}],
               [P.STAT, {"block": "nope"}],
               [P.READ, {"block": block, "offset": 1, "length": 2}]]
        sock.send_multipart([msgpack.packb([P.VERSION, P.MANY, 11, {"ops": ops}]), b"wxyz"])
        reply = P.parse_reply(sock.recv_multipart())
        assert reply.ok and reply.request_id == 11
        codes = [r[1].get("code") if r[0] == P.ERROR else "ok" for r in reply.body["results"]]
        assert codes == ["ok", "ok", "out_of_range", "bad_request", "unknown_block", "ok"]
        assert bytes(reply.payload[0]) == b"wxyz" + b"xy"
        for frames in (  # refused whole, nothing applied; the agent goes on serving
            [msgpack.packb([P.VERSION, P.MANY, 12, {"ops": [[P.WRITE, {
                "block": block, "offset": 0, "length": 9}]]}]), b"short"],
            [msgpack.packb([P.VERSION, P.MANY, 12, {"ops": "all of them"}]), b""],
            [msgpack.packb([P.VERSION, P.MANY, 12, {"ops": [["x"]] * 5000}]), b""],
            [msgpack.packb([P.VERSION, P.MANY, 12, {"ops": [[P.READ, {"block": block}]]}])],
        ):
            sock.send_multipart(frames)
            refused = P.parse_reply(sock.recv_multipart())
            assert not refused.ok and refused.body["code"] in ("bad_request", "bad_frame")
    finally:
        sock.close()
    assert raw_call(address, P.PING, {}).ok
    assert bytes(client.read(block, 4)) == b"wxyz"


def test_a_sub_op_finds_the_block_as_the_sub_ops_before_it_left_it(mesh, client):
    """Reads and writes of a batch are done without their handler's round (``agents/many.py``:
    ``_lean``, the block looked up once for a run of them); a FREE between them is seen by the
    next ones, which find no block."""
    block = client.allocate(4096, node="node1")
    ops = [[P.WRITE, {"block": block, "offset": 0, "length": 4}],
           [P.READ, {"block": block, "offset": 0, "length": 4}],
           [P.FREE, {"block": block}],
           [P.READ, {"block": block, "offset": 0, "length": 4}],
           [P.WRITE, {"block": block, "offset": 4, "length": 2}]]
    reply = _raw_many(mesh.node("node1").address, ops, b"abcdef")
    codes = [r[1].get("code") if r[0] == P.ERROR else "ok" for r in reply.body["results"]]
    assert codes == ["ok", "ok", "ok", "unknown_block", "unknown_block"]
    assert bytes(reply.payload[0]) == b"abcd"


def _codes(reply: P.Reply) -> list[str]:
    return [r[1].get("code") if r[0] == P.ERROR else "ok" for r in reply.body["results"]]


def test_ranges_are_done_in_one_loop_until_one_is_not_the_common_case(mesh, client):
    """RANGES (``mesh/batchwire.py``): ranges that all go as asked are answered {done: n}; from
    the first that does not (past its block's end, a block gone), each range is answered as
    a MANY sub-op: that one refused alone, those after it done."""
    a, b = (client.allocate(4096, node="node1") for _ in range(2))
    address = mesh.node("node1").address

    def ranges(op: str, blocks: list, flat: list[int], payload: bytes = b"", **more) -> P.Reply:
        return raw_call(address, P.RANGES, {"op": op, "blocks": blocks,
                                            "at": B.pack_ranges(flat), **more},
                        payload=payload)

    done = ranges(P.WRITE, [a, b], [0, 0, 4, 1, 8, 3], b"abcdXYZ")
    assert done.ok and done.body == {"done": 2}
    reply = ranges(P.WRITE, [a, b, "nope"], [0, 4, 2, 0, 4094, 4, 1, 0, 2, 2, 0, 1, 0, 6, 1],
                   b"ef" + b"zzzz" + b"pq" + b"?" + b"g")
    assert reply.ok and _codes(reply) == ["ok", "out_of_range", "ok", "unknown_block", "ok"]
    assert bytes(client.read(a, 4096)[:8]) == b"abcdefg\0"
    assert bytes(client.read(b, 11)) == b"pq" + b"\0" * 6 + b"XYZ"
    reads = ranges(P.READ, [b, a], [1, 0, 7, 0, 8, 3])
    assert reads.ok and reads.body == {"done": 2} and bytes(reads.payload[0]) == b"abcdefgXYZ"
    reply = ranges(P.READ, [a, b], [0, 2, 3, 1, 4095, 2, 1, 0, 2, 0, 0, 1])
    assert reply.ok and _codes(reply) == ["ok", "out_of_range", "ok", "ok"]
    assert bytes(reply.payload[0]) == b"cde" + b"pq" + b"a"  # the reads done, in order
    late = ranges(P.WRITE, [a], [0, 0, 2], b"!!", deadline=1.0)
    assert not late.ok and late.body["code"] == "deadline_exceeded"
    for op, blocks, at, payload, code in (  # refused whole, nothing applied
            (P.WRITE, [a], B.pack_ranges([0, 0, 9]), b"!!", "bad_frame"),
            (P.WRITE, [a], b"\0" * 15, b"", "bad_request"),
            (P.WRITE, [a], B.pack_ranges([3, 0, 2]), b"!!", "bad_request"),
            (P.FREE, [a], B.pack_ranges([0, 0, 0]), b"", "bad_request"),
            (P.READ, [a], B.pack_ranges([0, 0, 1] * 300), b"", "bad_request")):
        refused = raw_call(address, P.RANGES, {"op": op, "blocks": blocks, "at": at},
                           payload=payload)
        assert not refused.ok and refused.body["code"] == code
    assert bytes(client.read(a, 4)) == b"abcd" and raw_call(address, P.PING, {}).ok


def test_a_batch_past_its_deadline_applies_nothing(mesh, client):
    block = client.allocate(4096, node="node1")
    reply = _raw_many(mesh.node("node1").address, [[P.WRITE, {"block": block, "offset": 0,
                                                              "length": 2}]], b"zz",
                      deadline=1.0)
    assert not reply.ok and reply.body["code"] == "deadline_exceeded"
    assert bytes(client.read(block, 2)) == b"\0\0"


def _raw_many(address: str, ops: list, payload: bytes, **fields) -> P.Reply:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(address)
    try:
        sock.send_multipart([msgpack.packb([P.VERSION, P.MANY, 3, {"ops": ops, **fields}]),
                             payload])
        return P.parse_reply(sock.recv_multipart())
    finally:
        sock.close()


def test_a_replicated_block_gets_every_write_of_a_batch_on_each_copy(mesh, client):
    block = client.allocate(64 * 1024, replicas=2, spread="node")
    assert sorted(client.stat(block).nodes) == ["node1", "node2"]
    items = [(block, _data(i, 1024), i * 1024) for i in range(20)]
    assert client.write_many(items) == [1024] * 20
    primary = client.stat(block).nodes[0]
    backup = mesh.node("node2" if primary == "node1" else "node1").address
    # the backup's copy, read straight from it (a copy that serves; one that has not heard
    # from its primary lately on a loaded machine says "not_current: retry in a moment")
    reads = [[P.READ, {"block": block, "offset": i * 1024, "length": 1024}] for i in range(20)]
    deadline = time.monotonic() + 10
    while True:
        reply = _raw_many(backup, reads, b"")
        codes = {r[1].get("code") for r in reply.body.get("results", []) if r[0] != P.OK}
        if not (reply.ok and codes == {"not_current"}) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert reply.ok and all(r[0] == P.OK for r in reply.body["results"])
    assert bytes(reply.payload[0]) == b"".join(d for _, d, _ in items)


def test_put_many_and_get_many(client):
    values = {f"many/{i}": _data(i, 100 + i) for i in range(40)}
    infos = client.put_many(values)
    assert [i.key for i in infos] == list(values) and all(i.owns_block for i in infos)
    assert [bytes(v) for v in client.get_many(list(values))] == list(values.values())
    assert client.get_bytes("many/7") == values["many/7"]  # the single op reads them too
    got = client.get_many(["many/1", "many/none", 3], return_exceptions=True)
    assert bytes(got[0]) == values["many/1"]
    assert isinstance(got[1], KeyNotFound) and got[2].code == "bad_request"
    out = client.put_many([("many/1", b"new"), ("many/new", b"fresh"), ("many/empty", b""),
                           ("many/big", b"B" * (1 << 20))], return_exceptions=True)
    assert isinstance(out[0], KeyExists) and out[1].key == "many/new"
    assert out[2].length == 0 and out[3].length == 1 << 20
    assert client.get_bytes("many/1") == values["many/1"]  # refused: unchanged
    client.put_many({"many/1": b"replaced"}, replace=True)
    assert client.get_many(["many/1", "many/empty", "many/big"]) == [
        b"replaced", b"", b"B" * (1 << 20)]
    with pytest.raises(KeyExists):
        client.put_many({"many/2": b"again"})


def test_the_async_client_has_the_same_batches(mesh):
    async def main():
        async with AsyncMeshClient(mesh.config_path) as c:
            block = await c.allocate(16 * 1024)
            assert await c.write_many([(block, _data(i, 512), i * 512) for i in range(8)]) \
                == [512] * 8
            got = await c.read_many([(block, 512, i * 512) for i in range(8)])
            assert [bytes(g) for g in got] == [_data(i, 512) for i in range(8)]
            await c.put_many({"async/a": b"A", "async/b": b"BB"})
            assert await c.get_many(["async/b", "async/a"]) == [b"BB", b"A"]
            for key in ("async/a", "async/b"):
                await c.delete(key)
            await c.free(block)

    asyncio.run(main())


def test_roles_hold_for_each_sub_op_on_a_keyed_mesh(tmp_path, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    with running_mesh(tmp_path, n=1, keyed=True,
                      client_keys={"w": "writer", "r": "reader"}) as mesh:
        with MeshClient(mesh.config_path, key=mesh.keys["w"]) as writer:
            block = writer.allocate(8192)
            assert writer.write_many([(block, b"ab"), (block, b"cd", 4096)]) == [2, 2]
            writer.put_many({"sealed/k": b"value"})
        with MeshClient(mesh.config_path, key=mesh.keys["r"]) as reader:
            assert [bytes(x) for x in reader.read_many([(block, 2), (block, 2, 4096)])] == [
                b"ab", b"cd"]
            assert reader.get_many(["sealed/k"]) == [b"value"]
            out = reader.write_many([(block, b"no")], return_exceptions=True)
            assert isinstance(out[0], Forbidden)
            with pytest.raises(Forbidden):
                reader.put_many({"sealed/r": b"no"})
            assert bytes(reader.read(block, 2)) == b"ab"


def test_the_metrics_count_each_sub_op_as_its_op(mesh, client):
    node = mesh.node("node1")
    url = f"http://{node.host}:{node.port + 2}/metrics"

    def scrape() -> dict:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    block = client.allocate(64 * 1024, node="node1")
    before = scrape()
    client.write_many([(block, b"w" * 100, i * 100) for i in range(10)])
    client.read_many([(block, 100, i * 100) for i in range(7)])
    _raw_many(node.address, [[P.STAT, {"block": "nope"}], [P.STAT, {"block": block}],
                             [P.READ, {"block": block, "offset": 64 * 1024, "length": 8}]], b"")
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("mesh_requests_total", op="write", outcome="ok") == 10
    assert grew("mesh_requests_total", op="read", outcome="ok") == 7
    assert grew("mesh_requests_total", op="stat", outcome="ok") == 1
    assert grew("mesh_requests_total", op="stat", outcome="unknown_block") == 1
    assert grew("mesh_requests_received_total", op="write") == 10
    assert grew("mesh_requests_total", op="ranges", outcome="ok") == 2  # one message each
    assert grew("mesh_requests_total", op="many", outcome="ok") == 1
    # a sub-op refused (past the block's end) is counted once, arriving and answered
    assert grew("mesh_requests_total", op="read", outcome="out_of_range") == 1
    assert grew("mesh_requests_received_total", op="read") == 8
