"""Named objects (bytes, files, pickled objects, numpy arrays) against real agents."""

from __future__ import annotations

import asyncio
import io
import os
import threading

import pytest
import xxhash

from mesh.client import objects
from mesh.client import AsyncMeshClient
from mesh.errors import (
    BlockNotFound,
    IntegrityError,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    MeshError,
    OutOfRange,
)

np = pytest.importorskip("numpy")
MiB = 1024 * 1024


def test_bytes_round_trip_and_lookup_from_another_client(shared_mesh, c):
    info = c.put_bytes("greeting", b"hello mesh", node="node2")
    assert (info.key, info.node, info.length, info.content_type) == ("greeting", "node2", 10, "bytes")
    assert info.owns_block
    assert info.checksum == f"xxh3:{xxhash.xxh3_64_intdigest(b'hello mesh'):016x}"
    with shared_mesh.client() as other:
        assert other.get_bytes("greeting") == b"hello mesh"
        assert other.object_info("greeting").block_id == info.block_id
    assert [i.key for i in c.keys()] == ["greeting"]


@pytest.mark.parametrize("size", [0, 1, 5_000_003, 40 * MiB + 7])
def test_files_stream_in_and_out(c, tmp_path, size):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(size))
    seen = []
    info = c.put_file(f"file-{size}", src, progress=seen.append)
    assert info.length == size and info.meta["filename"] == "in.bin"
    assert sum(seen) == size
    dst = tmp_path / "out.bin"
    c.get_file(f"file-{size}", dst)
    assert dst.read_bytes() == src.read_bytes()
    buf = io.BytesIO()
    c.get_file(f"file-{size}", buf)
    assert buf.getvalue() == src.read_bytes()


@pytest.mark.parametrize("size", [3 * MiB + 1, 9 * MiB + 5])
def test_a_pipe_of_unknown_length_is_stored(c, monkeypatch, size):
    monkeypatch.setattr(objects, "SPOOL_IN_MEMORY_BYTES", 4 * MiB)  # small: exercise both paths
    data = os.urandom(size)
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as f:
        c.put_file("piped", f)
    t.join(timeout=30)
    assert c.get_bytes("piped") == data


def test_store_into_an_existing_block_at_an_offset(c):
    block = c.allocate(4096, node="node3")
    info = c.put_bytes("part", b"abc", block_id=block, offset=1024)
    assert (info.block_id, info.offset, info.owns_block) == (block, 1024, False)
    assert c.read(block, 3, offset=1024) == b"abc"
    with pytest.raises(OutOfRange):
        c.put_bytes("too-far", b"x" * 10, block_id=block, offset=4090)
    c.delete("part")
    assert c.stat(block).size == 4096  # the block was not the key's to free
    c.put_bytes("part2", b"zz", block_id=block)
    c.free(block)  # freeing the block forgets the keys inside it
    with pytest.raises(KeyNotFound):
        c.get_bytes("part2")


def test_keys_are_unique_unless_replaced(c):
    first = c.put_bytes("k", b"one", node="node1")
    with pytest.raises(KeyExists):
        c.put_bytes("k", b"two", node="node2")
    assert c.get_bytes("k") == b"one"
    second = c.put_bytes("k", b"two!", node="node2", replace=True)
    assert c.get_bytes("k") == b"two!"
    assert [i.key for i in c.keys()] == ["k"]
    blocks = {b.block_id for b in c.blocks()}
    assert second.block_id in blocks and first.block_id not in blocks  # old block freed
    third = c.put_bytes("k", b"three", node="node2", replace=True)  # same agent
    assert first.block_id not in {b.block_id for b in c.blocks()}
    assert second.block_id not in {b.block_id for b in c.blocks()}
    c.delete("k")
    assert third.block_id not in {b.block_id for b in c.blocks()}
    with pytest.raises(KeyNotFound, match="list-objects"):
        c.delete("k")


def test_anonymous_objects_are_named_by_their_block(c):
    info = c.put_object(None, {"a": 1})
    assert info.key == info.block_id
    assert c.get_object(info.block_id) == {"a": 1}


def test_objects_send_large_buffers_out_of_band(c):
    weights = {"w": np.random.rand(300, 1000), "names": ["a", "b"], "n": 3}
    info = c.put_object("model", weights)
    assert info.meta["buffers"] == [weights["w"].nbytes]  # the array went out of band
    assert info.meta["pickle_bytes"] < 1000
    back = c.get_object("model")
    assert np.array_equal(back["w"], weights["w"]) and back["names"] == ["a", "b"]


