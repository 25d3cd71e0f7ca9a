"""Striped objects: one named object cut into contiguous stripes on several agents, written and
read over all of them at once (``put_bytes(key, data, stripe=N)``; read back as one object by
every getter).

Layout (docs/python-api.md, "Striping"). An object of ``L`` bytes in ``N`` stripes is cut into
``N`` ranges of ``ceil(L / N)`` bytes (the last one shorter), each in a block of its own on a
distinct node. The key's record lives with stripe 0's block and names that block's range, as any
record does (so its agent's checks and moves apply unchanged), with:

    meta.stripes = [[block_id, length], ...]   every stripe in order, stripe 0 first
    meta.length  = L                            the whole object's length
    checksum     = the whole object's checksum

Every other stripe ``i`` has a record of its own on its block's agent, under the hidden key
``<key>\\x00stripe<i>`` (``part_key``), with ``meta.stripe_of`` naming the object: the record
owns its block, so the agent's leases, moves and frees treat it as any object's block, a put
that dies half-way leaves nothing behind (its blocks were pending), and deleting the key deletes
the stripes' records and so frees their blocks. Listings hide these records and show the object
with its whole length (``whole``).

Not here: the put pipeline, claims and lookups (``mesh/client/objects.py``,
``mesh/client/keyclaims.py``, ``mesh/client/keylookup.py``), chunking (``transfer.py``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator

from mesh import checksum as C
from mesh import protocol as P
from mesh.client.batch import Batch, Call, Op
from mesh.client.keylookup import ObjectInfo, holders
from mesh.client.transfer import Progress, StreamRead, chunk_calls
from mesh.errors import (
    BlockMoving, BlockNotFound, CapacityError, InvalidRequest, MeshError, NodeUnavailable,
)
from mesh.membership import ALIVE

if TYPE_CHECKING:
    from mesh.client.core import Core

PART = "\x00stripe"
MAX_STRIPES = 64


def part_key(name: str, index: int) -> str:
    return f"{name}{PART}{index}"


def is_part(info: ObjectInfo) -> bool:
    return "stripe_of" in info.meta


def striped(info: ObjectInfo) -> bool:
    return isinstance(info.meta.get("stripes"), list)


def whole(info: ObjectInfo) -> ObjectInfo:
    """``info`` with the whole object's length (a striped record names stripe 0's range)."""
    return dataclasses.replace(info, length=int(info.meta["length"])) if striped(info) else info


def sizes(total: int, stripe: int) -> list[int]:
    step = -(-total // stripe)
    return [min(step, total - i) for i in range(0, total, step)]


def check(stripe: Any, total: int) -> int:
    if isinstance(stripe, bool) or not isinstance(stripe, int) or not 1 <= stripe <= MAX_STRIPES:
        raise InvalidRequest(f"stripe must be a whole number of stripes, 1 to {MAX_STRIPES}, "
                             f"got {stripe!r}")
    return max(1, min(stripe, total))


def place(core: Core, total: int, stripe: int, node: str | None) -> Op:
    """The nodes of the stripes, stripe 0 on ``node`` when given, else the most room first."""
    need = sizes(total, stripe)
    nodes = yield from core.refresh_nodes(max_age_s=0.0)
    alive = sorted((n for n in nodes if n.state == ALIVE), key=lambda n: n.room, reverse=True)
    if node is not None:
        alive.sort(key=lambda n: n.name != node)
        if not alive or alive[0].name != node:
            raise NodeUnavailable(f"node {node!r} is not a live node", node=node)
    chosen = [n.name for n in alive if n.room >= need[0]][:len(need)]
    if node is not None and (not chosen or chosen[0] != node):
        raise CapacityError(f"node {node!r} has no room for a stripe of {need[0]} bytes")
    if len(chosen) < len(need):
        raise CapacityError(f"{len(need)} stripes of {need[0]} bytes need as many live nodes "
                            f"with room; {len(chosen)} have it")
    return chosen


def _round_robin(iterators: list[Iterator[Call]]) -> Iterator[Call]:
    """One call of each stripe in turn, so every agent's window fills at once."""
    live = list(iterators)
    while live:
        for it in list(live):
            call = next(it, None)
            if call is None:
                live.remove(it)
            else:
                yield call


def writer(core: Core, key: str | None, view: memoryview, nodes: list[str], meta: dict,
           replicas: int | None) -> Any:
    """The put pipeline's writer (``objects._put``) of a striped object: ``_put`` made stripe
    0's block; this makes the others, writes every stripe in one batch, publishes the records
    of stripes 1.. and fills ``meta`` (the key record ``_put`` publishes next carries it)."""
    total = view.nbytes
    lengths = sizes(total, len(nodes))

    def write(address: str, block0: str, offset0: int) -> Op:
        name = key if key is not None else block0
        where = [(block0, address, offset0)]
        published: list[tuple[str, str]] = []
        try:
            for node, n in zip(nodes[1:], lengths[1:]):
                block = yield from core.allocate(n, node, pending=True, replicas=replicas)
                where.append((block, (yield from core.locate(block))[0], 0))
            starts = [sum(lengths[:i]) for i in range(len(lengths))]
            yield from core.execute(Batch(_round_robin([
                chunk_calls(P.WRITE, a, b, off, [view[s : s + n]], core.settings.chunk_bytes)
                for (b, a, off), s, n in zip(where, starts, lengths)]),
                core.settings.request_timeout_s, core.settings.window))
            for i, ((b, a, _), s, n) in enumerate(zip(where, starts, lengths)):
                if i == 0:
                    continue
                record = {"block": b, "offset": 0, "length": n, "content_type": "stripe",
                          "checksum": C.of([view[s : s + n]]), "owns_block": True,
                          "meta": {"stripe_of": name, "index": i}}
                yield from core.call(a, P.KPUT, {"key": part_key(name, i), "record": record,
                                                 "replace": True})
                published.append((a, part_key(name, i)))
        except BaseException:
            yield from _undo(core, where[1:], published)
            raise
        meta["stripes"] = [[b, n] for (b, _, _), n in zip(where, lengths)]
        meta["length"] = total
        return C.of([view])

    return write


