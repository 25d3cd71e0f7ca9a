"""Unit tests of ``mesh/client/transfer.py``: the chunking helper, the follow-the-block policy,
the ring of chunk buffers, and a stream that resumes where it stopped. The "agent" here is a
fake ``execute`` that serves calls from a bytes object, completing them out of order and failing
one on demand: a real agent cannot be made to refuse exactly one chunk (the real thing is in
``tests/integration/test_follow.py``)."""

from __future__ import annotations

import io
import zlib
from types import SimpleNamespace

import pytest
import xxhash

from mesh import checksum
from mesh import protocol as P
from mesh.client.batch import Wait
from mesh.client.transfer import (
    MOVING_RETRY_S,
    ChunkRing,
    StreamRead,
    chunk_calls,
    follow,
    found,
    stream_write,
)
from mesh.errors import BlockMoving, BlockNotFound, InvalidRequest, KeyNotFound


def drive(op):
    """Run an operation generator to its end; returns (its value, the Waits it yielded)."""
    waits = []
    try:
        wait = next(op)
        while True:
            waits.append(wait)
            wait = op.send(set())
    except StopIteration as stop:
        return stop.value, waits


# --- chunk_calls --------------------------------------------------------------------------------


def test_chunk_calls_cut_a_range_laid_over_several_buffers():
    a, b = bytearray(10), bytearray(3)
    done = []
    calls = list(chunk_calls(P.READ, "A", "blk", 100, [memoryview(a), memoryview(b)], 4,
                             lambda call, pos, view: done.append((pos, view.nbytes))))
    assert [(c.address, c.op, c.fields) for c in calls] == [
        ("A", P.READ, {"block": "blk", "offset": 100, "length": 4}),
        ("A", P.READ, {"block": "blk", "offset": 104, "length": 4}),
        ("A", P.READ, {"block": "blk", "offset": 108, "length": 2}),
        ("A", P.READ, {"block": "blk", "offset": 110, "length": 3}),
    ]
    assert all(c.payload is None for c in calls)
    calls[2].sink[:] = b"xy"
    calls[3].sink[:] = b"abc"
    assert a[8:] == b"xy" and b == b"abc"  # sinks are views of the buffers, not copies
    for c in reversed(calls):
        c.on_done(c)
    assert done == [(10, 3), (8, 2), (4, 4), (0, 4)]


def test_chunk_calls_write_pieces_of_the_buffers_and_take_lazy_buffers_one_at_a_time():
    taken = []

    def buffers():
        for piece in (b"hello", b"world!"):
            taken.append(piece)
            yield memoryview(piece)

    calls = chunk_calls(P.WRITE, "A", "blk", 0, buffers(), 4)
    first = next(calls)
    assert taken == [b"hello"]  # nothing read ahead of the window
    rest = list(calls)
    assert [(c.fields["offset"], bytes(c.payload)) for c in [first, *rest]] == [
        (0, b"hell"), (4, b"o"), (5, b"worl"), (9, b"d!"),
    ]
    assert all(c.sink is None and c.on_done is None for c in rest)


# --- follow -----------------------------------------------------------------------------------


def _scripted(outcomes):
    """A body that fails or succeeds as scripted, recording where it ran."""
    ran = []

    def body(where):
        ran.append(where)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
        yield

    return body, ran


def _places(*places):
    looked = []

    def find():
        looked.append(len(looked))
        return places[min(len(looked), len(places)) - 1]
        yield

    return find, looked


def test_follow_waits_out_a_move_and_looks_again_after_not_found():
    body, ran = _scripted([BlockMoving("handing over"), BlockNotFound("moved"), "done"])
    find, looked = _places("n1", "n1", "n2")
    forgotten = []
    result, waits = drive(follow(find, body, 5.0, forget=lambda: forgotten.append(1)))
    assert result == "done" and ran == ["n1", "n1", "n2"] and len(looked) == 3
    assert waits == [Wait((), MOVING_RETRY_S)]  # a pause after "moving" only
    assert len(forgotten) == 2


