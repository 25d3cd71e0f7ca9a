"""Named objects: bytes, files, pickled Python objects and numpy arrays stored under keys.

A key record (``mesh/protocol.py``, KPUT/KGET/KDEL/KLIST) lives on the agent that holds the
object's block and names a range of it plus metadata. Lookups ask every live agent for the key
(metadata only, no block data is scanned); the newest record wins if two agents answer.

Every function here is an operation generator run by a client (``mesh/client/drivers.py``), like the
block operations of ``mesh/client/core.py``, which it builds on. The contract is in
``docs/objects-api.md``.

Memory: files stream through a small ring of chunk buffers (a few windows' worth), whatever their
size; arrays and pickle protocol 5 buffers are sent from their own memory and received straight
into the memory they end up in. Integrity: a checksum of the stored bytes (``mesh/checksum.py``:
xxh3 now, crc32 in records written before) is kept in the record and checked on every full read,
with the algorithm the record names.

Moves: every read here follows a block that moves meanwhile (``follow`` in
``mesh/client/transfer.py``). Reads into memory start again; file streams resume at the first
byte not yet written out. A key that names another object when it is looked up again is an
``ObjectChanged`` (an ``IntegrityError``), never a mix of two objects. Chunking, the ring of buffers and the follow
policy live in ``mesh/client/transfer.py``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import stat as stat_mod
import tempfile
import time
from typing import Any, BinaryIO, Callable

from mesh import checksum as C
from mesh import protocol as P
import mesh.client.keyclaims as keyclaims
import mesh.client.stripes as stripes
from mesh.client.batch import Batch, Op, byte_view
from mesh.client.cacheopts import (NONE, PutOptions, Unpacking, compression_of, pack, pack_stream,
                                   unpack_into)
from mesh.client.core import Core, Listing
from mesh.client.keylookup import ObjectInfo, _check_key, holders, lookup
from mesh.client.transfer import (
    Progress,
    StreamRead,
    chunk_calls,
    follow,
    stream_write,
)
from mesh.errors import (
    BlockMoving,
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    MeshError,
    NodeUnavailable,
    ObjectChanged,
    OutOfRange,
    UnsafeObject,
)

# Input of unknown size (a pipe) is held in memory up to this, then spooled to a temp file.
SPOOL_IN_MEMORY_BYTES = 64 * 1024 * 1024


def _verify(info: ObjectInfo, actual: str) -> None:
    C.check(info.checksum, actual, f"object {info.key!r} on {info.node}")


def object_info(core: Core, key: str) -> Op:
    _, info = yield from lookup(core, key)
    return stripes.whole(info)


def keys(core: Core, page: int | None = None) -> Op:
    """Every key (the newest record of each), as a ``Listing`` with ``failed_nodes``."""
    found, failed = yield from core.listing(P.KLIST, "keys", page)
    newest: dict[str, ObjectInfo] = {}
    for _, rec in found:
        info = stripes.whole(ObjectInfo.from_record(rec))
        if stripes.is_part(info):  # a stripe of another object (mesh/client/stripes.py)
            continue
        if info.key not in newest or info.created > newest[info.key].created:
            newest[info.key] = info
    return Listing(sorted(newest.values(), key=lambda i: i.key), failed)


def delete(core: Core, key: str) -> Op:
    found = yield from holders(core, key)
    if not found:
        raise KeyNotFound(
            f"Key not found: {key!r} (list stored objects with `grid memory list-objects`)"
        )
    for address, info in found:
        yield from core.call(address, P.KDEL, {"key": key})
        if info.block_id and info.owns_block:
            core.forget_location(info.block_id)
    yield from stripes.drop_parts(core, [info for _, info in found])
    yield from keyclaims.forget(core, key)
    core.invalidate_nodes()


# --- the put pipeline ---------------------------------------------------------------------------


Writer = Callable[[str, str, int], Op]  # (address, block_id, offset) -> checksum


def _put(core: Core, key: str | None, length: int, node: str | None, block_id: str | None,
         offset: int, replace: bool, content_type: str, meta: dict, writer: Writer,
         replicas: int | None = None, opts: PutOptions = NONE) -> Op:
    """Claim the key at its home, check it, find or make the block, write, publish the key
    record, then settle the claim (``mesh/client/keyclaims.py``). Anonymous objects are named
    by their block id, which no other put can take: they need no claim."""
    _check_key(key)
    opts.check(block_id, length)
    claim = (yield from keyclaims.claim(core, key, replace, length)) if key is not None else None
    try:
        return (yield from _put_claimed(core, claim, key, length, node, block_id, offset, replace,
                                        content_type, meta, writer, replicas, opts))
    except Exception:
        if claim is not None:
            yield from keyclaims.release(core, claim)
        raise


def _put_claimed(core: Core, claim: keyclaims.Claim | None, key: str | None, length: int,
                 node: str | None, block_id: str | None, offset: int, replace: bool,
                 content_type: str, meta: dict, writer: Writer, replicas: int | None,
                 opts: PutOptions) -> Op:
    existing = (yield from holders(core, key)) if key is not None else []
    if existing and not replace:
        raise KeyExists(
            f"key {key!r} already exists on {existing[0][1].node}; delete it first or replace it"
        )
    owns = block_id is None
    if block_id is not None:
        address, size = yield from core.locate(block_id)
        if offset < 0 or offset + length > size:
            raise OutOfRange(
                f"{length} bytes at offset {offset} do not fit in block {block_id} ({size} bytes)"
            )
    elif length > 0:  # pending: freed by its agent if this client dies before publishing
        block_id = yield from core.allocate(length, node, pending=True, replicas=replicas,
                                            ttl_s=opts.ttl_s)
        address, _ = yield from core.locate(block_id)
        offset = 0
    else:  # a 0-byte object needs no block, only a node to keep its record
        address = yield from _record_node(core, node)
        block_id, offset = "", 0
    published = False  # once the record is out, its block is the key's value: never freed here
    try:
        checksum = yield from writer(address, block_id, offset)
        record = {"block": block_id, "offset": offset, "length": length,
                  "content_type": content_type, "checksum": checksum,
                  "owns_block": owns and bool(block_id), "meta": meta, **opts.record()}
        name = key if key is not None else (block_id or f"empty_{time.time_ns()}")
        try:
            rec = yield from core.call(address, P.KPUT,
                                       {"key": name, "record": record, "replace": replace})
        except (NodeUnavailable, BlockMoving):
            # No answer (a timeout, a lost link, a primary waiting on a paused copy): the record
            # may be out, and the block the key's value. Never freed here; if it was not
            # published its agent reclaims it when its lease runs out.
            published = True
            raise
        published = True
        if claim is not None:
            try:
                yield from keyclaims.settle(core, claim, rec["node"], replace)
            except KeyExists:
                # The claim was lost to another put. A new key is that put's: take ours back
                # (nothing older is lost). A replace stays: taking it back would delete the
                # value it replaced, and the other put replaces it in turn.
                if not replace:
                    try:
                        yield from core.call(address, P.KDEL, {"key": name})
                    except MeshError:
                        pass
                raise
            # Any other failure (the home does not answer) leaves the put published where it
            # is: the caller sees the error, and the key holds the new value.
    except Exception:
        if owns and block_id and not published:
            try:
                yield from core.free(block_id)
            except MeshError:
                pass
        raise
    info = ObjectInfo.from_record(rec)
    for old_address, old in existing:  # the record replaced elsewhere, and its block
        if old_address != address:
            try:
                yield from core.call(old_address, P.KDEL, {"key": info.key})
            except MeshError:
                pass
    yield from stripes.drop_parts(core, [old for _, old in existing], info)
    core.invalidate_nodes()
    return info


def _record_node(core: Core, node: str | None) -> Op:
    nodes = yield from core.alive_nodes()
    if node is not None:
        nodes = [n for n in nodes if n.name == node]
    if not nodes:
        raise NodeUnavailable(f"no live node {'named ' + repr(node) if node else ''} to keep the key")
    return max(nodes, key=lambda n: n.room).address


def _write_views(core: Core, views: list[memoryview]) -> Writer:
    """A writer sending ``views`` back to back, in chunks, in one window."""
    checksum = C.of(views)

    def writer(address: str, block_id: str, offset: int) -> Op:
        if block_id and not (yield from _local(core, address, block_id, offset, views, True)):
            calls = chunk_calls(P.WRITE, address, block_id, offset, views,
                                core.settings.chunk_bytes)
            yield from core.execute(Batch(calls, core.settings.request_timeout_s,
                                          core.settings.window))
        return checksum

    return writer


LOCAL_MAX_VIEWS = 8


def _local(core: Core, address: str, block_id: str, offset: int, views: list[memoryview],
           write: bool) -> Op:
    """Views back to back from ``offset``, through the same-host path (``mesh/client/local.py``)
    when the block's agent is on this machine: False when any of them must take the network
    (the caller then sends them all, which writes or reads the same bytes again). Many views
    (a pickle's out-of-band buffers) go over the network, in one window of chunks."""
    if len(views) > LOCAL_MAX_VIEWS:
        return False
    op = core.local.write if write else core.local.read
    for view in views:
        if view.nbytes and not (yield from op(address, block_id, offset, view)):
            return False
        offset += view.nbytes
    return True


def _read_views(core: Core, address: str, info: ObjectInfo, outs: list[memoryview]) -> Op:
    """Fill ``outs`` back to back from the object's range, then check the checksum."""
    hasher = C.hasher_for(info.checksum)  # one this version cannot check: refused before reading
    if stripes.striped(info):
        yield from stripes.read(core, address, info, outs)
    elif info.block_id and info.length and \
            not (yield from _local(core, address, info.block_id, info.offset, outs, False)):
        calls = chunk_calls(P.READ, address, info.block_id, info.offset, outs,
                            core.settings.chunk_bytes)
        yield from core.execute(Batch(calls, core.settings.request_timeout_s,
                                      core.settings.window))
    for out in outs:
        hasher.update(out)
    _verify(info, hasher.text())


# --- bytes ----------------------------------------------------------------------------------------


def put_bytes(core: Core, key: str | None, data: Any, node: str | None = None,
              block_id: str | None = None, offset: int = 0, replace: bool = False,
              content_type: str = "bytes", meta: dict | None = None,
              replicas: int | None = None, stripe: int = 1, opts: PutOptions = NONE) -> Op:
    """``stripe`` > 1: the bytes cut over that many nodes (``mesh/client/stripes.py``);
    ``opts``: ``mesh/client/cacheopts.py``."""
    meta = dict(meta or {})
    view = byte_view(data)
    if block_id is None:
        [view] = pack([view], opts, meta)
    stripe = stripes.check(stripe, view.nbytes)
    if stripe > 1 and (opts.ttl_s is not None or opts.evictable):
        raise InvalidRequest("a striped object cannot have a ttl or be evictable (yet)")
    if stripe > 1 and block_id is None:
        if key is not None and len(stripes.part_key(key, stripe)) > 1024:
            raise InvalidRequest("a striped object's key must leave room for its stripes' names "
                                 "(at most 1000 characters)")
        meta = dict(meta or {})
        nodes = yield from stripes.place(core, view.nbytes, stripe, node)
        return stripes.whole((yield from _put(
            core, key, stripes.sizes(view.nbytes, stripe)[0], nodes[0], None, 0, replace,
            content_type, meta, stripes.writer(core, key, view, nodes, meta, replicas), replicas)))
    return (yield from _put(core, key, view.nbytes, node, block_id, offset, replace,
                            content_type, meta, _write_views(core, [view]), replicas, opts))


def _read_key(core: Core, key: str,
              prepare: Callable[[ObjectInfo], tuple[list[memoryview], Callable[[], Any]]]) -> Op:
    """Look ``key`` up and read its range into the buffers ``prepare(info)`` makes; returns what
    its ``finish()`` returns. A block that moves meanwhile is followed (the key looked up again
    and read again from the start) until the key is found nowhere or the request timeout."""

    def body(where: tuple[str, ObjectInfo]) -> Op:
        address, info = where
        whole = stripes.whole(info)
        if compression_of(whole.meta) is None:
            outs, finish = prepare(whole)
            yield from _read_views(core, address, info, outs)
            return finish()
        stored = bytearray(whole.length)  # a compressed object: its frame, then the bytes
        yield from _read_views(core, address, info, [memoryview(stored)])
        outs, finish = prepare(dataclasses.replace(whole, length=whole.raw_length))
        unpack_into(stored, whole.meta, outs)
        return finish()

    return (yield from follow(lambda: lookup(core, key), body, core.settings.request_timeout_s))


def get_bytes(core: Core, key: str) -> Op:
    def prepare(info: ObjectInfo):
        out = bytearray(info.length)
        return [memoryview(out)], lambda: out

    return (yield from _read_key(core, key, prepare))


# --- files ----------------------------------------------------------------------------------------


def _stream_writer(core: Core, src: BinaryIO, length: int, progress: Progress) -> Writer:
    """A writer that streams ``length`` bytes of ``src`` through a ring of chunk buffers."""

    def writer(address: str, block_id: str, offset: int) -> Op:
        return (yield from stream_write(core, address, block_id, offset, src, length, progress))

    return writer


def _open_source(source: Any) -> tuple[BinaryIO, int, bool, dict]:
    """(readable, length, close_it, meta) for a path or a binary file object."""
    if isinstance(source, (str, os.PathLike)):
        try:
            f = open(source, "rb")
        except OSError as exc:
            raise InvalidRequest(f"cannot read {os.fspath(source)}: {exc.strerror}") from None
        return f, os.fstat(f.fileno()).st_size, True, {"filename": os.path.basename(os.fspath(source))}
    try:
        st = os.fstat(source.fileno())
        if stat_mod.S_ISREG(st.st_mode):
            return source, st.st_size - source.tell(), False, {}
    except (AttributeError, OSError, ValueError):
        pass
    # Unknown length (a pipe): keep up to SPOOL_IN_MEMORY_BYTES in memory, spool the rest.
    head = source.read(SPOOL_IN_MEMORY_BYTES)
    more = source.read(1)
    if not more:
        import io

        return io.BytesIO(head), len(head), True, {}
    spool = tempfile.TemporaryFile()
    spool.write(head)
    spool.write(more)
    del head
    while True:
        piece = source.read(1 << 20)
        if not piece:
            break
        spool.write(piece)
    length = spool.tell()
    spool.seek(0)
    return spool, length, True, {}


def put_file(core: Core, key: str | None, source: Any, node: str | None = None,
             block_id: str | None = None, offset: int = 0, replace: bool = False,
             progress: Progress = None, replicas: int | None = None,
             opts: PutOptions = NONE) -> Op:
    src, length, close_it, meta = _open_source(source)
    try:
        if block_id is None:
            src, length = pack_stream(src, length, opts, meta)  # (compressed in memory)
        return (yield from _put(core, key, length, node, block_id, offset, replace, "file",
                                meta, _stream_writer(core, src, length, progress), replicas,
                                opts))
    finally:
        if close_it:
            src.close()


def _open_dest(dest: Any) -> tuple[BinaryIO, bool]:
    if isinstance(dest, (str, os.PathLike)):
        try:
            return open(dest, "wb"), True
        except OSError as exc:
            raise InvalidRequest(f"cannot write {os.fspath(dest)}: {exc.strerror}") from None
    return dest, False


def get_file(core: Core, key: str, dest: Any, progress: Progress = None) -> Op:
    """Stream the object named ``key`` to ``dest``, following its block if it moves; returns
    the key's record where it was last read."""
    first = yield from lookup(core, key)
    info = first[1]
    hasher = C.hasher_for(info.checksum)  # before ``dest`` is made or truncated
    out, close_it = _open_dest(dest)
    sink = out.write if compression_of(info.meta) is None else Unpacking(info.meta, out.write)
    stream = StreamRead(info.length, sink, progress, hasher)
    pending = [first]

    def find() -> Op:
        if pending:
            return pending.pop()
        where = yield from lookup(core, key)
        _same_object(info, where[1], stream.delivered)
        return where

    def body(where: tuple[str, ObjectInfo]) -> Op:
        address, now = where
        if stripes.striped(now):  # after a move it starts again (``stripes.restream``)
            _same_object(info, now, 0)
            stream._hasher = yield from stripes.restream(core, address, now, out, progress,
                                                         stream)
            return now
        yield from stream.run(core, address, now.block_id or "", now.offset)
        return now

    try:
        last = yield from follow(find, body, core.settings.request_timeout_s,
                                 progress=lambda: stream.delivered)
        out.flush()
    finally:
        if close_it:
            out.close()
    _verify(info, stream.checksum)
    if isinstance(sink, Unpacking):
        sink.done()
    return stripes.whole(last)


def _same_object(first: ObjectInfo, now: ObjectInfo, delivered: int) -> None:
    """A stream that resumes must resume the object it began with."""
    def what(i: ObjectInfo) -> tuple:
        return (i.block_id, i.offset, i.length, i.checksum)

    if what(now) != what(first):
        raise ObjectChanged(
            f"key {first.key!r} changed while it was being read: it named {first.length} bytes "
            f"at {first.offset} of block {first.block_id} ({first.checksum}) and now names "
            f"{now.length} bytes at {now.offset} of block {now.block_id} ({now.checksum}); "
            f"the {delivered} bytes written out are not a whole object"
        )


def read_to_file(core: Core, block_id: str, dest: Any, offset: int = 0,
                 size: int | None = None, progress: Progress = None) -> Op:
    """Stream a range of a block to ``dest``, following the block if it moves."""
    _, block_size = yield from core.locate(block_id)
    n = block_size - offset if size is None else size
    if offset < 0 or n < 0 or offset + n > block_size:
        raise OutOfRange(
            f"range of {n} bytes at offset {offset} is outside block {block_id} ({block_size} bytes)"
        )
    out, close_it = _open_dest(dest)
    stream = StreamRead(n, out.write, progress)
    try:
        yield from core.follow_block(
            block_id, lambda address, _size: stream.run(core, address, block_id, offset),
            progress=lambda: stream.delivered,
        )
        out.flush()
    finally:
        if close_it:
            out.close()
    return n


# --- Python objects (pickle protocol 5, buffers out of band) -------------------------------------


def put_object(core: Core, key: str | None, obj: Any, node: str | None = None,
               replace: bool = False, replicas: int | None = None, opts: PutOptions = NONE,
               serializer: str = "pickle") -> Op:
    """``serializer``: ``"pickle"``, or ``"cloudpickle"`` for lambdas, closures and classes
    defined in functions or ``__main__`` (the ``cloudpickle`` extra; the reader needs it too)."""
    dumps = _dumps(serializer)
    buffers: list[memoryview] = []

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(pb.raw())  # contiguous: sent from its own memory
            return False
        except BufferError:
            return True  # not contiguous: pickle copies it in-band

    try:
        data = dumps(obj, protocol=5, buffer_callback=out_of_band)
    except Exception as exc:
        hint = " (serializer='cloudpickle' pickles lambdas, closures and local classes)" \
            if serializer == "pickle" else ""
        raise InvalidRequest(f"cannot pickle {type(obj).__name__}: {exc}{hint}") from None
    views = [memoryview(data)] + buffers
    meta = {"pickle_bytes": len(data), "buffers": [b.nbytes for b in buffers]}
    if serializer != "pickle":
        meta["serializer"] = serializer
    views = pack(views, opts, meta)
    return (yield from _put(core, key, sum(v.nbytes for v in views), node, None, 0, replace,
                            "pickle", meta, _write_views(core, views), replicas, opts))


def _dumps(serializer: str) -> Callable[..., bytes]:
    if serializer == "pickle":
        return pickle.dumps
    if serializer != "cloudpickle":
        raise InvalidRequest(f"serializer must be 'pickle' or 'cloudpickle', got {serializer!r}")
    try:
        import cloudpickle
    except ImportError:
        raise InvalidRequest("serializer='cloudpickle' needs the cloudpickle package: pip "
                             "install 'memory-mesh[cloudpickle]'") from None
    return cloudpickle.dumps


def get_object(core: Core, key: str, allow_pickle: bool = True) -> Op:
    """Unpickling runs code chosen by whoever wrote the record, so it is done only when
    ``allow_pickle`` and, on a keyed cluster, only for a record its agent stamped with an
    authenticated writer (every key allowed to put is trusted as much as the caller trusts its
    cluster's writers). On a cluster without keys, whoever can reach an agent is a writer."""

    def prepare(info: ObjectInfo):
        if info.content_type != "pickle":
            raise InvalidRequest(f"key {key!r} holds {info.content_type}, not a pickled object")
        if not allow_pickle:
            raise UnsafeObject(f"key {key!r} holds a pickled object and allow_pickle=False")
        if core.links.key is not None and not info.writer:
            raise UnsafeObject(f"key {key!r} holds a pickle that no authenticated writer "
                               "stored: not unpickled")
        data = bytearray(info.meta["pickle_bytes"])
        buffers = [bytearray(n) for n in info.meta["buffers"]]
        return ([memoryview(b) for b in [data, *buffers]],
                lambda: pickle.loads(data, buffers=buffers))

    return (yield from _read_key(core, key, prepare))


# --- numpy arrays ----------------------------------------------------------------------------------


def put_array(core: Core, key: str | None, array: Any, node: str | None = None,
              replace: bool = False, replicas: int | None = None,
              opts: PutOptions = NONE) -> Op:
    import numpy as np

    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise InvalidRequest("an array of Python objects has no raw memory to send; use put_object")
    if arr.flags.c_contiguous:
        order, flat = "C", arr.reshape(-1)
    elif arr.flags.f_contiguous:
        order, flat = "F", arr.ravel(order="F")
    else:  # strided: one copy to make it contiguous
        order, arr = "C", np.ascontiguousarray(arr)
        flat = arr.reshape(-1)
    view = memoryview(flat.view(np.uint8))
    meta = {"dtype": _descr(np.lib.format.dtype_to_descr(arr.dtype)),
            "shape": list(arr.shape), "order": order}
    [view] = pack([view], opts, meta)
    return (yield from _put(core, key, view.nbytes, node, None, 0, replace, "ndarray", meta,
                            _write_views(core, [view]), replicas, opts))


def get_array(core: Core, key: str) -> Op:
    import numpy as np

    def prepare(info: ObjectInfo):
        if info.content_type != "ndarray":
            raise InvalidRequest(f"key {key!r} holds {info.content_type}, not a numpy array")
        dtype = np.lib.format.descr_to_dtype(_undescr(info.meta["dtype"]))
        if dtype.hasobject:  # pointers, never bytes from the wire (put_array refuses them)
            raise UnsafeObject(f"key {key!r} claims an array of Python objects: not read")
        order = info.meta["order"]
        out = np.empty(tuple(info.meta["shape"]), dtype=dtype, order=order)
        flat = out.reshape(-1) if order == "C" else out.ravel(order="F")
        return [memoryview(flat.view(np.uint8))], lambda: out

    return (yield from _read_key(core, key, prepare))


def _descr(d: Any) -> Any:
    """numpy's descr uses tuples; msgpack turns them into lists, so mark them."""
    if isinstance(d, list):
        return [{"t": [_descr(x) for x in item]} if isinstance(item, tuple) else _descr(item)
                for item in d]
    return d


def _undescr(d: Any) -> Any:
    if isinstance(d, list):
        return [tuple(_undescr(x) for x in item["t"]) if isinstance(item, dict) else _undescr(item)
                for item in d]
    return d
