"""A moved-away block's memory kept for a copy moving in (agents/backing.py ``Retained``, used by
agents/store.py): which blocks leave it, which allocations take it, and when it is given back.
Real anonymous mmaps, an injected clock and host memory reading; no processes, no sockets."""

from __future__ import annotations

import pytest

from agents.backing import RETAIN_MAPPINGS, RETAIN_S
from agents.lifecycle import Event, State
from agents.store import BlockStore
from mesh.errors import CapacityError
from mesh.hostmem import HostMemory

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _store(share: int = 8 * MiB) -> tuple[BlockStore, Clock]:
    clock = Clock()
    store = BlockStore("n1", 1, share, 1 * MiB, clock=clock,
                       memory_fn=lambda: HostMemory(64 * MiB, 32 * MiB, "test"))
    return store, clock


def _moved_away(store: BlockStore, size: int, fill: bytes = b"\xab"):
    block = store.allocate(size, lazy=False)
    block.advance(Event.POPULATED)
    block.view[:] = fill * size
    block.advance(Event.MOVE)
    block.advance(Event.HAND_OVER)
    store.free(block.block_id, Event.MOVED_AWAY, moved_to="n2")
    return block


def _incoming(store: BlockStore, size: int, block_id: str = "block_from_n2"):
    return store.allocate(size, lazy=False, block_id=block_id, created=0.0)


def test_a_copy_moving_in_lands_in_the_pages_of_a_block_that_moved_away():
    store, _ = _store()
    old = _moved_away(store, 2 * MiB)
    assert store.used == 0  # kept pages are promised to nobody
    new = _incoming(store, 2 * MiB)
    assert new.buf is old.buf and new.state is State.INCOMING
    assert bytes(new.view[:4]) == b"\xab" * 4  # stale until the pull overwrites every byte
    assert store.used == 2 * MiB
    other = _incoming(store, 2 * MiB, "block_two")  # nothing kept any more: fresh, zeroed
    assert other.buf is not old.buf and bytes(other.view[:4]) == bytes(4)


def test_only_copies_moving_in_of_the_same_size_take_kept_pages():
    store, _ = _store()
    old = _moved_away(store, 2 * MiB)
    fresh = store.allocate(2 * MiB, lazy=False)  # a client's block must read as zeros
    assert fresh.buf is not old.buf and bytes(fresh.view[:4]) == bytes(4)
    assert _incoming(store, 1 * MiB).buf is not old.buf
    assert _incoming(store, 2 * MiB, "block_same").buf is old.buf


@pytest.mark.parametrize("why", [Event.FREE, Event.DROP])
def test_other_frees_give_the_memory_back_at_once(why):
    store, _ = _store()
    block = store.allocate(2 * MiB, lazy=False, block_id="block_x", created=0.0)
    if why is Event.FREE:
        block.advance(Event.COPIED)
        block.advance(Event.COMMIT)
    store.free(block.block_id, why)
    assert block.buf.closed
    assert _incoming(store, 2 * MiB).buf is not block.buf


def test_kept_pages_expire_with_the_sweep_and_are_bounded_in_number():
    store, clock = _store(share=64 * MiB)
    olds = [_moved_away(store, 2 * MiB) for _ in range(RETAIN_MAPPINGS + 1)]
    assert olds[0].buf.closed and not olds[-1].buf.closed  # the oldest went first
    clock.now += RETAIN_S
    store.sweep()
    assert all(b.buf.closed for b in olds)
    assert _incoming(store, 2 * MiB).buf not in [b.buf for b in olds]


def test_a_block_still_being_sent_is_not_kept():
    store, _ = _store()
    block = store.allocate(2 * MiB, lazy=False)
    block.advance(Event.POPULATED)
    in_flight = block.view[0:10]  # what a zero-copy send holds until libzmq is done
    block.advance(Event.MOVE)
    block.advance(Event.HAND_OVER)
    store.free(block.block_id, Event.MOVED_AWAY, moved_to="n2")
    assert _incoming(store, 2 * MiB).buf is not block.buf
    in_flight.release()


def test_kept_pages_are_given_back_before_an_allocation_is_refused():
    # kept pages are this process's: the host's available memory drops by them, and the store
    # gives them back rather than refuse an allocation for want of room
    kept = []
    store = BlockStore("n1", 1, None, 1 * MiB, clock=Clock(), memory_fn=lambda: HostMemory(
        64 * MiB, 9 * MiB - sum(len(b) for b in kept if not b.closed), "test"))
    kept.append(_moved_away(store, 4 * MiB).buf)
    assert store.room() == 4 * MiB
    store.allocate(6 * MiB, lazy=False)
    assert kept[0].closed
    with pytest.raises(CapacityError):
        store.allocate(6 * MiB, lazy=False)


def test_close_gives_kept_pages_back():
    store, _ = _store()
    old = _moved_away(store, 2 * MiB)
    store.close()
    assert old.buf.closed