def _undo(core: Core, made: list[tuple[str, str, int]], published: list[tuple[str, str]]) -> Op:
    """Take back the stripes of a put that failed (its agents reclaim what this misses)."""
    for address, name in published:
        try:
            yield from core.call(address, P.KDEL, {"key": name})
        except MeshError:
            pass
    for block, _, _ in made[len(published):]:
        try:
            yield from core.free(block)
        except MeshError:
            pass


def _lay(outs: list[memoryview], lengths: list[int]) -> list[list[memoryview]]:
    """``outs`` back to back, cut into one list of views per stripe of ``lengths``."""
    flat = [v for v in outs if v.nbytes]
    laid: list[list[memoryview]] = []
    i, pos = 0, 0
    for n in lengths:
        mine: list[memoryview] = []
        while n > 0:
            take = min(n, flat[i].nbytes - pos)
            mine.append(flat[i][pos : pos + take])
            n -= take
            pos += take
            if pos == flat[i].nbytes:
                i, pos = i + 1, 0
        laid.append(mine)
    return laid


def _addresses(core: Core, address: str, info: ObjectInfo) -> Op:
    """Where each stripe is read: stripe 0 where the record is, the others where found."""
    out = [address]
    for block, _ in info.meta["stripes"][1:]:
        found = core.near.get(block) or (yield from core.locate(block))[0]
        out.append(found)
    return out


def read(core: Core, address: str, info: ObjectInfo, outs: list[memoryview]) -> Op:
    """Fill ``outs`` with the striped object, every stripe at once (not checked here)."""
    parts = info.meta["stripes"]
    if sum(n for _, n in parts) != sum(v.nbytes for v in outs):
        raise InvalidRequest(f"key {info.key!r}: its stripes do not add up to its length")
    try:
        where = yield from _addresses(core, address, info)
        offsets = [info.offset] + [0] * (len(parts) - 1)
        yield from core.execute(Batch(_round_robin([
            chunk_calls(P.READ, a, b, off, views, core.settings.chunk_bytes)
            for a, (b, _), off, views in zip(where, parts, offsets, _lay(outs, [n for _, n in parts]))
        ]), core.settings.request_timeout_s, core.settings.window))
    except (BlockMoving, BlockNotFound, NodeUnavailable):
        for block, _ in parts:  # a stripe moved: the next try looks for all of them again
            core.forget_location(block)
        raise


def restream(core: Core, address: str, info: ObjectInfo, out: BinaryIO, progress: Progress,
             whole_stream: StreamRead) -> Op:
    """Stream the striped object to ``out`` stripe by stripe; returns the hasher of what it
    wrote. A try after a failed one (a stripe moved) starts again from the start of ``out``
    (which must then be seekable) with a new hasher."""
    hasher = C.hasher_for(info.checksum)
    if whole_stream.delivered:
        try:
            out.seek(out.tell() - whole_stream.delivered)
            out.truncate()
        except (AttributeError, OSError, ValueError):
            raise MeshError(f"a stripe of {info.key!r} moved while it was streamed to an output "
                            "that cannot be rewound; retry") from None
    whole_stream.delivered = 0

    def counted(view: memoryview) -> None:
        out.write(view)
        whole_stream.delivered += view.nbytes

    for i, (block, n) in enumerate(info.meta["stripes"]):
        part = StreamRead(n, counted, progress, hasher)
        start = info.offset if i == 0 else 0
        if i == 0:
            yield from part.run(core, address, block, start)
        else:
            yield from core.follow_block(block, lambda a, _s, p=part, b=block: p.run(core, a, b, 0),
                                         progress=lambda p=part: p.delivered)
    return hasher


def part_keys(info: ObjectInfo) -> list[str]:
    if not striped(info):
        return []
    return [part_key(info.key, i) for i in range(1, len(info.meta["stripes"]))]


def drop_parts(core: Core, infos: Iterable[ObjectInfo], keep: ObjectInfo | None = None) -> Op:
    """Delete the stripe records of ``infos`` (deleted or replaced objects), except those that
    now name a stripe of ``keep``; their agents free the stripes' blocks."""
    kept = {b for b, _ in keep.meta["stripes"]} if keep is not None and striped(keep) else set()
    for info in infos:
        for name in part_keys(info):
            for address, part in (yield from holders(core, name)):
                if part.block_id in kept:
                    continue
                try:
                    yield from core.call(address, P.KDEL, {"key": name})
                except MeshError:
                    pass
