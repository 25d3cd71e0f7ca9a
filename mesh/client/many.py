"""Many small operations per message: ``read_many``, ``write_many``, ``get_many``, ``put_many``.

Each is an operation generator (like those of ``mesh/client/core.py``) that groups its items by
agent and sends them as MANY requests (``mesh/protocol.py``): up to ``MAX_MANY_OPS`` sub-ops
and ``MAX_MANY_BYTES`` each way per message, ``mesh.window`` messages in flight per agent. The
agent applies each sub-op as the single op and answers each, so one item's failure is that
item's alone: the result list holds, in the items' order, each value or (with
``return_exceptions``) its exception; without it, the first item's error is raised once every
item has run.

An item refused with an answer that means "look again" (its block moved, a copy that cannot
serve, a key put that met another put) and an item too large for a batch take the single
operation's path (``Core.read_into``, ``Core.write``, ``objects.get_bytes``, ``put_bytes``),
which follows blocks, blames nodes and waits as it does for one item.

- ``run`` (``mesh/client/subops.py``): the sub-ops (``Sub``) to their agents, results and
  errors back into each ``Sub``.
- ``read_many``, ``write_many``: block ranges (``Core.locate`` finds each block once); a call
  whose every item is a plain range of a located block goes lean (``mesh/client/ranges.py``).
- ``get_many``: one MANY of KGETs to every live agent, then the READs, each value checked
  against its record's checksum.
- ``put_many``: the steps of a named put (``mesh/client/objects.py``: ``_put``), each step one
  MANY per agent: KCLAIM at each key's home, KGET everywhere (the key must not exist, unless
  ``replace``: a key that exists then takes the single path), ALLOC of a pending block per
  value, WRITE, KPUT, KHOME. An item that fails after its claim gives the claim back and frees
  its block.

Not here: the batch window and reply matching (``mesh/client/batch.py``), the frames
(``mesh/protocol.py``), the agent's side (``agents/many.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from mesh import checksum as C
from mesh import protocol as P
import mesh.client.keyclaims as keyclaims
import mesh.client.ranges as ranges
from mesh.client.batch import Op, byte_view
import mesh.client.stripes as stripes
from mesh.client.cacheopts import NONE, PutOptions
from mesh.client.keylookup import ObjectInfo, _check_key
from mesh.client.subops import MANY_ITEM_BYTES, Sub, run
from mesh.errors import (
    BlockMoving, BlockNotFound, CapacityError, InvalidRequest, InvalidSize, KeyExists,
    KeyNotFound, MeshError, NodeUnavailable, OutOfRange,
)

if TYPE_CHECKING:
    from mesh.client.core import Core

# "look again": the single op's path follows the block (transfer.follow)
_AGAIN = (BlockMoving, BlockNotFound)


def _outcome(values: list[Any], return_exceptions: bool) -> list[Any]:
    if not return_exceptions:
        for v in values:
            if isinstance(v, MeshError):
                raise v
    return values


def _single(values: list[Any], i: int, op: Op) -> Op:
    """Run item ``i`` through the single op's path; its value or its error into ``values``."""
    try:
        values[i] = yield from op
    except MeshError as exc:
        values[i] = exc


# --- block ranges ---------------------------------------------------------------------------


def _locate_all(core: Core, block_ids: Iterable[Any]) -> Op:
    """{block id: (address, size) or the error finding it} of each distinct block id."""
    places: dict[str, Any] = {}
    for block_id in block_ids:
        if type(block_id) is str and block_id not in places:
            try:
                places[block_id] = yield from core.locate(block_id)
            except MeshError as exc:
                places[block_id] = exc
    return places


def _item(item: Any) -> tuple[Any, Any, Any]:
    return (tuple(item) + (0,))[:3]


