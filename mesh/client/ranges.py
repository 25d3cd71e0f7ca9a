"""``read_many`` and ``write_many`` in their common case, sent lean (``mesh/client/many.py``).

The common case: every item is a range of at most ``MANY_ITEM_BYTES`` inside a block the client
has located (a size as an ``int`` to read; ``bytes`` or a ``bytearray`` of at least one byte to
write). ``plan`` says whether a call is that case (else the general path takes it whole), and
``send`` sends its items as RANGES messages (``mesh/batchwire.py``: the op once, each block id
once, 16 packed bytes a range) without a ``Sub`` per item. Each reply is settled as it comes,
while later messages are still in flight: ``{done: n}`` (every range went as asked) is taken
in one comparison, its read bytes sliced out in order. Any other reply (MANY's, an answer per
range), or a message that failed, is spread over ``Sub``s made then
(``mesh/client/subops.py``: ``_spread``), so each of its items gets its own answer, error or
"look again" exactly as on the general path, and nothing that was applied is sent again. An
agent of a version before RANGES refuses it as an unknown op: its messages' items are sent
again as MANY's sub-ops once the others are done (a rolling upgrade keeps working).

Each agent's first message carries ``_FIRST_MANY_OPS`` items and each next one twice as many,
up to the protocol's limits (ranges, bytes each way, the header's size), as ``_calls`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from mesh import protocol as P
from mesh.batchwire import pack_ranges
from mesh.client.batch import Batch, Call, Op
from mesh.client.subops import (
    MANY_ITEM_BYTES, _FIRST_MANY_OPS, _HEADER_BUDGET, Sub, _spread, run,
)
from mesh.errors import ProtocolError

if TYPE_CHECKING:
    from mesh.client.core import Core


def plan(items: list[tuple[Any, Any, Any]], places: dict[str, Any], read: bool,
         near: dict[str, str] | None = None) -> dict[str, list[int]] | None:
    """The items' indices by agent address when every item is the common case (see the
    module's doc), else None."""
    by: dict[str, list[int]] = {}
    for i, (block_id, x, offset) in enumerate(items):
        where = places.get(block_id) if type(block_id) is str else None
        if read:
            n = x if type(x) is int else -1
        else:  # (an empty write sends nothing: the general path's)
            n = (len(x) if type(x) is bytes or type(x) is bytearray else 0) or -1
        if n < 0 or n > MANY_ITEM_BYTES or type(where) is not tuple or \
                type(offset) is not int or offset < 0 or offset + n > where[1]:
            return None
        address = where[0] if near is None else near.get(block_id, where[0])
        group = by.get(address)
        if group is None:
            by[address] = [i]
        else:
            group.append(i)
    return by


def _pieces(items: list[tuple[Any, Any, Any]], idx: list[int], read: bool) -> Iterator[list[int]]:
    """``idx`` cut into the items of one message each, within the protocol's limits."""
    start, most = 0, _FIRST_MANY_OPS
    while start < len(idx):
        end, size, header = start, 0, 0
        while end < len(idx) and end - start < most:
            block_id, x, _ = items[idx[end]]
            n = x if read else len(x)
            h = 48 + len(block_id)
            if end > start and (size + n > P.MAX_MANY_BYTES or header + h > _HEADER_BUDGET):
                break
            size, header, end = size + n, header + h, end + 1
        yield idx[start:end]
        start, most = end, min(2 * most, P.MAX_MANY_OPS)


def send(core: Core, items: list[tuple[Any, Any, Any]], by: dict[str, list[int]],
         values: list[Any], sent: list[Sub], read: bool) -> Op:
    """Send ``items`` as ``plan`` grouped them. Each item's value (a bytearray read, or the
    count of bytes written) goes into ``values``; the ``Sub``s of messages not answered
    plainly go into ``sent``, for the caller's settling (errors, "look again")."""
    op = P.READ if read else P.WRITE
    older: list[tuple[str, list[int]]] = []  # messages an agent of an older version refused

    def subs_of(piece: list[int]) -> list[Sub]:  # the items of a message as MANY's sub-ops
        subs = []
        for i in piece:
            block_id, x, offset = items[i]
            if read:
                values[i] = bytearray(x)
                subs.append(Sub(op, {"block": block_id, "offset": offset, "length": x}, None,
                                memoryview(values[i]), i))
            else:
                values[i] = len(x)
                subs.append(Sub(op, {"block": block_id, "offset": offset, "length": len(x)},
                                memoryview(x), None, i))
        return subs

    def settle(call: Call, piece: list[int]) -> None:  # as each reply comes, while more run
        if call.error is not None and _predates_ranges(call.error):
            older.append((call.address, piece))  # sent again as MANY once these are done
            return
        payload = call.reply_payload
        # (the type's attribute: a zmq.Frame's own lookup of a missing one is slow)
        if call.result is not None and call.result.get("done") == len(piece) and \
                not hasattr(type(payload), "open_into"):
            if not read:
                for i in piece:
                    values[i] = len(items[i][1])
                return
            data = P.frame_view(payload) if payload is not None else memoryview(b"")
            sizes = [items[i][1] for i in piece]
            if data.nbytes == sum(sizes):
                pos = 0
                for i, n in zip(piece, sizes):
                    values[i] = bytearray(data[pos : pos + n])
                    pos += n
                return
        subs = subs_of(piece)  # anything else: each item its own answer, as the general
        _spread(call, subs)  # path gives it
        sent.extend(subs)

    def calls() -> Iterator[Call]:  # lazy: the first are on their way while the rest are made
        for address, idx in by.items():
            for piece in _pieces(items, idx, read):
                index: dict[str, int] = {}  # block id -> its place in the message's blocks
                flat: list[int] = []  # (block's index, offset, length) of each item, in a row
                for i in piece:
                    block_id, x, offset = items[i]
                    k = index.get(block_id)
                    if k is None:
                        k = index[block_id] = len(index)
                    flat += (k, offset, x if read else len(x))
                payload = b"" if read else b"".join([items[i][1] for i in piece])
                call = Call(address, P.RANGES, {"op": op, "blocks": list(index),
                                                "at": pack_ranges(flat)}, payload=payload)
                call.on_done = lambda c, piece=piece: settle(c, piece)
                yield call

    yield from core.execute(Batch(calls(), core.settings.request_timeout_s,
                                  core.settings.window, fail_fast=False))
    if older:  # an agent of a version before RANGES (a rolling upgrade): as MANY's sub-ops
        pairs = [(address, sub) for address, piece in older for sub in subs_of(piece)]
        yield from run(core, pairs)
        sent.extend(sub for _, sub in pairs)


def _predates_ranges(error: Exception) -> bool:
    """An agent of a version before RANGES refuses it whole, as an op it does not know (the
    message is all that tells it from any other protocol error)."""
    return isinstance(error, ProtocolError) and f"unknown op {P.RANGES!r}" in str(error)
