"""Cursor paging for the agent's listings (LIST, KLIST): bounded work per request.

Each block or key gets a sequence number when it is stored here (``SeqIndex.add``); a listing
asks for the entries after a cursor (the last sequence number it saw, 0 to start) and gets at
most one page of them plus the cursor to continue from (``None`` at the end). A page stops at
``limit`` entries, at ``max_bytes`` of their cost, or after looking at ``scan`` index slots
(entries freed since are skipped), so answering one never holds the loop for long, whatever the
number of blocks. Entries added while a listing runs come after its cursor and are listed;
entries freed before the listing reaches them are not.

Pure: no I/O. The store (``agents/store.py``) owns the index and says which entries still exist;
the limits are in ``mesh/protocol.py`` (``LIST_PAGE_RECORDS``, ``LIST_PAGE_BYTES``).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Callable


class SeqIndex:
    """Names in the order they were stored, each with its sequence number."""

    def __init__(self) -> None:
        self._seqs: list[int] = []
        self._names: list[str] = []
        self._next = 1

    def add(self, name: str) -> int:
        seq = self._next
        self._next += 1
        self._seqs.append(seq)
        self._names.append(name)
        return seq

    def __len__(self) -> int:
        return len(self._seqs)

    def page(self, after: int, limit: int, current: Callable[[str, int], Any | None],
             cost: Callable[[Any], int] = lambda _: 0, max_bytes: int | None = None,
             scan: int | None = None) -> tuple[list[Any], int | None]:
        """Up to ``limit`` items after ``after``: ``current(name, seq)`` gives the item still
        stored under that sequence number, or None (freed, or stored again later)."""
        scan = scan if scan is not None else 4 * limit + 1024
        items: list[Any] = []
        total = 0
        i = bisect_right(self._seqs, after)
        end = min(len(self._seqs), i + scan)
        while i < end:
            item = current(self._names[i], self._seqs[i])
            i += 1
            if item is None:
                continue
            items.append(item)
            total += cost(item)
            if len(items) >= limit or (max_bytes is not None and total >= max_bytes):
                break
        if i >= len(self._seqs):
            return items, None
        return items, self._seqs[i - 1]

    def compact(self, live: int, current: Callable[[str, int], Any | None]) -> None:
        """Drop the slots of entries that are gone, once they outnumber the live ones."""
        if len(self._seqs) <= 2 * live + 1024:
            return
        keep = [(s, n) for s, n in zip(self._seqs, self._names) if current(n, s) is not None]
        self._seqs = [s for s, _ in keep]
        self._names = [n for _, n in keep]