def _where(places: dict[str, Any], block_id: Any, offset: Any, n: int) -> Any:
    """The address an item of ``n`` bytes at ``offset`` of ``block_id`` goes to, or its error."""
    where = places.get(block_id) if type(block_id) is str else None
    if type(where) is tuple and type(offset) is int and 0 <= offset <= where[1] - n:
        return where[0]
    if type(offset) is not int or offset < 0:
        return OutOfRange(f"offset must be a whole number >= 0, got {offset!r}")
    if where is None:
        return BlockNotFound(f"block id must be a non-empty string, got {block_id!r}")
    if isinstance(where, MeshError):
        return where
    return OutOfRange(f"{n} bytes at offset {offset} are past the end of block {block_id} "
                      f"({where[1]} bytes)")


def _settle(core: Core, sent: list[Sub], values: list[Any], single: list[int]) -> None:
    """Errors of sent sub-ops into ``values``; a look-again answer sends its item to the single
    op's path (its block's cached place forgotten)."""
    for sub in sent:
        if sub.error is None:
            continue
        if isinstance(sub.error, _AGAIN):
            core.forget_location(sub.fields["block"])
            single.append(sub.item)
        else:
            values[sub.item] = sub.error


def _begin(core: Core, items: Iterable[Any]) -> Op:
    """What ``read_many`` and ``write_many`` start from: the items as (block_id, x, offset),
    a value slot each, the sub-ops sent and the items done one by one (both empty yet), and
    where each block is."""
    items = [item if type(item) is tuple and len(item) == 3 else _item(item) for item in items]
    places = yield from _locate_all(core, {it[0]: None for it in items if type(it[0]) is str})
    values: list[Any] = [None] * len(items)
    sent: list[Sub] = []
    single: list[int] = []
    return items, values, sent, single, places


def read_many(core: Core, items: Iterable[Any], return_exceptions: bool = False) -> Op:
    """``items``: (block_id, size) or (block_id, size, offset); a bytearray each."""
    items, values, sent, single, places = yield from _begin(core, items)
    near = core.near
    lean = ranges.plan(items, places, True, near)

    def prepared() -> Iterator[tuple[str, Sub]]:
        for i, (block_id, size, offset) in enumerate(items):
            if type(size) is not int or size < 0:
                values[i] = InvalidSize(f"read size must be a whole number >= 0, got {size!r}")
                continue
            out = values[i] = bytearray(size)
            if size > MANY_ITEM_BYTES:
                single.append(i)
                continue
            address = _where(places, block_id, offset, size)
            if isinstance(address, MeshError):
                values[i] = address
                continue
            sub = Sub(P.READ, {"block": block_id, "offset": offset, "length": size}, None,
                      memoryview(out), i)
            sent.append(sub)
            yield near.get(block_id, address), sub

    if lean is not None:  # the common case (mesh/client/ranges.py)
        yield from ranges.send(core, items, lean, values, sent, True)
    else:
        yield from run(core, prepared())
    _settle(core, sent, values, single)
    for i in single:
        block_id, size, offset = items[i]
        out = values[i]
        yield from _single(values, i, core.read_into(block_id, out, offset, size))
        if not isinstance(values[i], MeshError):
            values[i] = out
    return _outcome(values, return_exceptions)


def write_many(core: Core, items: Iterable[Any], return_exceptions: bool = False) -> Op:
    """``items``: (block_id, data) or (block_id, data, offset); the bytes written each."""
    items, values, sent, single, places = yield from _begin(core, items)
    lean = ranges.plan(items, places, False)

    def prepared() -> Iterator[tuple[str, Sub]]:
        for i, (block_id, data, offset) in enumerate(items):
            try:
                view = byte_view(data)
            except MeshError as exc:
                values[i] = exc
                continue
            n = view.nbytes
            if n > MANY_ITEM_BYTES:
                single.append(i)
                continue
            address = _where(places, block_id, offset, n)
            if isinstance(address, MeshError):
                values[i] = address
                continue
            values[i] = n
            if n:
                sub = Sub(P.WRITE, {"block": block_id, "offset": offset, "length": n},
                          payload=view, item=i)
                sent.append(sub)
                yield address, sub

    if lean is not None:  # the common case (mesh/client/ranges.py)
        yield from ranges.send(core, items, lean, values, sent, False)
    else:
        yield from run(core, prepared())
    _settle(core, sent, values, single)
    for i in single:
        block_id, data, offset = items[i]
        yield from _single(values, i, core.write(block_id, data, offset))
    return _outcome(values, return_exceptions)


