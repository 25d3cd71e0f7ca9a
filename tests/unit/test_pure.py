"""Unit tests of the pure pieces: frames, membership merging, the batch window."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from mesh import protocol as P
from mesh.client.core import Batch, BatchRun, Call, block_node_hint, byte_view
from mesh.errors import (
    BlockNotFound,
    InvalidRequest,
    MeshTimeout,
    OutOfRange,
    ProtocolError,
    VersionMismatch,
    error_from_wire,
)
from mesh.membership import ALIVE, DEAD, SUSPECT, MembershipTable


# --- protocol ---------------------------------------------------------------------------------


def test_request_round_trip():
    header = P.encode_request(P.WRITE, 7, {"block": "b", "offset": 3})
    req = P.parse_request([header, b"xyz"])
    assert (req.op, req.request_id, req.fields, req.payload) == (P.WRITE, 7, {"block": "b", "offset": 3}, [b"xyz"])


@pytest.mark.parametrize(
    "frames, code",
    [
        ([], "bad_frame"),
        ([b"\xc1\xc1garbage"], "bad_frame"),
        ([msgpack.packb({"not": "a list"})], "bad_frame"),
        ([msgpack.packb([P.VERSION, "read", 1])], "bad_frame"),
        ([msgpack.packb([99, "ping", 1, {}])], "version_mismatch"),
        ([msgpack.packb([P.VERSION, "explode", 1, {}])], "unknown_op"),
        ([msgpack.packb([P.VERSION, "read", 1, {"block": "b", "offset": 0}])], "bad_request"),
        ([msgpack.packb([P.VERSION, "read", 1, {"block": "b", "offset": "0", "length": 1}])], "bad_request"),
        ([msgpack.packb([P.VERSION, "alloc", 1, {"size": True, "lazy": False}])], "bad_request"),
        ([msgpack.packb([P.VERSION, "write", 1, {"block": "b", "offset": 0}])], "bad_frame"),
        ([msgpack.packb([P.VERSION, "ping", 1, {}]), b"extra"], "bad_frame"),
        ([b"x" * (P.MAX_HEADER_BYTES + 1)], "bad_frame"),
        ([msgpack.packb([P.VERSION, "ping", 1, {}])[:-2]], "bad_frame"),
    ],
)
def test_bad_requests_are_refused_with_a_code(frames, code):
    with pytest.raises(P.BadRequest) as info:
        P.parse_request(frames)
    assert info.value.code == code


def test_error_reply_maps_to_typed_exception():
    reply = P.parse_reply([P.encode_error(P.READ, 3, "out_of_range", "past the end")])
    assert not reply.ok and reply.request_id == 3
    with pytest.raises(OutOfRange, match="past the end"):
        reply.raise_for_error()
    assert isinstance(error_from_wire("unknown_block", "x"), BlockNotFound)
    assert type(error_from_wire("no-such-code", "x")).__name__ == "AgentError"


def test_reply_with_other_version_is_refused():
    with pytest.raises(VersionMismatch):
        P.parse_reply([msgpack.packb([2, "ping", 1, 0, {}])])
    with pytest.raises(ProtocolError):
        P.parse_reply([b"garbage"])


def _hb(node, inc, **kw):
    rec = {"node": node, "address": f"tcp://{node}:1", "gossip": f"tcp://{node}:2",
           "incarnation": inc, "version": "t", "capacity": 100, "used": 0,
           "host_available": 1000, "blocks": 0}
    rec.update(kw)
    return rec


def test_heartbeat_drops_malformed_peers():
    good = _hb("b", 1, age_s=0.1)
    bad = {"node": "c"}
    rec = P.parse_heartbeat(P.encode_heartbeat({**_hb("a", 1), "peers": [good, bad, "junk"]}))
    assert [p["node"] for p in rec["peers"]] == ["b"]
    with pytest.raises(ProtocolError):
        P.parse_heartbeat([b"hb", msgpack.packb({"node": 1})])


# --- membership -------------------------------------------------------------------------------


def test_membership_states_over_time():
    t = MembershipTable(suspect_after_s=1.5, dead_after_s=3.0)
    assert t.observe(_hb("a", 1), now=10.0)
    assert t.snapshot(11.0)[0]["state"] == ALIVE
    assert t.snapshot(11.6)[0]["state"] == SUSPECT
    assert t.snapshot(13.1)[0]["state"] == DEAD


def test_membership_new_incarnation_replaces_and_stale_is_ignored():
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("a", 5, used=10), now=0.0)
    assert not t.observe(_hb("a", 4, used=99), now=1.0)
    assert t.get("a").info.used == 10
    assert t.observe(_hb("a", 6, used=1), now=20.0)
    assert t.get("a").info.incarnation == 6 and t.snapshot(20.0)[0]["state"] == ALIVE


def test_relayed_age_never_makes_a_node_fresher():
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("a", 1), now=10.0)
    t.observe(_hb("a", 1), now=14.0, age_s=3.5)  # a relay heard it 3.5 s ago: older than ours
    assert t.get("a").last_heard == pytest.approx(10.5)
    # dead nodes are not relayed, so gossip cannot revive them
    assert t.gossip_entries(now=14.0) == []


# --- batch window -----------------------------------------------------------------------------


def _reply(call, ok=True, payload=None, code="unknown_block"):
    if ok:
        header = P.encode_reply(call.op, call.request_id, {"ok": 1})
    else:
        header = P.encode_error(call.op, call.request_id, code, "nope")
    return [header] + ([payload] if payload is not None else [])


def test_window_bounds_calls_in_flight_per_address():
    calls = [Call("A", P.PING, {}) for _ in range(10)]
    run = BatchRun(Batch(calls, timeout_s=5, window=3), itertools.count(1))
    first = run.ready(0.0)
    assert len(first) == 3 and run.ready(0.0) == []
    run.on_reply("A", _reply(first[0][0]), 0.1, None)
    assert len(run.ready(0.1)) == 1
    while run.inflight:
        for call in list(run.inflight.values()):
            run.on_reply("A", _reply(call), 0.2, None)
        run.ready(0.2)
    assert run.finished(0.3) and len(run.outcome()) == 10


def test_read_reply_lands_in_its_sink_and_stale_replies_are_ignored():
    out = bytearray(4)
    call = Call("A", P.READ, {"block": "b", "offset": 0, "length": 4}, sink=memoryview(out))
    run = BatchRun(Batch([call], timeout_s=5), itertools.count(1))
    run.ready(0.0)
    run.on_reply("A", [P.encode_reply(P.READ, 999, {})], 0.1, None)  # stale id
    assert run.inflight
    run.on_reply("A", _reply(call, payload=b"abcd"), 0.1, None)
    assert out == b"abcd" and run.finished(0.1)


def test_first_error_stops_sending_and_is_raised():
    calls = [Call("A", P.PING, {}) for _ in range(5)]
    run = BatchRun(Batch(calls, timeout_s=5, window=2), itertools.count(1))
    sent = [c for c, _ in run.ready(0.0)]
    run.on_reply("A", _reply(sent[0], ok=False), 0.1, "n1")
    assert run.ready(0.1) == []
    run.on_reply("A", _reply(sent[1]), 0.1, "n1")
    assert run.finished(0.1)
    with pytest.raises(BlockNotFound) as info:
        run.outcome()
    assert info.value.node == "n1"


def test_timeouts_fail_calls_and_mark_sockets_for_reset():
    call = Call("A", P.PING, {})
    run = BatchRun(Batch([call], timeout_s=2.0), itertools.count(1))
    run.ready(0.0)
    assert run.wait_s(1.0) == pytest.approx(1.0)
    run.expire(2.5)
    assert run.finished(2.5) and run.abandoned == {"A"}
    with pytest.raises(MeshTimeout):
        run.outcome()


def test_settle_returns_after_first_success():
    calls = [Call(a, P.NODES, {}) for a in "ABC"]
    run = BatchRun(Batch(calls, timeout_s=5, fail_fast=False, settle_s=0.2), itertools.count(1))
    run.ready(0.0)
    run.on_reply("B", _reply(calls[1]), 0.05, None)
    assert not run.finished(0.1)
    assert run.finished(0.3)
    results = run.outcome()
    assert sum(c.result is not None for c in results) == 1
    assert run.abandoned == {"A", "C"}


def test_helpers():
    assert block_node_hint("block_12_gpu_2_k3x9") == "gpu_2"
    assert block_node_hint("nonsense") is None
    import array

    assert byte_view(array.array("d", [1.0, 2.0])).nbytes == 16
    with pytest.raises(InvalidRequest):
        byte_view(b"abc", writable=True)
    with pytest.raises(InvalidRequest):
        byte_view(memoryview(bytearray(10))[::2])
    with pytest.raises(InvalidRequest):
        byte_view(12)
