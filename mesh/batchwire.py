"""The frames of batches: MANY (many small operations of any kind in one message) and RANGES
(many READs, or many WRITEs, of ranges, packed). Ops and limits are named in
``mesh/protocol.py``; the agent's side is ``agents/many.py``, the client's
``mesh/client/subops.py`` (MANY) and ``mesh/client/ranges.py`` (RANGES).

MANY carries up to ``MAX_MANY_OPS`` small operations (``MANY_OPS``: READ, WRITE, STAT, ALLOC,
FREE and the key ops; not MANY) in one message, answered by one message::

    MANY   {ops: [[op, fields], ...]}  + 1 payload  -> {results: [[OK, result] |
           [ERROR, {code, message}], ...]}  + 1 payload

Each WRITE sub-op names its ``length``; the one request payload is the WRITEs' bytes back to
back, in order, at most ``MAX_MANY_BYTES`` (so are the READs' lengths, together). The agent
applies each sub-op as it would the single op (role, deadline: the batch's unless its own,
bounds, replicas) and answers each in ``results``, in order (a READ's or WRITE's success as
``[OK, {}]``: the client knows its range); the reply's payload is the bytes of each READ that
succeeded, back to back. (One payload frame, not one per sub-op: a sealed message carries at
most one, ``mesh/security/seal.py``; an empty frame when there are no bytes.) A sub-op that is
not a [op, fields] pair of a known op with well-typed fields gets its own error; a batch whose
list, count, sizes or payload do not add up is refused whole (``bad_request``/``bad_frame``,
``too_large``), having applied nothing.

RANGES is the bulk of ``read_many``/``write_many`` without an object per item::

    RANGES {op: READ | WRITE, blocks: [block id, ...], at}  + 1 payload
           -> {done: n}  + 1 payload  |  MANY's reply

``at`` packs each range in 16 bytes, little-endian: the index of its block in ``blocks`` (u32),
its offset (u64), its length (u32); 1 to ``MAX_MANY_OPS`` ranges, each a sub-op ``op`` of that
range with MANY's limits and meaning (a WRITE's bytes back to back in the payload, in order).
When every range went as asked the reply is ``{done: n}`` and, for READs, their bytes back to
back; otherwise it is MANY's reply for the same sub-ops, each range answered in ``results``.
A RANGES whose op, blocks, ``at``, sizes or payload do not add up is refused whole, having
applied nothing.
"""

from __future__ import annotations

import struct
from typing import Any

from mesh.protocol import (
    MANY, MANY_OPS, MAX_MANY_BYTES, MAX_MANY_OPS, RANGES, READ, WRITE, BadRequest, Request,
    check_fields, frame_view,
)

RANGE = struct.Struct("<IQI")  # a range in ``at``: its block's index, offset, length
_RANGE_OPS = (READ, WRITE)


def parse_many(request: Request) -> list[Request | BadRequest]:
    """The sub-ops of a parsed MANY request, in order: a ``Request`` each (a WRITE's payload is
    a zero-copy view of its piece of the batch's payload), or the ``BadRequest`` that sub-op
    alone is answered with. Raises ``BadRequest`` for a batch refused whole (see the
    docstring: list, count, sizes, payload)."""
    ops, rid = request.fields["ops"], request.request_id

    def refuse(message: str, code: str = "bad_request") -> BadRequest:
        return BadRequest(code, f"{MANY}: {message}", MANY, rid)

    if not ops or len(ops) > MAX_MANY_OPS:
        raise refuse(f"must carry 1 to {MAX_MANY_OPS} sub-ops, not {len(ops)}")
    data = frame_view(request.payload[0])
    pos = read_bytes = 0
    out: list[Request | BadRequest] = []
    for i, sub in enumerate(ops):
        if not (isinstance(sub, list) and len(sub) == 2 and isinstance(sub[0], str)
                and isinstance(sub[1], dict)):
            raise refuse(f"sub-op {i} must be a pair [op, fields]")
        op, fields = sub
        length = fields.get("length")
        if op in _RANGE_OPS and (type(length) is not int or length < 0):
            raise refuse(f"sub-op {i} ({op}) must name its length, a whole number >= 0")
        if op == WRITE:
            if pos + length > data.nbytes:
                raise refuse(f"the WRITE sub-ops name more bytes than the payload's "
                             f"{data.nbytes}", "bad_frame")
            payload, pos = [data[pos : pos + length]], pos + length
        else:
            payload = []
            read_bytes += length if op == READ else 0
        if (op == READ or op == WRITE) and len(fields) == 3 and type(fields.get("block")) is str \
                and type(fields.get("offset")) is int:
            pass  # a READ or WRITE of {block, offset, length}, all well-typed (the bulk)
        elif op not in MANY_OPS:
            out.append(BadRequest("bad_request", f"{op!r} cannot be a sub-op of {MANY}", op, rid))
            continue
        else:
            try:
                check_fields(op, fields, rid)
            except BadRequest as bad:
                out.append(bad)
                continue
        out.append(Request(op, rid, fields, payload))
    _check_sizes(refuse, data.nbytes, pos, read_bytes)
    return out