def test_follow_stops_where_find_finds_nothing_and_at_the_timeout():
    def nowhere():
        raise KeyNotFound("gone")
        yield

    body, _ = _scripted([BlockNotFound("moved")])
    with pytest.raises(KeyNotFound):
        drive(follow(nowhere, body, 5.0))
    body, ran = _scripted([BlockMoving("still"), "never"])
    with pytest.raises(BlockMoving):
        drive(follow(found("n1"), body, -1.0))  # the timeout has already passed
    assert ran == ["n1"]


def test_follow_with_relocate_false_waits_for_moving_but_not_found_is_final():
    body, ran = _scripted([BlockMoving("handing over"), BlockNotFound("gone")])
    with pytest.raises(BlockNotFound):
        drive(follow(found("n1"), body, 5.0, relocate=False))
    assert ran == ["n1", "n1"]


def test_follow_keeps_going_past_the_timeout_while_the_body_makes_progress():
    delivered = [0]

    def body(where):
        delivered[0] += 1
        if delivered[0] < 4:
            raise BlockNotFound("moved")
        return delivered[0]
        yield

    result, _ = drive(follow(found("n1"), body, -1.0, progress=lambda: delivered[0]))
    assert result == 4


# --- the ring and streams ---------------------------------------------------------------------


def test_the_ring_hands_out_the_same_few_buffers():
    ring = ChunkRing(2, 8)
    a = ring.take(8)
    b = ring.take(3)
    assert len(ring) == 0 and b.nbytes == 3
    with pytest.raises(IndexError):
        ring.take(1)
    ring.give(b[1:])  # any view of a buffer gives the whole buffer back
    ring.give(a)
    assert len(ring) == 2 and {id(ring.take(1).obj), id(ring.take(1).obj)} == {id(a.obj), id(b.obj)}


class FakeLocal:
    """A core's same-host path (``mesh/client/local.py``) that does its first ``serve``
    operations against the agent's data, then declines every one (the network takes over)."""

    def __init__(self, agent: "FakeAgent", serve: int):
        self.agent, self.serve, self.done = agent, serve, []

    def _op(self, offset: int, view: memoryview, write: bool):
        if self.serve <= 0:
            return False
        self.serve -= 1
        self.done.append(offset)
        if write:
            self.agent.data[offset : offset + view.nbytes] = view
        else:
            view[:] = self.agent.data[offset : offset + view.nbytes]
        return True
        yield  # (an operation generator, as the real one)

    def read(self, address, block_id, offset, view):
        return (yield from self._op(offset, view, False))

    def write(self, address, block_id, offset, view):
        return (yield from self._op(offset, view, True))


class FakeAgent:
    """``execute`` for READ/WRITE calls against ``data``: takes a window of calls at a time and
    completes them last first; a READ at a block offset in ``moving_at`` fails once."""

    def __init__(self, data: bytes, chunk_bytes: int = 8, window: int = 3, moving_at=(),
                 local_chunks: int = 0):
        self.data = bytearray(data)
        self.settings = SimpleNamespace(chunk_bytes=chunk_bytes, window=window,
                                        request_timeout_s=5.0)
        self.moving_at = set(moving_at)
        self.local = FakeLocal(self, local_chunks)

    def execute(self, batch):
        pending, failed = [], None
        for call in batch.calls:
            pending.append(call)
            if len(pending) == batch.window:
                failed = self._complete(pending) or failed
                pending = []
                if failed:
                    break
        if not failed:
            failed = self._complete(pending)
        if failed:
            raise failed
        return []
        yield

    def _complete(self, calls):
        failed = None
        for call in reversed(calls):
            offset = call.fields["offset"]
            if call.op == P.READ and offset in self.moving_at:
                self.moving_at.discard(offset)
                call.error = failed = BlockMoving("handing over")
            elif call.op == P.READ:
                call.sink[:] = self.data[offset : offset + call.sink.nbytes]
            else:
                self.data[offset : offset + call.payload.nbytes] = call.payload
            if call.on_done is not None:
                call.on_done(call)
        return failed


