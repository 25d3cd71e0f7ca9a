"""MANY's frames (``mesh/batchwire.py``: ``parse_many``): sub-ops and their payload pieces, the
batches refused whole, the sub-ops refused alone, and a hypothesis fuzz that nothing else ever
comes out of it."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from mesh import batchwire as B
from mesh import protocol as P


def _many(ops: list, payload: bytes = b"", rid: int = 5) -> P.Request:
    return P.parse_request([msgpack.packb([P.VERSION, P.MANY, rid, {"ops": ops}]), payload])


def test_sub_ops_come_out_in_order_with_their_piece_of_the_payload():
    ops = [[P.WRITE, {"block": "a", "offset": 0, "length": 3}],
           [P.READ, {"block": "a", "offset": 0, "length": 3}],
           [P.WRITE, {"block": "b", "offset": 8, "length": 2}],
           [P.KGET, {"key": "k"}]]
    subs = B.parse_many(_many(ops, b"xyzpq"))
    assert [s.op for s in subs] == [P.WRITE, P.READ, P.WRITE, P.KGET]
    assert all(s.request_id == 5 for s in subs)
    assert bytes(subs[0].payload[0]) == b"xyz" and bytes(subs[2].payload[0]) == b"pq"
    assert subs[1].payload == [] and subs[3].fields == {"key": "k"}


def test_a_many_request_carries_exactly_one_payload_frame():
    header = msgpack.packb([P.VERSION, P.MANY, 1, {"ops": []}])
    for frames in ([header], [header, b"", b""]):
        with pytest.raises(P.BadRequest) as info:
            P.parse_request(frames)
        assert info.value.code == "bad_frame"


@pytest.mark.parametrize("ops, payload, code", [
    ([], b"", "bad_request"),  # nothing to do
    ([[P.PING, {}]] * (P.MAX_MANY_OPS + 1), b"", "bad_request"),  # too many
    ([[P.READ, {"block": "a", "offset": 0, "length": 1}], "read"], b"", "bad_request"),
    ([[P.READ, {"block": "a", "offset": 0, "length": 1}, 3]], b"", "bad_request"),
    ([[P.READ, {"block": "a", "offset": 0}]], b"", "bad_request"),  # a read names its length
    ([[P.WRITE, {"block": "a", "offset": 0, "length": -1}]], b"", "bad_request"),
    ([[P.WRITE, {"block": "a", "offset": 0, "length": True}]], b"x", "bad_request"),
    ([[P.WRITE, {"block": "a", "offset": 0, "length": 4}]], b"xyz", "bad_frame"),  # short
    ([[P.WRITE, {"block": "a", "offset": 0, "length": 2}]], b"xyz", "bad_frame"),  # left over
    ([[P.PING, {}]], b"x", "bad_frame"),  # bytes no write takes
    ([[P.READ, {"block": "a", "offset": 0, "length": P.MAX_MANY_BYTES}],
      [P.READ, {"block": "a", "offset": 0, "length": 1}]], b"", "too_large"),
    ([[P.WRITE, {"block": "a", "offset": 0, "length": P.MAX_MANY_BYTES + 1}]],
     b"x" * (P.MAX_MANY_BYTES + 1), "too_large"),
])
def test_a_batch_that_does_not_add_up_is_refused_whole(ops, payload, code):
    with pytest.raises(P.BadRequest) as info:
        B.parse_many(_many(ops, payload))
    assert info.value.code == code and info.value.op == P.MANY and info.value.request_id == 5


def test_a_sub_op_that_is_wrong_alone_is_refused_alone():
    ops = [[P.MANY, {"ops": []}],  # no batch in a batch
           ["explode", {}],
           [P.RWRITE, {"block": "a", "from": "n", "inc": 1, "epoch": 1, "offset": 0}],  # agents'
           [P.STAT, {}],  # a missing field
           [P.STAT, {"block": 3}],  # of the wrong type
           [P.READ, {"block": "a", "offset": 0, "length": 2, "deadline": "soon"}],
           [P.STAT, {"block": "fine"}]]
    subs = B.parse_many(_many(ops))
    assert [type(s).__name__ for s in subs] == ["BadRequest"] * 6 + ["Request"]
    assert [s.code for s in subs[:6]] == ["bad_request"] * 6
    assert subs[6].fields == {"block": "fine"}


_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**33), st.text(max_size=4),
                    st.binary(max_size=4), st.floats(allow_nan=False))
_fields = st.dictionaries(st.sampled_from(["block", "offset", "length", "key", "size", "lazy",
                                           "deadline", "record", "replace", "x"]),
                          _values, max_size=5)
_sub = st.one_of(st.tuples(st.sampled_from(sorted(P.OPS) + ["?"]), _fields).map(list),
                 _values, st.lists(_values, max_size=3))


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(_sub, max_size=12), payload=st.binary(max_size=64))
def test_any_batch_is_refused_or_cut_into_its_sub_ops(ops, payload):
    try:
        req = P.parse_request([msgpack.packb([P.VERSION, P.MANY, 9, {"ops": ops}],
                                             use_bin_type=True), payload])
        subs = B.parse_many(req)
    except P.BadRequest as bad:
        assert bad.code in ("bad_request", "bad_frame", "too_large")
        return
    assert len(subs) == len(ops)
    written = 0
    for sub, (op, fields) in zip(subs, ops):
        if isinstance(sub, P.BadRequest):
            continue
        assert sub.op == op in P.MANY_OPS and sub.fields == fields
        if op == P.WRITE:
            assert bytes(sub.payload[0]) == payload[written : written + fields["length"]]
            written += fields["length"]
    assert written == len(payload)


# --- RANGES ----------------------------------------------------------------------------------


def _ranges(op: str, blocks: list, flat: list[int], payload: bytes = b"", rid: int = 6,
            at: bytes | None = None) -> P.Request:
    fields = {"op": op, "blocks": blocks, "at": B.pack_ranges(flat) if at is None else at}
    return P.parse_request([msgpack.packb([P.VERSION, P.RANGES, rid, fields]), payload])


def test_ranges_come_out_as_the_sub_ops_they_stand_for():
    req = _ranges(P.WRITE, ["a", "b"], [0, 0, 3, 1, 8, 2, 0, 2**40, 0], b"xyzpq")
    op, blocks, spans, data, total = B.parse_ranges(req)
    assert (op, blocks, spans, bytes(data), total) == (
        P.WRITE, ["a", "b"], [(0, 0, 3), (1, 8, 2), (0, 2**40, 0)], b"xyzpq", 5)
    subs = B.range_requests(req, op, blocks, spans, data, 1)  # from the second on
    assert [(s.op, s.request_id, s.fields) for s in subs] == [
        (P.WRITE, 6, {"block": "b", "offset": 8, "length": 2}),
        (P.WRITE, 6, {"block": "a", "offset": 2**40, "length": 0})]
    assert [bytes(s.payload[0]) for s in subs] == [b"pq", b""]
    req = _ranges(P.READ, ["a"], [0, 5, 7, 0, 0, 1])
    reads = B.parse_ranges(req)
    assert reads[2:] == ([(0, 5, 7), (0, 0, 1)], memoryview(b""), 8)
    assert [(s.fields, s.payload) for s in B.range_requests(req, *reads[:4], 0)] == [
        ({"block": "a", "offset": 5, "length": 7}, []),
        ({"block": "a", "offset": 0, "length": 1}, [])]


@pytest.mark.parametrize("op, blocks, flat, payload, code", [
    (P.STAT, ["a"], [0, 0, 1], b"", "bad_request"),  # not a READ or WRITE
    (P.READ, ["a"], [], b"", "bad_request"),  # nothing to do
    (P.READ, ["a"], [0, 0, 1] * (P.MAX_MANY_OPS + 1), b"", "bad_request"),  # too many
    (P.READ, [], [0, 0, 1], b"", "bad_request"),  # no block
    (P.READ, ["a", "b"], [0, 0, 1], b"", "bad_request"),  # more blocks than ranges
    (P.READ, [7], [0, 0, 1], b"", "bad_request"),  # a block id that is not a string
    (P.READ, ["a"], [1, 0, 1], b"", "bad_request"),  # a block past the list
    (P.READ, ["a"], [0, 0, 1], b"x", "bad_frame"),  # bytes no write takes
    (P.WRITE, ["a"], [0, 0, 4], b"xyz", "bad_frame"),  # short
    (P.WRITE, ["a"], [0, 0, 2], b"xyz", "bad_frame"),  # left over
    (P.READ, ["a"], [0, 0, P.MAX_MANY_BYTES, 0, 0, 1], b"", "too_large"),
    (P.WRITE, ["a"], [0, 0, P.MAX_MANY_BYTES + 1], b"x" * (P.MAX_MANY_BYTES + 1), "too_large"),
])
def test_ranges_that_do_not_add_up_are_refused_whole(op, blocks, flat, payload, code):
    with pytest.raises(P.BadRequest) as info:
        B.parse_ranges(_ranges(op, blocks, flat, payload))
    assert info.value.code == code and info.value.op == P.RANGES and info.value.request_id == 6


def test_an_at_field_of_a_length_that_packs_no_whole_ranges_is_refused():
    for at in (b"", b"\0" * 15, b"\0" * 17):
        with pytest.raises(P.BadRequest) as info:
            B.parse_ranges(_ranges(P.READ, ["a"], [], at=at))
        assert info.value.code == "bad_request"
    header = msgpack.packb([P.VERSION, P.RANGES, 1, {"op": P.READ, "blocks": ["a"],
                                                     "at": "not bytes"}])
    with pytest.raises(P.BadRequest):
        P.parse_request([header, b""])


@settings(max_examples=400, deadline=None)
@given(op=st.sampled_from([P.READ, P.WRITE, P.STAT, "?"]),
       blocks=st.lists(st.one_of(st.text(max_size=3), st.integers(-5, 2**40)),
                       max_size=4),
       at=st.binary(max_size=80), payload=st.binary(max_size=64))
def test_any_ranges_request_is_refused_or_parsed_whole(op, blocks, at, payload):
    fields = {"op": op, "blocks": blocks, "at": at}
    try:
        req = P.parse_request([msgpack.packb([P.VERSION, P.RANGES, 9, fields],
                                             use_bin_type=True), payload])
        op2, blocks2, spans, data, total = B.parse_ranges(req)
    except P.BadRequest as bad:
        assert bad.code in ("bad_request", "bad_frame", "too_large")
        return
    assert op2 == op in (P.READ, P.WRITE) and blocks2 == blocks and len(at) == 16 * len(spans)
    assert all(0 <= i < len(blocks) for i, _, _ in spans)
    assert total == sum(n for _, _, n in spans) == (len(payload) if op == P.WRITE else total)
    subs = B.range_requests(req, op2, blocks2, spans, data, 0)
    assert b"".join(bytes(s.payload[0]) for s in subs if s.payload) == (
        payload if op == P.WRITE else b"")