def _check_sizes(refuse: Any, payload: int, written: int, read: int) -> None:
    if written != payload:
        raise refuse(f"the payload has {payload} bytes; the WRITE sub-ops name {written}",
                     "bad_frame")
    if max(written, read) > MAX_MANY_BYTES:
        raise refuse(f"over {MAX_MANY_BYTES} bytes each way ({written} written, {read} read): "
                     "split the batch", "too_large")


def pack_ranges(flat: list[int]) -> bytes:
    """``at`` for ranges given in a row: block index, offset, length, the next's, ..."""
    return struct.pack("<" + RANGE.format[1:] * (len(flat) // 3), *flat)  # RANGE, in a row


def parse_ranges(request: Request) -> tuple[str, list[str], list[tuple[int, int, int]],
                                            memoryview, int]:
    """A parsed RANGES request's op, blocks, ranges (block index, offset, length), payload (a
    WRITE's bytes, back to back) and the bytes its ranges name together. Raises
    ``BadRequest`` for a request refused whole (see the docstring)."""
    fields, rid = request.fields, request.request_id

    def refuse(message: str, code: str = "bad_request") -> BadRequest:
        return BadRequest(code, f"{RANGES}: {message}", RANGES, rid)

    op, blocks, at = fields["op"], fields["blocks"], fields["at"]
    if op not in _RANGE_OPS:
        raise refuse(f"op must be {READ!r} or {WRITE!r}, not {op!r}")
    count, rest = divmod(len(at), RANGE.size)
    if rest or not 0 < count <= MAX_MANY_OPS:
        raise refuse(f"'at' must pack 1 to {MAX_MANY_OPS} ranges of {RANGE.size} bytes, not "
                     f"{len(at)} bytes")
    if not 0 < len(blocks) <= count or any(type(b) is not str for b in blocks):
        raise refuse(f"blocks must name 1 to {count} block ids")
    spans = list(RANGE.iter_unpack(at))
    if max(s[0] for s in spans) >= len(blocks):
        raise refuse(f"a range names a block past the {len(blocks)} in blocks")
    total = sum(s[2] for s in spans)
    data = frame_view(request.payload[0])
    if op == WRITE:
        _check_sizes(refuse, data.nbytes, total, 0)
    else:
        _check_sizes(refuse, data.nbytes, 0, total)
    return op, blocks, spans, data, total


def range_requests(request: Request, op: str, blocks: list[str],
                   spans: list[tuple[int, int, int]], data: memoryview,
                   start: int) -> list[Request]:
    """RANGES ranges ``start`` on as the READ or WRITE sub-ops of MANY they stand for (a WRITE's
    payload a view of its bytes)."""
    rid, write = request.request_id, op == WRITE
    pos = sum(s[2] for s in spans[:start]) if write else 0
    out = []
    for index, offset, length in spans[start:]:
        out.append(Request(op, rid, {"block": blocks[index], "offset": offset, "length": length},
                           [data[pos : pos + length]] if write else []))
        pos += length if write else 0
    return out
