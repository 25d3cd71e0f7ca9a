"""Capacity promises (issue 10, defect 4): the block store with an injected memory reading and a
real promise ledger file in a temporary directory. Allocations still being backed and lazy ones
count against the host, and agents sharing a host (one ledger) never promise the same RAM
twice. No processes, no sockets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agents.ledger import Others, PromiseLedger
from agents.lifecycle import Event
from agents.store import MAX_KEY_RECORD_BYTES, BlockStore, host_room
from mesh.errors import CapacityError, InvalidRequest
from mesh.hostmem import HostMemory

KiB, MiB = 1 << 10, 1 << 20


class Memory:
    def __init__(self, total: int, available: int):
        self.total, self.available = total, available

    def __call__(self) -> HostMemory:
        return HostMemory(self.total, self.available, "test")


def _store(mem: Memory, ledger: PromiseLedger | None = None, share: int | None = None,
           reserve: int = 1 * MiB, node: str = "n1") -> BlockStore:
    return BlockStore(node, 1, share, reserve, memory_fn=mem, ledger=ledger)


def _allocate_all(store: BlockStore, sizes: list[int], lazy: bool) -> list[int]:
    done = []
    for size in sizes:
        try:
            store.allocate(size, lazy=lazy)
        except CapacityError:
            continue
        done.append(size)
    return done


def test_allocations_still_being_backed_count_against_the_host():
    # The figure scaled down: four concurrent allocations against room for three. The
    # host's available RAM does not move until pages are backed, so it cannot be the only check.
    mem = Memory(total=64 * MiB, available=32 * MiB)
    store = _store(mem)
    done = _allocate_all(store, [10 * MiB] * 4, lazy=False)  # none populated yet
    assert done == [10 * MiB] * 3
    assert store.unbacked == 30 * MiB and store.room() == 1 * MiB


def test_a_backed_block_is_counted_once():
    mem = Memory(total=64 * MiB, available=32 * MiB)
    store = _store(mem)
    block = store.allocate(10 * MiB, lazy=False)
    block.advance(Event.POPULATED)
    mem.available -= 10 * MiB  # its pages now show as used on the host
    assert store.unbacked == 0 and store.room() == 21 * MiB


def test_lazy_promises_count_against_the_host():
    # A lazy block holds no pages yet, but will: the old store let 60 MiB of lazy blocks be
    # promised against 31 MiB of free RAM.
    mem = Memory(total=64 * MiB, available=32 * MiB)
    store = _store(mem)
    done = _allocate_all(store, [10 * MiB] * 8, lazy=True)
    assert len(done) == 3 and store.used == 30 * MiB == store.unbacked
    mem.available = 64 * MiB  # all free: the total less the reserve still bounds promises
    assert len(_allocate_all(store, [10 * MiB] * 8, lazy=True)) == 3 and store.used == 60 * MiB


def test_two_agents_on_one_host_share_its_ram(tmp_path):
    # Two agents of one host, one ledger: the second sees what the first promised.
    path = tmp_path / "promises.ledger"
    mem = Memory(total=64 * MiB, available=64 * MiB)
    a = _store(mem, PromiseLedger(path, "a", pid=os.getpid()), node="a")
    b = _store(mem, PromiseLedger(path, "b", pid=os.getppid()), node="b")
    a_done = _allocate_all(a, [8 * MiB] * 8, lazy=True)
    b_done = _allocate_all(b, [8 * MiB] * 8, lazy=True)
    assert sum(a_done) + sum(b_done) <= 63 * MiB
    assert sum(a_done) == 56 * MiB and b_done == []  # 63 - 56 = 7 MiB left: not 8
    assert b.room() == 7 * MiB
    for block in a.blocks()[:2]:  # a frees: b may take the room at once
        a.free(block.block_id)
    assert b.room() == 23 * MiB


def test_a_dead_agents_promises_are_ignored(tmp_path):
    path = tmp_path / "promises.ledger"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    dead = PromiseLedger(path, "dead", pid=dead_pid)
    dead.update(60 * MiB, 60 * MiB)
    mem = Memory(total=64 * MiB, available=64 * MiB)
    store = _store(mem, PromiseLedger(path, "live"))
    assert store.room() == 63 * MiB
    store.allocate(MiB, lazy=True)
    assert str(dead_pid) not in path.read_text()  # dropped at the next write


def test_host_room_rule():
    mem = HostMemory(total=100, available=50, source="t")
    assert host_room(mem, 10, 0, 0, Others()) == 40  # what is free now
    assert host_room(mem, 10, 60, 0, Others()) == 30  # promises over the total
    assert host_room(mem, 10, 20, 20, Others(10, 10)) == 10  # unbacked: still to come out
    assert host_room(mem, 10, 90, 0, Others(10, 0)) == 0  # never negative


def test_key_records_count_against_capacity():
    mem = Memory(total=64 * MiB, available=64 * MiB)
    store = _store(mem, share=1 * MiB)
    block = store.allocate(4 * KiB, lazy=True)
    rec = {"block": block.block_id, "offset": 0, "length": 1, "content_type": "bytes",
           "checksum": "", "owns_block": False, "meta": {"pad": "x" * (8 * KiB)}}
    stored = 0
    with pytest.raises(CapacityError, match="key"):
        for i in range(1000):
            store.put_key(f"k{i}", rec, False, 0.0)
            stored += 1
    assert 100 < stored < 130  # ~9 KiB a record in a 1 MiB share
    assert store.used <= 1 * MiB and store.key_bytes == store.used - 4 * KiB
    store.delete_key("k0")
    store.put_key("k0", rec, False, 0.0)  # its room came back
    assert "_bytes" not in store.get_key("k0")  # bookkeeping stays inside the store


def test_key_record_size_is_limited():
    store = _store(Memory(64 * MiB, 64 * MiB))
    block = store.allocate(4 * KiB, lazy=True)
    rec = {"block": block.block_id, "offset": 0, "length": 1, "content_type": "bytes",
           "checksum": "", "owns_block": False, "meta": {"pad": "x" * MAX_KEY_RECORD_BYTES}}
    with pytest.raises(InvalidRequest, match="limit"):
        store.put_key("big", rec, False, 0.0)
    with pytest.raises(InvalidRequest):
        store.put_key("k" * 1025, dict(rec, meta={}), False, 0.0)


def test_others_recounts_when_the_file_changes_and_asks_again_who_lives(tmp_path, monkeypatch):
    from agents import ledger as L

    path = tmp_path / "promises.ledger"
    me = PromiseLedger(path, "me")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = PromiseLedger(path, "other", pid=child.pid)
        other.update(5 * MiB, MiB)
        assert me.others() == Others(5 * MiB, MiB)
        other.update(6 * MiB, 0)  # a new line: counted at once
        assert me.others() == Others(6 * MiB, 0)
        child.kill()
        child.wait(10)
        assert me.others() == Others(6 * MiB, 0)  # the same text: the count of a moment ago
        monkeypatch.setattr(L, "RECHECK_S", 0.0)
        assert me.others() == Others()  # asked again: its process is gone
    finally:
        child.kill()
        child.wait(10)
