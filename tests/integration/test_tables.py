"""Arrow tables as named objects (mesh/client/tables.py) against real agents."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from mesh.client import AsyncMeshClient, tables
from mesh.errors import InvalidRequest, KeyExists, KeyNotFound

pa = pytest.importorskip("pyarrow")


def sample(rows: int = 1000) -> pa.Table:
    return pa.table({
        "id": pa.array(range(rows), type=pa.int64()),
        "score": pa.array([i / 3 for i in range(rows)], type=pa.float64()),
        "name": pa.array([f"row-{i}" if i % 5 else None for i in range(rows)]),
        "tags": pa.array([[i, i + 1] for i in range(rows)], type=pa.list_(pa.int32())),
    })


def test_a_table_round_trips_with_its_schema_and_record(c):
    table = sample()
    table = table.replace_schema_metadata({"source": "test"})
    info = tables.put_table(c, "t/sample", table, node="node3")
    assert (info.key, info.node, info.content_type) == ("t/sample", "node3", "arrow")
    assert info.meta == {"format": "arrow-ipc-stream", "rows": 1000, "columns": 4}
    back = tables.get_table(c, "t/sample")
    assert back.equals(table, check_metadata=True)
    with pytest.raises(KeyExists):
        tables.put_table(c, "t/sample", table)
    tables.put_table(c, "t/sample", table.slice(10, 5), replace=True)
    assert tables.get_table(c, "t/sample").equals(table.slice(10, 5))


def test_batches_empty_tables_and_record_batches(c):
    batches = [pa.record_batch({"x": list(range(i * 10, i * 10 + 10))}) for i in range(3)]
    table = pa.Table.from_batches(batches)
    tables.put_table(c, "chunked", table)
    back = tables.get_table(c, "chunked")
    assert back.equals(table) and back.column("x").num_chunks == 3
    tables.put_table(c, "one-batch", batches[1])
    assert tables.get_table(c, "one-batch").equals(pa.Table.from_batches([batches[1]]))
    empty = pa.table({"a": pa.array([], type=pa.string())})
    tables.put_table(c, "empty", empty)
    assert tables.get_table(c, "empty").equals(empty)
    anonymous = tables.put_table(c, None, table)
    assert tables.get_table(c, anonymous.key).equals(table)


def test_get_table_is_zero_copy(c):
    table = pa.table({"a": pa.array(range(2_000_000), type=pa.int64()),
                      "b": pa.array([float(i) for i in range(2_000_000)])})
    tables.put_table(c, "zero-copy", table)
    allocated = pa.total_allocated_bytes()
    back = tables.get_table(c, "zero-copy")
    assert back.equals(table)
    assert pa.total_allocated_bytes() - allocated < 1 << 20, "the columns were copied"
    # every buffer of every column is a view of the one buffer the bytes were received in
    data = c.get_bytes("zero-copy")
    received = pa.py_buffer(data)
    again = tables.from_stream(data)
    buffers = [buf for col in again.columns for chunk in col.chunks
               for buf in chunk.buffers() if buf is not None]
    assert sum(buf.size for buf in buffers) >= table.nbytes
    assert all(received.address <= buf.address
               and buf.address + buf.size <= received.address + received.size for buf in buffers)


def test_plain_pyarrow_reads_the_stream_in_another_process(c):
    table = sample(500)
    tables.put_table(c, "portable", table)
    data = bytes(c.get_bytes("portable"))
    reader = ("import sys, pyarrow as pa, pyarrow.ipc; "
              "t = pa.ipc.open_stream(sys.stdin.buffer.read()).read_all(); "
              "assert not any(m == 'mesh' or m.startswith('mesh.') for m in sys.modules); "
              "print(t.num_rows, t.column_names, t.column('name')[1], t.column('tags')[2])")
    done = subprocess.run([sys.executable, "-I", "-c", reader], input=data, capture_output=True,
                          timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["500", "['id',", "'score',", "'name',", "'tags']",
                                            "row-1", "[2,", "3]"]


def test_the_async_client_takes_the_same_functions(shared_mesh, c):
    table = sample(100)

    async def main():
        async with AsyncMeshClient(shared_mesh.config_path) as client:
            info = await tables.put_table(client, "async", table)
            return info, await tables.get_table(client, "async")

    info, back = asyncio.run(main())
    assert info.content_type == "arrow" and back.equals(table)


def test_what_is_not_a_table_is_refused(c):
    c.put_bytes("raw", b"not arrow")
    with pytest.raises(InvalidRequest, match="holds bytes, not an Arrow table"):
        tables.get_table(c, "raw")
    with pytest.raises(KeyNotFound):
        tables.get_table(c, "absent")
    with pytest.raises(InvalidRequest, match="pyarrow.Table or RecordBatch"):
        tables.put_table(c, "dict", {"a": [1]})
    assert [i.key for i in c.keys()] == ["raw"]
    with pytest.raises(InvalidRequest, match="not an Arrow IPC stream"):
        tables.from_stream(bytearray(b"\x00" * 16))


def test_the_clients_have_put_table_and_get_table(c, shared_mesh):
    table = sample(50)
    info = c.put_table("t/method", table)
    assert info.content_type == "arrow" and c.get_table("t/method").equals(table)

    async def run():
        async with AsyncMeshClient(shared_mesh.config_path) as ac:
            await ac.put_table("t/amethod", table)
            return await ac.get_table("t/amethod")

    assert asyncio.run(run()).equals(table)
