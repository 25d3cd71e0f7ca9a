"""Checksums with real agents (``mesh/checksum.py``): objects stored now carry xxh3; a key record
written before, with a crc32 checksum, still reads back (whole, streamed to a file, as an array),
and a wrong checksum of either kind, or one naming an unknown algorithm, is an ``IntegrityError``.
A move from an agent of the previous version (a PULL without ``checksum_algorithm``) is answered
with crc32, the algorithm that source checks. ``tools/bench.py checksum`` runs.

Old records are made as an old client made them: the bytes written to a block, then a KPUT of a
record with ``crc32:`` through the client's core (what any client can send)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import xxhash

from mesh import protocol as P
from mesh.client import MeshClient
from mesh.errors import IntegrityError
from support.mesh import ROOT
from support.wire import raw_call

MiB = 1 << 20


def _crc32(data: bytes) -> str:
    return f"crc32:{zlib.crc32(data):08x}"


def _xxh3(data: bytes) -> str:
    return f"xxh3:{xxhash.xxh3_64_intdigest(data):016x}"


def _put_record(c: MeshClient, key: str, data: bytes, checksum: str,
                content_type: str = "bytes", meta: dict | None = None, node: str = "node1"):
    """The bytes in a block of their own on ``node``, and a record naming them with
    ``checksum``, sent as it is."""
    block = c.allocate(len(data), node=node)
    c.write(block, data)
    address = next(n.address for n in c.nodes() if n.name == node)
    return c._run(c._core.call(address, P.KPUT, {
        "key": key, "replace": False,
        "record": {"block": block, "offset": 0, "length": len(data), "content_type": content_type,
                   "checksum": checksum, "owns_block": True, "meta": meta or {}}}))


def test_new_objects_carry_xxh3(c, tmp_path):
    data = os.urandom(5 * MiB + 17)  # several chunks
    assert c.put_bytes("new", data).checksum == _xxh3(data)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert c.put_file("new-file", src).checksum == _xxh3(data)
    assert c.get_bytes("new") == data


def test_an_object_with_an_old_crc32_record_reads_back(c, tmp_path):
    data = os.urandom(5 * MiB + 17)
    _put_record(c, "old", data, _crc32(data), content_type="file")
    assert c.object_info("old").checksum == _crc32(data)
    assert c.get_bytes("old") == data
    out = tmp_path / "out.bin"
    c.get_file("old", out)  # streamed: the running checksum is crc32, as the record says
    assert out.read_bytes() == data

    arr = np.arange(300_000, dtype="<f4")
    raw = arr.tobytes()
    _put_record(c, "old-array", raw, _crc32(raw), content_type="ndarray",
                meta={"dtype": "<f4", "shape": [300_000], "order": "C"}, node="node2")
    assert np.array_equal(c.get_array("old-array"), arr)


def test_a_wrong_crc32_checksum_is_an_integrity_error(c, tmp_path):
    data = os.urandom(3 * MiB + 5)
    _put_record(c, "bad-old", data, _crc32(data[:-1] + bytes([data[-1] ^ 1])))
    with pytest.raises(IntegrityError, match="read back with checksum crc32:"):
        c.get_bytes("bad-old")
    with pytest.raises(IntegrityError):
        c.get_file("bad-old", tmp_path / "out.bin")


def test_bytes_changed_under_an_xxh3_record_are_an_integrity_error(c, tmp_path):
    data = os.urandom(3 * MiB + 5)
    info = c.put_bytes("changed", data, node="node3")
    c.write(info.block_id, b"\xff\x00", offset=2 * MiB + 1)  # under the record, not through it
    with pytest.raises(IntegrityError, match=f"stored {info.checksum}"):
        c.get_bytes("changed")
    with pytest.raises(IntegrityError):
        c.get_file("changed", tmp_path / "out.bin")


def test_a_record_naming_an_unknown_algorithm_is_refused_before_reading(c, tmp_path):
    data = os.urandom(1000)
    _put_record(c, "future", data, "blake3:" + "0" * 64)
    with pytest.raises(IntegrityError, match="'blake3:0+' names no algorithm"):
        c.get_bytes("future")
    out = tmp_path / "never.bin"
    with pytest.raises(IntegrityError, match="names no algorithm"):
        c.get_file("future", out)
    assert not out.exists()


@pytest.mark.parametrize("algorithm", [None, "crc32", "xxh3"])
def test_a_pull_is_checksummed_with_the_algorithm_its_source_asks_for(c, algorithm):
    """None: a source of the previous version, which sends no ``checksum_algorithm`` and
    compares crc32. The copy is dropped again with ABORT, as a source does after a mismatch."""
    data = os.urandom(3 * MiB + 11)
    block = c.allocate(len(data), node="node1")
    c.write(block, data)
    node1, node2 = (next(n.address for n in c.nodes() if n.name == name)
                    for name in ("node1", "node2"))
    fields = {"block": block, "source": node1, "size": len(data), "created": 0.0, "lazy": False}
    if algorithm is not None:
        fields["checksum_algorithm"] = algorithm
    reply = raw_call(node2, P.PULL, fields)
    try:
        assert reply.ok, reply.body
        want = _xxh3(data) if algorithm == "xxh3" else _crc32(data)
        assert reply.body["checksum"] == want
    finally:
        assert raw_call(node2, P.ABORT, {"block": block}).ok
    assert c.stat(block).node == "node1" and c.read(block) == data


def test_a_pull_asking_for_an_unknown_algorithm_is_refused(c):
    block = c.allocate(1000, node="node1")
    node1, node2 = (next(n.address for n in c.nodes() if n.name == name)
                    for name in ("node1", "node2"))
    reply = raw_call(node2, P.PULL, {"block": block, "source": node1, "size": 1000,
                                      "created": 0.0, "lazy": False,
                                      "checksum_algorithm": "md5"})
    assert not reply.ok and "unknown checksum algorithm 'md5'" in reply.body["message"]
    assert block not in {b.block_id for b in c.blocks() if b.node == "node2"}


def test_the_checksum_benchmark_runs_and_its_running_checksum_matches():
    """``tools/bench.py checksum`` (the figures the docs quote are measured, never asserted)."""
    done = subprocess.run([sys.executable, "tools/bench.py", "checksum", "--size", "8MiB",
                           "--runs", "1", "--chunk", "1MiB", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["bench"] == "checksum" and out["size_bytes"] == 8 * MiB
    assert out["running_matches"] is True
    assert out["crc32_gbps"] > 0 and out["xxh3_gbps"] > 0 and out["ratio"] > 0