@pytest.mark.parametrize("algorithm", ["xxh3", "crc32"])  # crc32: a record written before
def test_a_stream_resumes_at_the_first_byte_not_delivered_and_its_checksum_goes_on(algorithm):
    data = bytes(range(256)) * 2
    agent = FakeAgent(data, moving_at={10 + 5 * 8})  # the sixth chunk of the range
    out = bytearray()
    progress = []
    stream = StreamRead(300, out.extend, progress.append,
                        None if algorithm == "xxh3" else checksum.new(algorithm))
    with pytest.raises(BlockMoving):
        drive(stream.run(agent, "A", "blk", 10))
    # chunks after the refused one may have arrived; only those before it are delivered
    assert stream.delivered == 5 * 8 and out == data[10:50]
    drive(stream.run(agent, "B", "blk", 10))
    assert out == data[10:310] and sum(progress) == 300
    assert stream.checksum == (f"xxh3:{xxhash.xxh3_64_intdigest(data[10:310]):016x}"
                               if algorithm == "xxh3" else f"crc32:{zlib.crc32(data[10:310]):08x}")
    assert drive(stream.run(agent, "B", "blk", 10)) == (None, [])  # nothing left to read


def test_a_stream_followed_through_moves_delivers_every_byte_once():
    data = bytes(range(256)) * 4
    agent = FakeAgent(data, chunk_bytes=16, window=2, moving_at={0, 16 * 7, 16 * 30})
    out = bytearray()
    stream = StreamRead(len(data), out.extend)
    _, waits = drive(follow(found("A"), lambda a: stream.run(agent, a, "blk", 0), 5.0,
                            progress=lambda: stream.delivered))
    assert out == data and len(waits) == 3


def test_stream_write_sends_the_input_through_the_ring():
    agent = FakeAgent(bytes(100), chunk_bytes=8, window=2)
    src = bytes(range(90))
    sent = []
    crc = drive(stream_write(agent, "A", "blk", 5, io.BytesIO(src), 90, sent.append))[0]
    assert agent.data[5:95] == src and sum(sent) == 90
    assert crc == f"xxh3:{xxhash.xxh3_64_intdigest(src):016x}"
    with pytest.raises(InvalidRequest, match="ended after 10 of 20 bytes"):
        drive(stream_write(agent, "A", "blk", 0, io.BytesIO(bytes(10)), 20))


@pytest.mark.parametrize("served", [0, 1, 3, 20])
def test_a_stream_hands_over_from_shared_memory_to_the_network_at_any_chunk(served):
    """Chunks go through the same-host path until it declines one; that chunk and the rest go
    over the network, and every byte arrives once, in order, under one checksum."""
    data = bytes(range(256))
    agent = FakeAgent(data, chunk_bytes=8, window=2, local_chunks=served)
    out = bytearray()
    stream = StreamRead(100, out.extend)
    drive(stream.run(agent, "A", "blk", 10))
    assert out == data[10:110] and len(agent.local.done) == min(served, 13)
    assert stream.checksum == f"xxh3:{xxhash.xxh3_64_intdigest(data[10:110]):016x}"

    agent = FakeAgent(bytes(120), chunk_bytes=8, window=2, local_chunks=served)
    src = bytes(range(1, 91))
    sent = []
    digest = drive(stream_write(agent, "A", "blk", 5, io.BytesIO(src), 90, sent.append))[0]
    assert agent.data[5:95] == src and sum(sent) == 90 and agent.data[95:] == bytes(25)
    assert digest == f"xxh3:{xxhash.xxh3_64_intdigest(src):016x}"