# --- named objects --------------------------------------------------------------------------


def _records(core: Core, keys: list[str]) -> Op:
    """{key: (address, ObjectInfo)} of the newest record of each key found, as ``holders``
    picks it (the primary's answer for a replicated record), and the keys some agent could
    not answer for with certainty (a copy that cannot serve, an agent that did not answer)."""
    nodes = yield from core.alive_nodes()
    asked = {n.address: [Sub(P.KGET, {"key": k}, item=i) for i, k in enumerate(keys)]
             for n in nodes}
    yield from run(core, [(a, sub) for a, subs in asked.items() for sub in subs],
                   core.settings.connect_timeout_s)
    found: dict[str, tuple[str, ObjectInfo]] = {}
    unsure: set[str] = set()
    for address, subs in asked.items():
        for sub in subs:
            key = keys[sub.item]
            if sub.error is not None:
                if not isinstance(sub.error, KeyNotFound):
                    unsure.add(key)
                continue
            try:
                info = ObjectInfo.from_record(sub.result)
            except (KeyError, TypeError, ValueError):
                unsure.add(key)
                continue
            old = found.get(key)
            if old is None or info.created > old[1].created or (
                    info.created == old[1].created and sub.result.get("node") == info.node):
                found[key] = (address, info)
    return found, unsure


def get_many(core: Core, keys: Iterable[str], return_exceptions: bool = False) -> Op:
    """The bytes of each key, in order (each checked against its record's checksum)."""
    from mesh.client import objects

    keys = list(keys)
    values: list[Any] = [None] * len(keys)
    for i, key in enumerate(keys):
        try:
            _check_key(key)
        except MeshError as exc:
            values[i] = exc
    wanted = [k for i, k in enumerate(keys) if values[i] is None]
    found, unsure = (yield from _records(core, sorted(set(wanted)))) if wanted else ({}, set())
    placed: list[tuple[str, Sub]] = []
    single: list[int] = []
    infos: dict[int, ObjectInfo] = {}
    for i, key in enumerate(keys):
        if values[i] is not None:
            continue
        where = found.get(key)
        if where is None or key in unsure or where[1].length > MANY_ITEM_BYTES or \
                where[1].compression or stripes.striped(where[1]):
            # not found (the single path blames), not certain, large, compressed or striped
            single.append(i)
            continue
        address, info = where
        out = values[i] = bytearray(info.length)
        infos[i] = info
        if info.length and info.block_id:
            placed.append((address, Sub(P.READ, {"block": info.block_id, "offset": info.offset,
                                                 "length": info.length},
                                        sink=memoryview(out), item=i)))
    yield from run(core, placed)
    failed = {sub.item: sub.error for _, sub in placed if sub.error is not None}
    for i, info in infos.items():
        error = failed.get(i)
        if error is None:
            try:
                C.check(info.checksum, C.of([memoryview(values[i])]),
                        f"object {info.key!r} on {info.node}")
            except MeshError as exc:
                error = exc
        if isinstance(error, _AGAIN):
            single.append(i)
        elif error is not None:
            values[i] = error
    for i in sorted(single):
        yield from _single(values, i, objects.get_bytes(core, keys[i]))
    return _outcome(values, return_exceptions)


