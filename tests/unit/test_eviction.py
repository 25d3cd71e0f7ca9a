"""Evicting cache keys (agents/eviction.py) over a real BlockStore with an injected memory
reading and clock: which key each policy picks, what is never evicted, the notes of evicted
keys and the evictable bytes. No processes, no sockets."""

from __future__ import annotations

import pytest

from agents.eviction import EVICTED_NOTES, Evictor
from agents.lifecycle import Event
from agents.store import BlockStore
from mesh.errors import CapacityError
from mesh.hostmem import HostMemory

KiB, MiB = 1 << 10, 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _setup(policy: str = "lru", share: int = 1 * MiB) -> tuple[BlockStore, Evictor, Clock]:
    clock = Clock()
    mem = lambda: HostMemory(64 * MiB, 32 * MiB, "test")  # noqa: E731
    store = BlockStore("n1", 1, share, 0, memory_fn=mem, clock=clock)
    return store, Evictor(store, "n1", policy, clock=clock), clock


def _put(store: BlockStore, ev: Evictor, clock: Clock, key: str, size: int = 200 * KiB,
         evictable: bool = True, owns: bool = True, ttl_s: float | None = None) -> str:
    clock.now += 1
    block = ev.making_room(lambda: store.allocate(size, lazy=False, ttl_s=ttl_s), size)
    block.advance(Event.POPULATED)
    rec = {"block": block.block_id, "offset": 0, "length": size, "content_type": "bytes",
           "checksum": "", "owns_block": owns, "meta": {}, "evictable": evictable}
    ev.making_room(lambda: store.put_key(key, rec, False, clock.now))
    ev.stored(key, evictable)
    return block.block_id


def _keys(store: BlockStore) -> set[str]:
    return {r["key"] for r in store.key_records()}


def test_lru_evicts_the_least_recently_used_until_the_new_block_fits():
    store, ev, clock = _setup()
    for k in "abcd":
        _put(store, ev, clock, k)  # 4 x 200 KiB of 1 MiB
    clock.now += 1
    ev.used("a")
    _put(store, ev, clock, "e", size=500 * KiB)  # ~220 KiB free: two must go, b then c
    assert _keys(store) == {"a", "d", "e"}
    assert ev.evictions == 2 and ev.evicted_bytes > 400 * KiB
    assert "was evicted from node n1" in ev.note_for("b") and ev.note_for("a") is None


def test_keys_not_evictable_blocks_and_borrowed_ranges_are_never_evicted():
    store, ev, clock = _setup()
    _put(store, ev, clock, "pinned", size=300 * KiB, evictable=False)
    raw = store.allocate(300 * KiB, lazy=False)
    raw.advance(Event.POPULATED)
    _put(store, ev, clock, "cache", size=300 * KiB)
    with pytest.raises(CapacityError):
        _put(store, ev, clock, "big", size=700 * KiB)  # evicting "cache" is not enough...
    assert {"pinned", "cache"} <= _keys(store)  # ...so nothing was evicted for nothing
    assert store.get(raw.block_id) is raw and ev.evictions == 0
    # a key naming a range of someone else's block is not the key's to free
    store.put_key("borrowed", {"block": raw.block_id, "offset": 0, "length": 10,
                               "content_type": "bytes", "checksum": "", "owns_block": False,
                               "meta": {}, "evictable": True}, False, clock.now)
    ev.stored("borrowed", True)
    assert ev.evict_one() is True and "cache" not in _keys(store)
    assert ev.evict_one() is False and "borrowed" in _keys(store)


def test_lfu_evicts_the_least_read_and_ttl_first_the_soonest_to_expire():
    store, ev, clock = _setup("lfu")
    for k in "abcd":
        _put(store, ev, clock, k)
    for k in "abd":
        ev.used(k)
    _put(store, ev, clock, "e", size=300 * KiB)
    assert "c" not in _keys(store) and {"a", "b", "d", "e"} <= _keys(store)

    store, ev, clock = _setup("ttl-first")
    _put(store, ev, clock, "old")
    _put(store, ev, clock, "late", ttl_s=3600)
    _put(store, ev, clock, "soon", ttl_s=60)
    _put(store, ev, clock, "never")
    _put(store, ev, clock, "e", size=300 * KiB)
    assert "soon" not in _keys(store) and "old" in _keys(store)


def test_a_key_replaced_by_one_not_evictable_or_deleted_is_forgotten():
    store, ev, clock = _setup()
    _put(store, ev, clock, "a")
    _put(store, ev, clock, "b")
    store.delete_key("a")
    ev.stored("b", False)  # (as a KPUT of a value not evictable tells it)
    assert ev.evictable_bytes() == 0 and ev.evict_one() is False


def test_evictable_bytes_and_a_bounded_memory_of_evictions():
    store, ev, clock = _setup()
    _put(store, ev, clock, "a")
    assert 200 * KiB < ev.evictable_bytes() < 202 * KiB
    for i in range(EVICTED_NOTES + 5):
        ev._evicted[f"k{i}"] = "lru"
        while len(ev._evicted) > EVICTED_NOTES:
            ev._evicted.popitem(last=False)
    assert ev.evict_one() and len(ev._evicted) == EVICTED_NOTES and ev.note_for("a")
    ev.stored("a", True)  # stored again: no longer "evicted"
    assert ev.note_for("a") is None


def test_full_nodes_that_can_evict_take_new_entries_in_turn_by_what_they_can_free():
    # the client's placement when no node has room (mesh/client/core.py): a random order
    # weighted by room + evictable bytes, so no one node's cache churns alone
    from mesh.client.core import _by_chance
    from mesh.membership import NodeInfo

    def node(name: str, evictable: int) -> NodeInfo:
        return NodeInfo(name, f"tcp://{name}:1", "alive", 1, 10 * MiB, 10 * MiB, 0, 0, 0, 0.0,
                        "", evictable=evictable)

    nodes = [node("a", 3 * MiB), node("b", 1 * MiB)]
    firsts = [_by_chance(nodes)[0].name for _ in range(4000)]
    assert sorted(n.name for n in _by_chance(nodes)) == ["a", "b"]
    assert 0.70 < firsts.count("a") / len(firsts) < 0.80  # 3:1 by what they can free
