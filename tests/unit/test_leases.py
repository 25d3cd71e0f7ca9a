"""Leases and times to live in the block store (agents/store.py), on a clock the test moves:
a pending block lives while requests name it, until a key publishes it; a ttl block goes when its
time is up; a block being backed is given more time; plain blocks live until freed."""

from __future__ import annotations

import pytest

from agents.lifecycle import Event, State
from agents.store import BlockStore
from mesh.errors import InvalidRequest
from mesh.hostmem import HostMemory


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _store() -> tuple[BlockStore, Clock]:
    clock = Clock()
    store = BlockStore("n1", 1, None, 0, memory_fn=lambda: HostMemory(1 << 30, 1 << 30, "t"),
                       lease_s=10.0, clock=clock)
    return store, clock


def _key(block_id: str) -> dict:
    return {"block": block_id, "offset": 0, "length": 1, "content_type": "bytes",
            "checksum": "", "owns_block": True, "meta": {}}


def test_a_pending_block_lives_while_it_is_renewed_then_goes():
    store, clock = _store()
    plain = store.allocate(4096, lazy=True)
    pending = store.allocate(4096, lazy=True, pending=True)
    assert pending.record("n1")["pending"] and not plain.record("n1")["pending"]
    for _ in range(5):
        clock.now += 8
        store.served(pending.block_id)  # a WRITE, STAT, READ or RENEW naming it
        assert store.sweep() == []
    clock.now += 10.5
    assert store.sweep() == [pending] and pending.state is State.FREED
    assert store.blocks() == [plain] and store.used == 4096


def test_publishing_a_key_ends_the_lease():
    store, clock = _store()
    block = store.allocate(4096, lazy=True, pending=True)
    store.put_key("k", _key(block.block_id), False, 0.0)
    assert not block.record("n1")["pending"]
    clock.now += 1000
    assert store.sweep() == [] and store.get_key("k")["block"] == block.block_id


def test_a_ttl_block_goes_when_its_time_is_up():
    store, clock = _store()
    block = store.allocate(4096, lazy=True, ttl_s=30.0)
    assert block.record("n1")["expires"] == pytest.approx(block.created + 30.0)
    clock.now += 29
    store.served(block.block_id)  # a ttl is not a lease: requests do not extend it
    assert store.sweep() == []
    clock.now += 2
    assert store.sweep() == [block]
    with pytest.raises(InvalidRequest):
        store.allocate(4096, lazy=True, ttl_s=0)


def test_a_block_still_being_backed_is_given_more_time():
    store, clock = _store()
    block = store.allocate(4096, lazy=False, pending=True)  # ALLOCATING: the client waits
    clock.now += 11
    assert store.sweep() == [] and block.state is State.ALLOCATING
    block.advance(Event.POPULATED)
    clock.now += 11
    assert store.sweep() == [block]
