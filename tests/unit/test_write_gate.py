"""Writes that wait for zero-copy reads (agents/writegate.py), with stand-in trackers (anything
with a ``.done``) and a stand-in dispatch that does what the agent's WRITE handler does: ask
``must_wait``, then defer or apply. No processes, no sockets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agents.lifecycle import Event
from agents.store import BlockStore
from agents.writegate import MAX_DEFERRED_WRITES, WriteGate
from mesh.errors import AgentError
from mesh.hostmem import HostMemory


@dataclass
class Tracker:
    done: bool = False


@dataclass(eq=False)
class Write:
    block: str
    start: int
    end: int


class Handler:
    """The WRITE handler's use of the gate, recording what it applied, in order."""

    def __init__(self, gate: WriteGate):
        self.gate = gate
        self.applied: list[Write] = []

    def __call__(self, write: Write) -> None:
        if self.gate.must_wait(write.block, write.start, write.end):
            self.gate.defer(write.block, write)
        else:
            self.applied.append(write)


def test_a_write_overlapping_a_live_read_waits_until_the_read_is_done():
    gate = WriteGate("n1")
    read = Tracker()
    gate.sent("b", 100, 200, read)
    assert gate.reads_in_flight("b") == 1
    assert gate.must_wait("b", 150, 160)
    assert gate.must_wait("b", 0, 101) and gate.must_wait("b", 199, 300)
    assert not gate.must_wait("b", 0, 100)  # ranges are half-open
    assert not gate.must_wait("b", 200, 300)
    assert not gate.must_wait("other", 150, 160)
    read.done = True
    assert not gate.must_wait("b", 150, 160)
    assert gate.reads_in_flight("b") == 0


def test_reads_already_sent_or_dropped_hold_nothing():
    gate = WriteGate("n1")
    gate.sent("b", 0, 100, Tracker(done=True))
    gate.sent("b", 0, 100, None)  # the reply was dropped
    assert not gate.must_wait("b", 0, 100) and gate.reads_in_flight("b") == 0


def test_a_done_tracker_releases_the_deferred_write_on_retry():
    gate = WriteGate("n1")
    handler = Handler(gate)
    read = Tracker()
    gate.sent("b", 0, 10, read)
    w = Write("b", 5, 6)
    handler(w)
    assert handler.applied == [] and gate.waiting == 1
    gate.retry(handler)
    assert handler.applied == [] and gate.waiting == 1  # the read is still in flight
    read.done = True
    gate.retry(handler)
    assert handler.applied == [w] and gate.waiting == 0


def test_a_later_write_to_the_same_block_waits_behind_an_earlier_deferred_one():
    gate = WriteGate("n1")
    handler = Handler(gate)
    read = Tracker()
    gate.sent("b", 0, 10, read)
    first = Write("b", 0, 4)  # overlaps the read
    second = Write("b", 500, 504)  # overlaps nothing, but must not overtake ``first``
    elsewhere = Write("c", 0, 4)
    for w in (first, second, elsewhere):
        handler(w)
    assert handler.applied == [elsewhere] and gate.waiting == 2
    gate.retry(handler)
    assert handler.applied == [elsewhere] and gate.waiting == 2  # second held behind first
    read.done = True
    gate.retry(handler)
    assert handler.applied == [elsewhere, first, second] and gate.waiting == 0
    handler(Write("b", 0, 4))  # nothing waits any more: straight through
    assert gate.waiting == 0 and len(handler.applied) == 4


def test_deferred_writes_are_bounded():
    gate = WriteGate("n1", max_deferred=3)
    gate.sent("b", 0, 10, Tracker())
    handler = Handler(gate)
    for _ in range(3):
        handler(Write("b", 0, 1))
    with pytest.raises(AgentError, match="busy") as err:
        handler(Write("b", 0, 1))
    assert err.value.node == "n1" and gate.waiting == 3
    assert WriteGate("n1").max_deferred == MAX_DEFERRED_WRITES


def test_a_freed_blocks_reads_are_forgotten():
    gate = WriteGate("n1")
    gate.sent("b", 0, 10, Tracker())
    gate.sent("c", 0, 10, Tracker())
    gate.forget("b")
    assert gate.reads_in_flight("b") == 0 and not gate.must_wait("b", 0, 10)
    assert gate.must_wait("c", 0, 10)
    gate.forget("never-read")  # nothing to forget is fine


def test_the_store_tells_the_gate_when_a_block_is_freed():
    gate = WriteGate("n1")
    store = BlockStore("n1", 1, None, 0, memory_fn=lambda: HostMemory(1 << 30, 1 << 30, "t"),
                       on_free=gate.forget)
    block = store.allocate(4096, lazy=True)
    gate.sent(block.block_id, 0, 4096, Tracker())
    assert gate.must_wait(block.block_id, 0, 1)
    store.free(block.block_id)
    assert gate.reads_in_flight(block.block_id) == 0
    # a block moving back in under the same id is other memory: its writes do not wait
    copy = store.allocate(4096, lazy=True, block_id=block.block_id)
    assert not gate.must_wait(copy.block_id, 0, 1)
    store.free(copy.block_id, Event.DROP)


def test_a_write_waiting_for_a_freed_block_is_still_answered_on_retry():
    gate = WriteGate("n1")
    handler = Handler(gate)
    gate.sent("b", 0, 10, Tracker())
    w = Write("b", 0, 1)
    handler(w)
    gate.forget("b")
    gate.retry(handler)  # the real handler answers "not found" here
    assert handler.applied == [w] and gate.waiting == 0
