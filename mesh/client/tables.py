"""Arrow tables as named objects: ``put_table(client, key, table)`` / ``get_table(client, key)``.

A table is stored as one Arrow IPC *stream* (the schema message, then one message per record
batch, then the end-of-stream marker): the format every Arrow implementation reads, so another
process reads the object's bytes with ``pyarrow.ipc.open_stream(data).read_all()`` (or Arrow in
another language) without this code. The key record says what it is: content type ``"arrow"``
and ``meta = {"format": "arrow-ipc-stream", "rows": N, "columns": M}``.

Copies. ``put_table`` writes the stream into one Arrow buffer (one copy of the table) and sends
that buffer's memory as it is. ``get_table`` receives the object into one ``bytearray`` and
opens the stream over it (``pa.py_buffer``): the table's columns are views of that buffer, not
copies (the IPC body's buffers are 8-byte aligned in the stream, and a bytearray's memory is
at least that aligned), and the buffer lives as long as the table does. Buffer compression of
the IPC format is not used: it would make every read a copy.

Both work on a ``MeshClient`` or an ``AsyncMeshClient`` (then they return an awaitable): each
runs one operation generator (``put_table_op`` / ``get_table_op``, built on
``mesh/client/objects.py``) through the client. pyarrow is the ``arrow`` extra, imported on
first use (``MissingExtra`` without it).

Not here: the put and read pipelines (``mesh/client/objects.py``), files of Parquet and other
formats through ``mesh://`` (``mesh/fs.py``).
"""

from __future__ import annotations

from typing import Any

import mesh.client.objects as objects
from mesh.client.batch import Op
from mesh.errors import InvalidRequest, require

CONTENT_TYPE = "arrow"
FORMAT = "arrow-ipc-stream"


def _pyarrow() -> Any:
    require("pyarrow", "arrow", "Arrow tables")
    import pyarrow
    import pyarrow.ipc  # noqa: F401  (a submodule pyarrow does not import itself)

    return pyarrow


def to_stream(table: Any) -> Any:
    """The IPC stream of a ``pyarrow.Table`` or ``RecordBatch``, as one ``pyarrow.Buffer``."""
    pa = _pyarrow()
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise InvalidRequest(f"put_table stores a pyarrow.Table or RecordBatch, not "
                             f"{type(table).__name__} (pyarrow.Table.from_pandas converts a "
                             "DataFrame)")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def from_stream(data: Any) -> Any:
    """The table of an IPC stream held in ``data`` (a bytes-like), its columns views of it."""
    pa = _pyarrow()
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidRequest(f"not an Arrow IPC stream: {exc}") from None


def put_table_op(core: Any, key: str | None, table: Any, node: str | None = None,
                 replace: bool = False, replicas: int | None = None) -> Op:
    stream = to_stream(table)
    meta = {"format": FORMAT, "rows": table.num_rows, "columns": table.num_columns}
    return (yield from objects.put_bytes(core, key, memoryview(stream), node, None, 0, replace,
                                         content_type=CONTENT_TYPE, meta=meta,
                                         replicas=replicas))


def get_table_op(core: Any, key: str) -> Op:
    info = yield from objects.object_info(core, key)
    if info.content_type != CONTENT_TYPE:
        raise InvalidRequest(f"key {key!r} holds {info.content_type}, not an Arrow table")
    _pyarrow()  # before the bytes come
    data = yield from objects.get_bytes(core, key)
    return from_stream(data)


def put_table(client: Any, key: str | None, table: Any, node: str | None = None, *,
              replace: bool = False, replicas: int | None = None) -> Any:
    """Store a ``pyarrow.Table`` (or ``RecordBatch``) under ``key`` as an Arrow IPC stream;
    returns the ``ObjectInfo`` (an awaitable of it from an ``AsyncMeshClient``)."""
    return client._run(lambda core: put_table_op(core, key, table, node, replace, replicas))


def get_table(client: Any, key: str) -> Any:
    """The ``pyarrow.Table`` stored under ``key`` (an awaitable of it from an
    ``AsyncMeshClient``), its columns views of the bytes received."""
    return client._run(lambda core: get_table_op(core, key))
