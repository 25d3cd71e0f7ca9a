"""Cursor paging of the agent's listings (agents/paging.py) and the store's pages of blocks and
keys: every entry exactly once across pages, bounded pages, freed entries skipped."""

from __future__ import annotations

from agents.paging import SeqIndex
from agents.store import BlockStore
from mesh.hostmem import HostMemory


def _all_pages(index: SeqIndex, live: dict, limit: int, **kw) -> tuple[list, int]:
    out, after, pages = [], 0, 0
    while True:
        items, after = index.page(after, limit, lambda n, s: n if live.get(n) == s else None, **kw)
        out += items
        pages += 1
        if after is None:
            return out, pages


def test_every_entry_once_in_order_across_pages():
    index, live = SeqIndex(), {}
    for i in range(2500):
        live[f"b{i}"] = index.add(f"b{i}")
    out, pages = _all_pages(index, live, 1000)
    assert out == [f"b{i}" for i in range(2500)] and pages == 3


def test_freed_entries_are_skipped_and_new_ones_come_last():
    index, live = SeqIndex(), {}
    for i in range(100):
        live[f"b{i}"] = index.add(f"b{i}")
    first, cursor = index.page(0, 10, lambda n, s: n if live.get(n) == s else None)
    assert first == [f"b{i}" for i in range(10)]
    del live["b5"], live["b50"]
    live["b3"] = index.add("b3")  # freed and stored again: listed once, at its new place
    live["new"] = index.add("new")
    rest = []
    while cursor is not None:
        items, cursor = index.page(cursor, 10, lambda n, s: n if live.get(n) == s else None)
        rest += items
    assert "b50" not in rest and rest[-2:] == ["b3", "new"] and len(rest) == 90 - 1 + 2


def test_a_page_stops_at_its_byte_bound_and_its_scan_bound():
    index, live = SeqIndex(), {}
    for i in range(100):
        live[f"k{i}"] = index.add(f"k{i}")
    items, cursor = index.page(0, 1000, lambda n, s: n, cost=lambda _: 100, max_bytes=1000)
    assert len(items) == 10 and cursor == 10
    for i in range(90):
        del live[f"k{i}"]
    items, cursor = index.page(0, 5, lambda n, s: n if live.get(n) == s else None, scan=20)
    assert items == [] and cursor == 20  # bounded work: go on from there
    index.compact(len(live), lambda n, s: n if live.get(n) == s else None)
    assert len(index) == 100  # few entries: compaction waits until the dead outnumber the live


def test_store_pages_list_only_served_blocks():
    store = BlockStore("n1", 1, None, 0, memory_fn=lambda: HostMemory(1 << 30, 1 << 30, "t"))
    ready = [store.allocate(4096, lazy=True) for _ in range(5)]
    store.allocate(4096, lazy=False)  # still being backed: not listed
    blocks, cursor = store.list_blocks(0, 3)
    assert blocks == ready[:3]
    blocks, cursor = store.list_blocks(cursor, 3)
    assert blocks == ready[3:] and cursor is None