@dataclass(eq=False)
class _Put:
    """One item of ``put_many`` on its way through the steps."""

    item: int
    key: str
    view: memoryview
    claim: keyclaims.Claim | None = None
    block_id: str = ""
    record: dict[str, Any] | None = None


def put_many(core: Core, items: Any, node: str | None = None, replace: bool = False,
             return_exceptions: bool = False, opts: PutOptions = NONE) -> Op:
    """``items``: a mapping or pairs of (key, bytes-like); an ``ObjectInfo`` each, in order.
    ``opts`` (``mesh/client/cacheopts.py``): a ttl and eviction ride on the batch's ALLOC and
    KPUT; compressed values take the single path."""
    from mesh.client import objects

    pairs = list(items.items()) if hasattr(items, "items") else [tuple(p) for p in items]
    values: list[Any] = [None] * len(pairs)
    todo: list[_Put] = []
    single: list[int] = []
    seen: set[str] = set()
    for i, (key, data) in enumerate(pairs):
        try:
            _check_key(key)
            view = byte_view(data)
        except MeshError as exc:
            values[i] = exc
            continue
        if key in seen:
            values[i] = InvalidRequest(f"key {key!r} appears twice in one put_many")
            continue
        seen.add(key)
        if 0 < view.nbytes <= MANY_ITEM_BYTES and opts.compression is None:
            todo.append(_Put(i, key, view))
        else:  # an empty value needs no block; a large one is sent in chunks
            single.append(i)
    if todo:
        yield from _put_steps(core, todo, values, single, node, replace, opts)
    for i in sorted(single):
        key, data = pairs[i]
        yield from _single(values, i, objects.put_bytes(core, key, data, node, replace=replace,
                                                        opts=opts))
    return _outcome(values, return_exceptions)


def _put_steps(core: Core, todo: list[_Put], values: list[Any], single: list[int],
               node: str | None, replace: bool, opts: PutOptions) -> Op:
    nodes = yield from core.alive_nodes()
    by_name = {n.name: n for n in nodes}
    # 1. claims at each key's home (a home that does not answer: the single path's business)
    subs = []
    for put in todo:
        order = keyclaims.home_order(put.key, list(by_name))
        if not order:
            raise NodeUnavailable("no live node to be the home of the keys")
        home = by_name[order[0]]
        put.claim = keyclaims.Claim(put.key, os.urandom(12).hex(), home.name, home.address)
        subs.append((home.address, Sub(P.KCLAIM, {
            "key": put.key, "token": put.claim.token,
            "ttl_s": keyclaims.claim_ttl_s(core, put.view.nbytes)}, extra=put)))
    yield from run(core, subs, core.settings.connect_timeout_s)
    live: list[_Put] = []
    for _, sub in subs:
        put = sub.extra
        if sub.error is None:
            live.append(put)
        elif isinstance(sub.error, KeyExists) and not replace:
            values[put.item] = sub.error
        else:
            single.append(put.item)
    # 2. the keys must not exist (a replace of a key that does takes the single path)
    found, unsure = yield from _records(core, [p.key for p in live])
    going: list[_Put] = []
    for put in live:
        if put.key in unsure or (put.key in found and replace):
            single.append(put.item)
            yield from _release(core, [put])
        elif put.key in found:
            values[put.item] = KeyExists(f"key {put.key!r} already exists on "
                                         f"{found[put.key][1].node}; delete it first or "
                                         "replace it")
            yield from _release(core, [put])
        else:
            going.append(put)
    if not going:
        return
    # 3. a pending block per value, on one node
    total = sum(p.view.nbytes for p in going)
    if node is not None:
        target = by_name.get(node)
        if target is None:
            yield from _release(core, going)
            raise NodeUnavailable(f"node {node!r} is not a live node", node=node)
    else:
        target = max(nodes, key=lambda n: n.room)
        if target.room < total:
            single.extend(p.item for p in going)  # spread over nodes one by one
            yield from _release(core, going)
            return
    address = target.address
    alloc: dict[str, Any] = {"lazy": False, "pending": True}
    if opts.ttl_s is not None:
        alloc["ttl_s"] = opts.ttl_s
    if core.settings.replicas > 1:
        alloc.update(replicas=core.settings.replicas, spread=core.settings.replica_spread)
    steps = [Sub(P.ALLOC, {**alloc, "size": p.view.nbytes}, extra=p) for p in going]
    yield from run(core, [(address, sub) for sub in steps])
    going = yield from _after(core, steps, values, single)
    core.invalidate_nodes()
    for put in going:
        put.block_id = next(s.result["block"] for s in steps if s.extra is put)
        core._locations[put.block_id] = (address, put.view.nbytes)
    # 4. the bytes, 5. the records, 6. the claims settled
    steps = [Sub(P.WRITE, {"block": p.block_id, "offset": 0, "length": p.view.nbytes},
                 payload=p.view, extra=p) for p in going]
    yield from run(core, [(address, sub) for sub in steps])
    going = yield from _after(core, steps, values, single)
    steps = [Sub(P.KPUT, {"key": p.key, "replace": replace, "record": {
        "block": p.block_id, "offset": 0, "length": p.view.nbytes, "content_type": "bytes",
        "checksum": C.of([p.view]), "owns_block": True, "meta": {}, **opts.record()}},
        extra=p) for p in going]
    yield from run(core, [(address, sub) for sub in steps])
    going = yield from _after(core, steps, values, single)
    for sub in steps:
        if sub.error is None:
            sub.extra.record = sub.result
            values[sub.extra.item] = ObjectInfo.from_record(sub.result)
    steps = [(p.claim.address, Sub(P.KHOME, {"key": p.key, "token": p.claim.token,
                                             "node": p.record["node"], "replace": replace},
                                   extra=p)) for p in going]
    yield from run(core, steps, core.settings.connect_timeout_s)
    for _, sub in steps:
        if isinstance(sub.error, KeyExists):  # the claim was lost to another put: take it back
            values[sub.extra.item] = sub.error
            yield from _undo(core, [sub.extra], published=True)