@pytest.mark.parametrize("dtype", ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                   "uint32", "uint64", "float16", "float32", "float64",
                                   "complex64", "complex128", "<U5", "datetime64[ns]"])
def test_arrays_of_each_dtype_round_trip(c, dtype):
    arr = (np.arange(120) % 7).astype(dtype).reshape(4, 5, 6)
    c.put_array(f"a-{dtype}", arr, replace=True)
    back = c.get_array(f"a-{dtype}")
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back, arr)


def test_array_orders_and_strides(c):
    f = np.asfortranarray(np.random.rand(50, 30))
    c.put_array("fortran", f)
    back = c.get_array("fortran")
    assert back.flags.f_contiguous and np.array_equal(back, f)
    strided = np.random.rand(100, 100)[::3, ::2]
    c.put_array("strided", strided)
    assert np.array_equal(c.get_array("strided"), strided)
    structured = np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "i4"), ("b", "f8")])
    c.put_array("structured", structured)
    assert np.array_equal(c.get_array("structured"), structured)
    c.put_array("empty", np.zeros((0, 3)))
    assert c.get_array("empty").shape == (0, 3)
    with pytest.raises(InvalidRequest, match="put_object"):
        c.put_array("objs", np.array([object()]))
    c.put_bytes("empty-bytes", b"")
    with pytest.raises(InvalidRequest, match="not a numpy array"):
        c.get_array("empty-bytes")


def test_corruption_is_detected(c):
    info = c.put_bytes("fragile", b"important data")
    c.write(info.block_id, b"X", offset=3)  # a raw write behind the key's back
    with pytest.raises(IntegrityError):
        c.get_bytes("fragile")


def test_bad_keys_and_sources(c, tmp_path):
    with pytest.raises(InvalidRequest):
        c.put_bytes("", b"x")
    with pytest.raises(InvalidRequest):
        c.put_bytes("x" * 2000, b"x")
    with pytest.raises(InvalidRequest, match="cannot read"):
        c.put_file("nofile", tmp_path / "does-not-exist")
    with pytest.raises(BlockNotFound):
        c.put_bytes("into-nothing", b"x", block_id="block_1_nowhere_zz")
    with pytest.raises(KeyNotFound):
        c.get_object("never-stored")
    assert c.keys() == []  # nothing half-made
    assert c.blocks() == []


def test_async_client_objects(shared_mesh):
    async def main():
        async with AsyncMeshClient(shared_mesh.config_path) as ac:
            arr = np.arange(1000, dtype=np.int32)
            await ac.put_array("async-arr", arr)
            assert np.array_equal(await ac.get_array("async-arr"), arr)
            await ac.put_object("async-obj", [1, 2, 3])
            assert await ac.get_object("async-obj") == [1, 2, 3]
            assert {i.key for i in await ac.keys()} == {"async-arr", "async-obj"}
            await ac.delete("async-arr")
            await ac.delete("async-obj")
            assert await ac.keys() == []

    asyncio.run(main())


def test_a_replace_put_whose_home_stops_answering_never_deletes_the_old_value(tmp_path):
    """Found by tools/chaos.py: a replace-put published on the agent that held the old record
    (the old record and its block replaced there), then its key's home stopped answering before
    the put could tell it; the put used to take its own record back and free its block, so the
    key was gone, old value and new. Now the put's failure leaves the new value in place."""
    import signal

    from mesh.client.keyclaims import home_order
    from support.mesh import running_mesh

    with running_mesh(tmp_path, n=3, connect_timeout_s=1.0) as mesh, \
            mesh.client(timeout_s=5.0) as c:
        key = "precious"
        names = [a.name for a in mesh.nodes]
        home = home_order(key, names)[0]
        holder = next(n for n in names if n != home)
        c.put_bytes(key, b"v1", node=holder)
        real_call = c._core.call
        stopped = []

        def call(address, op, *args, **kwargs):
            result = yield from real_call(address, op, *args, **kwargs)
            if op == "kput" and not stopped:  # published: now its home goes silent
                mesh.kill(home, signal.SIGSTOP)
                stopped.append(home)
            return result

        c._core.call = call
        try:
            with pytest.raises(MeshError):
                c.put_bytes(key, b"v2", node=holder, replace=True)
        finally:
            c._core.call = real_call
            for name in stopped:
                mesh.kill(name, signal.SIGCONT)
        assert stopped, "the put never published"
        assert bytes(c.get_bytes(key)) in (b"v1", b"v2")  # old code: KeyNotFound
        c.delete(key)
