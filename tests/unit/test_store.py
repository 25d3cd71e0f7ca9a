"""The agent's block store (agents/store.py) with an injected memory reading: capacity and room,
allocation and free, keys, bounds, and the refusals a block's state brings. No processes, no
sockets (blocks are small anonymous mmaps)."""

from __future__ import annotations

import pytest

from agents.lifecycle import Event, IllegalTransition, State
from agents.store import MOVED_NOTES, BlockStore
from mesh.errors import (
    BlockMoving,
    BlockNotFound,
    CapacityError,
    InvalidRequest,
    InvalidSize,
    KeyExists,
    KeyNotFound,
    OutOfRange,
)
from mesh.hostmem import HostMemory

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class Memory:
    """A host whose RAM the test sets; the store reads it through ``memory_fn``."""

    def __init__(self, total: int, available: int):
        self.total, self.available = total, available

    def __call__(self) -> HostMemory:
        return HostMemory(self.total, self.available, "test")


def _store(share: int | None = 8 * MiB, reserve: int = 1 * MiB, total: int = 64 * MiB,
           available: int = 32 * MiB, on_free=None) -> tuple[BlockStore, Memory]:
    mem = Memory(total, available)
    return BlockStore("n1", 12345, share, reserve, memory_fn=mem, on_free=on_free), mem


def _ready(store: BlockStore, size: int = 64 * KiB):
    block = store.allocate(size, lazy=False)
    block.advance(Event.POPULATED)
    return block


def _key(block_id: str, offset: int = 0, length: int = 10, owns: bool = False) -> dict:
    return {"block": block_id, "offset": offset, "length": length, "content_type": "bytes",
            "checksum": "", "owns_block": owns, "meta": {}}


# --- capacity and room ------------------------------------------------------------------------