def _survivors(steps: list[Sub], values: list[Any], single: list[int]) -> list[_Put]:
    """The items whose step succeeded; the others' errors into ``values`` (a full node, or a
    look-again answer: the single path)."""
    going = []
    for sub in steps:
        if sub.error is None:
            going.append(sub.extra)
        elif isinstance(sub.error, (CapacityError,) + _AGAIN):
            single.append(sub.extra.item)
        else:
            values[sub.extra.item] = sub.error
    return going


def _after(core: Core, steps: list[Sub], values: list[Any], single: list[int]) -> Op:
    """``_survivors`` of a step; the others are undone (block freed, claim given back)."""
    going = _survivors(steps, values, single)
    yield from _undo(core, [s.extra for s in steps if s.error is not None])
    return going


def _release(core: Core, puts: list[_Put]) -> Op:
    """Give back the claims of ``puts`` (best effort: they expire anyway)."""
    subs = [(p.claim.address, Sub(P.KRELEASE, {"key": p.key, "token": p.claim.token}))
            for p in puts if p.claim is not None]
    if subs:
        yield from run(core, subs, core.settings.connect_timeout_s)


def _undo(core: Core, puts: list[_Put], published: bool = False) -> Op:
    """Free the blocks of failed items (a published record goes first), give back claims."""
    if not puts:
        return
    subs = []
    for p in puts:
        address = core._locations.get(p.block_id, ("", 0))[0]
        if published and address:
            subs.append((address, Sub(P.KDEL, {"key": p.key})))
        elif p.block_id and address:
            subs.append((address, Sub(P.FREE, {"block": p.block_id})))
    if subs:
        yield from run(core, subs, core.settings.connect_timeout_s)
    for p in puts:
        core.forget_location(p.block_id)
    yield from _release(core, puts)
