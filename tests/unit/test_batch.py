"""Unit tests of the batch window (``mesh/client/batch.py``): flow control, reply matching,
errors, timeouts, settling; and the small helpers."""

from __future__ import annotations

import itertools

import pytest

from mesh import protocol as P
from mesh.client.batch import Batch, BatchRun, Call, byte_view
from mesh.client.core import block_node_hint
from mesh.errors import BlockNotFound, InvalidRequest, MeshTimeout


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