def test_capacity_is_the_share_or_the_host_less_its_reserve():
    store, mem = _store(share=8 * MiB, reserve=1 * MiB, total=64 * MiB)
    assert store.capacity_for(mem()) == 8 * MiB
    assert store.capacity_for(HostMemory(5 * MiB, 5 * MiB, "t")) == 4 * MiB  # host is tighter
    unlimited, mem = _store(share=None, reserve=1 * MiB, total=64 * MiB)
    assert unlimited.capacity_for(mem()) == 63 * MiB == unlimited.capacity
    assert unlimited.capacity_for(HostMemory(MiB // 2, 0, "t")) == 0  # never negative


def test_room_is_the_tighter_of_share_left_and_host_available():
    store, mem = _store(share=8 * MiB, reserve=1 * MiB, available=32 * MiB)
    assert store.room() == 8 * MiB
    _ready(store, 3 * MiB)
    assert store.room() == 5 * MiB
    mem.available = 3 * MiB  # the host filled up under us: available less the reserve
    assert store.room() == 2 * MiB
    assert store.room(HostMemory(64 * MiB, 0, "t")) == 0  # a reading passed in is used as is


def test_allocate_over_room_is_a_capacity_error():
    store, _ = _store(share=8 * MiB)
    with pytest.raises(CapacityError, match="node n1 has room for"):
        store.allocate(8 * MiB + 1, lazy=True)
    block = store.allocate(8 * MiB, lazy=True)
    assert store.used == 8 * MiB and store.room() == 0
    with pytest.raises(CapacityError):
        store.allocate(1, lazy=True)
    store.free(block.block_id)
    assert store.used == 0 and store.room() == 8 * MiB


@pytest.mark.parametrize("size", [0, -1])
def test_allocate_refuses_sizes_that_are_not_positive(size):
    store, _ = _store()
    with pytest.raises(InvalidSize):
        store.allocate(size, lazy=True)


# --- blocks -----------------------------------------------------------------------------------


def test_new_blocks_start_in_the_state_of_how_they_were_made():
    store, _ = _store()
    assert store.allocate(KiB, lazy=False).state is State.ALLOCATING
    assert store.allocate(KiB, lazy=True).state is State.READY
    copy = store.allocate(KiB, lazy=True, block_id="block_7_n2_x", created=5.0)
    assert copy.state is State.INCOMING and copy.block_id == "block_7_n2_x" and copy.created == 5.0
    with pytest.raises(InvalidRequest, match="already exists"):
        store.allocate(KiB, lazy=True, block_id="block_7_n2_x")
    assert len(store) == 3 and store.used == 3 * KiB


def test_free_gives_used_back_and_forgets_the_block():
    freed: list[str] = []
    store, _ = _store(on_free=freed.append)
    a, b = _ready(store, 100 * KiB), _ready(store, 28 * KiB)
    assert store.used == 128 * KiB
    assert store.free(a.block_id) is a
    assert store.used == 28 * KiB and a.state is State.FREED and freed == [a.block_id]
    with pytest.raises(BlockNotFound):
        store.get(a.block_id)
    with pytest.raises(BlockNotFound):
        store.free(a.block_id)
    assert [x.block_id for x in store.blocks()] == [b.block_id]


def test_a_block_is_not_served_until_it_is_ready():
    store, _ = _store()
    allocating = store.allocate(KiB, lazy=False)
    incoming = store.allocate(KiB, lazy=False, block_id="moving_in")
    for block in (allocating, incoming):
        with pytest.raises(BlockNotFound, match="still being allocated"):
            store.served(block.block_id)
    allocating.advance(Event.POPULATED)
    assert store.served(allocating.block_id) is allocating
    incoming.advance(Event.COPIED)
    with pytest.raises(BlockNotFound):
        store.served("moving_in")  # arrived, but not committed
    incoming.advance(Event.COMMIT)
    assert store.served("moving_in") is incoming


def test_check_range():
    store, _ = _store()
    block = _ready(store, 100)
    store.check_range(block, 0, 100)
    store.check_range(block, 100, 0)
    store.check_range(block, 37, 63)
    for offset, length in ((0, 101), (99, 2), (100, 1), (-1, 1), (0, -1)):
        with pytest.raises(OutOfRange):
            store.check_range(block, offset, length)


# --- keys -------------------------------------------------------------------------------------


def test_keys_point_into_blocks():
    store, _ = _store()
    block = _ready(store, 100)
    rec = store.put_key("k", _key(block.block_id, 10, 20), replace=False, now=7.0)
    assert rec["block"] == block.block_id and rec["offset"] == 10 and rec["length"] == 20
    assert rec["node"] == "n1" and rec["created"] == 7.0 and rec["key"] == "k"
    assert store.get_key("k") == rec and store.key_records(block.block_id) == [rec]
    with pytest.raises(OutOfRange):
        store.put_key("past-end", _key(block.block_id, 90, 20), False, 0.0)
    with pytest.raises(BlockNotFound):
        store.put_key("nowhere", _key("block_x"), False, 0.0)
    with pytest.raises(KeyExists):
        store.put_key("k", _key(block.block_id), replace=False, now=0.0)
    with pytest.raises(InvalidRequest):
        store.put_key("bad", {**_key(block.block_id), "offset": "0"}, False, 0.0)
    with pytest.raises(InvalidRequest):
        store.put_key("", _key(block.block_id), False, 0.0)
    empty = store.put_key("empty", _key("", 0, 0), False, 0.0)  # a 0-byte object needs no block
    assert empty["block"] == ""


def test_freeing_a_block_drops_its_keys():
    store, _ = _store()
    a, b = _ready(store, 100), _ready(store, 100)
    store.put_key("a1", _key(a.block_id), False, 0.0)
    store.put_key("a2", _key(a.block_id, 50), False, 0.0)
    store.put_key("b1", _key(b.block_id), False, 0.0)
    store.free(a.block_id)
    assert [r["key"] for r in store.key_records()] == ["b1"]
    with pytest.raises(KeyNotFound):
        store.get_key("a1")


def test_a_key_that_owns_its_block_frees_it():
    store, _ = _store()
    a, b = _ready(store, 100), _ready(store, 100)
    store.put_key("k", _key(a.block_id, owns=True), False, 0.0)
    store.put_key("k", _key(b.block_id, owns=True), replace=True, now=0.0)  # a is freed
    # ``used`` counts key records too (issue 10, defect 3): the block's 100 bytes plus one record
    assert a.state is State.FREED and store.used - store.key_bytes == 100 and store.key_bytes > 0
    assert store.delete_key("k") is True and b.state is State.FREED and store.used == 0
    c = _ready(store, 100)
    store.put_key("shared", _key(c.block_id), False, 0.0)
    assert store.delete_key("shared") is False and c.state is State.READY


def test_moving_blocks_refuse_changes_but_stay_served():
    store, _ = _store()
    block = _ready(store, 100)
    store.put_key("k", _key(block.block_id, owns=True), False, 0.0)
    other = _ready(store, 100)
    for event in (Event.MOVE, Event.HAND_OVER):
        block.advance(event)
        assert store.served(block.block_id) is block
        with pytest.raises(BlockMoving, match="being moved off node n1"):
            store.check_still(block)
        with pytest.raises(BlockMoving):
            store.free(block.block_id)
        with pytest.raises(BlockMoving):
            store.put_key("k2", _key(block.block_id), False, 0.0)
        with pytest.raises(BlockMoving):  # replacing a key of a moving block
            store.put_key("k", _key(other.block_id), True, 0.0)
        with pytest.raises(BlockMoving):
            store.delete_key("k")
    assert store.get_key("k")["block"] == block.block_id and "k2" not in {
        r["key"] for r in store.key_records()}
    block.advance(Event.MOVE_FAILED)  # the original stays, and takes changes again
    store.check_still(block)
    store.put_key("k2", _key(block.block_id), False, 0.0)


def test_a_block_that_moved_away_leaves_a_forwarding_note():
    store, _ = _store()
    block = _ready(store, 100)
    store.put_key("k", _key(block.block_id), False, 0.0)
    block.advance(Event.MOVE)
    with pytest.raises(IllegalTransition):
        store.free(block.block_id, Event.MOVED_AWAY)  # only once COMMIT was sent
    block.advance(Event.HAND_OVER)
    store.free(block.block_id, Event.MOVED_AWAY, moved_to="n2")
    assert store.used == 0 and store.key_records() == []
    with pytest.raises(BlockNotFound, match="moved from node n1 to n2"):
        store.served(block.block_id)
    with pytest.raises(BlockNotFound, match="not found"):
        store.served("block_never_here")


def test_forwarding_notes_are_bounded(monkeypatch):
    import agents.store

    monkeypatch.setattr(agents.store, "MOVED_NOTES", 2)
    assert MOVED_NOTES > 2
    store, _ = _store()
    ids = []
    for _ in range(3):
        block = _ready(store, 10)
        block.advance(Event.MOVE)
        block.advance(Event.HAND_OVER)
        store.free(block.block_id, Event.MOVED_AWAY, moved_to="n2")
        ids.append(block.block_id)
    with pytest.raises(BlockNotFound, match="not found on node n1"):
        store.served(ids[0])  # the oldest note went
    with pytest.raises(BlockNotFound, match="moved from"):
        store.served(ids[2])


def test_free_only_takes_events_the_state_allows():
    store, _ = _store()
    block = _ready(store, 10)
    with pytest.raises(IllegalTransition):
        store.free(block.block_id, Event.DROP)  # DROP is for copies moving in
    with pytest.raises(IllegalTransition):
        store.free(block.block_id, Event.MOVE)  # does not free at all
    assert block.state is State.READY and store.used == 10
    copy = store.allocate(10, lazy=False, block_id="in")
    with pytest.raises(BlockNotFound, match="still being allocated"):
        store.free("in")  # a client cannot free a copy that is not served
    store.free("in", Event.DROP)
    assert copy.state is State.FREED and store.used == 10


def test_adopt_keys_takes_all_of_a_commits_keys_or_none():
    store, _ = _store()
    copy = store.allocate(100, lazy=False, block_id="in")
    copy.advance(Event.COPIED)
    old = _ready(store, 100)
    store.put_key("k1", _key(old.block_id, owns=True), False, 0.0)
    good = {**_key("in", 0, 10), "key": "k1", "created": 3.0}
    bad = {**_key("in", 95, 10), "key": "k2"}  # past the end
    with pytest.raises(OutOfRange):
        store.adopt_keys(copy, [good, bad], now=9.0)
    assert store.get_key("k1")["block"] == old.block_id  # nothing taken
    with pytest.raises(InvalidRequest, match="key records sent with block .* must name it"):
        store.adopt_keys(copy, [{**good, "block": old.block_id}], now=9.0)
    with pytest.raises(InvalidRequest):
        store.adopt_keys(copy, ["not a record"], now=9.0)
    store.adopt_keys(copy, [good, {**_key("in", 10, 10), "key": "k2"}], now=9.0)
    assert store.get_key("k1")["created"] == 3.0 and store.get_key("k2")["created"] == 9.0
    assert old.state is State.FREED  # k1 owned it and now names the copy


def test_close_frees_every_block_whatever_its_state():
    freed: list[str] = []
    store, _ = _store(on_free=freed.append)
    blocks = [store.allocate(10, lazy=False), _ready(store, 10),
              store.allocate(10, lazy=False, block_id="in")]
    blocks[1].advance(Event.MOVE)
    store.close()
    assert store.used == 0 and len(store) == 0
    assert all(b.state is State.FREED for b in blocks) and len(freed) == 3
