"""Backing a block's memory: ``populate`` touches every page of a new block (off the loop, so the
allocation is really backed before it is acknowledged), ``advise_huge`` asks for transparent huge
pages, ``Retained`` keeps the memory of a block that moved away for a few seconds so that a copy
moving in can land in pages that are already there. Used by ``agents/store.py`` and the agent's
populate thread (``agents/server.py``).

Why ``Retained``: on the VMs we measured, backing fresh memory is most of what a move costs the
target (``tools/bench.py move``: a 1 GiB pull took 0.8-0.95 s into fresh pages, 0.45-0.6 s into
pages already backed, the populate thread's 0.35-1.2 s of page faults being the difference). The
host also takes back guest memory freed a few seconds ago (free page reporting), so memory a
process has not touched lately costs host faults on top: the first copy into a fresh agent is the
slowest. Only a copy moving in reuses a retained mapping: it overwrites every byte before anyone
may read it (an incoming block is not served, a failed pull drops it), so old bytes never show.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from typing import Any

RETAIN_S = 5.0  # a moved-away block's memory waits this long for a copy moving in
RETAIN_MAPPINGS = 2  # at most this many wait at once (the oldest goes first)

MADV_POPULATE_WRITE = 23  # Linux 5.14+
MADV_HUGEPAGE = 14
HUGE_PAGE = 2 * 1024 * 1024
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


def advise_huge(buf: mmap.mmap) -> None:
    """Ask for transparent huge pages: backing a new block runs about 8x faster with 2 MiB pages
    than with 4 KiB ones on the VMs we measured (1.4 -> 12 GB/s). Only for allocations, whose
    pages are backed in a worker thread: a copy arriving in a moved block ran 0.6-2.9 s per GiB
    into huge pages against a steady 1.0-1.2 s into small ones: huge pages freed a few seconds
    earlier have gone back to the host (free page reporting), and backing them again ran at
    1.6-3.8 s per GiB against 0.1 s when reused at once. Where THP is off, the kernel ignores
    it; nothing depends on it."""
    anchor = ctypes.c_char.from_buffer(buf)
    try:
        _libc.madvise(ctypes.addressof(anchor), len(buf), MADV_HUGEPAGE)
    finally:
        del anchor


def populate(block: Any) -> None:
    """Touch every page of ``block`` (a ``Block``: ``buf``, ``view``, ``size``) so the allocation
    is really backed (runs off the loop)."""
    if block.size == 0:
        return
    anchor = ctypes.c_char.from_buffer(block.buf)
    try:
        rc = _libc.madvise(ctypes.addressof(anchor), block.size, MADV_POPULATE_WRITE)
    finally:
        del anchor
    if rc != 0:  # older kernel: touch one byte a page (slow, but correct)
        view = block.view
        for off in range(0, block.size, PAGE):
            view[off] = 0


class Retained:
    """Mappings of blocks that moved away, kept up to ``RETAIN_S`` for a copy moving in of the
    same size (``take``). They are this process's pages, promised to nobody: the store drops
    them (``drop``) before it refuses an allocation for lack of room, and ``expire`` (the
    heartbeat's sweep) gives back the ones nobody took."""

    def __init__(self) -> None:
        self._maps: list[tuple[float, int, mmap.mmap]] = []  # (kept at, size, mapping), oldest first

    @property
    def nbytes(self) -> int:
        return sum(size for _, size, _ in self._maps)

    def keep(self, block: Any, now: float) -> bool:
        """Keep ``block``'s mapping (``buf``, ``view``, ``size``); False when something still
        holds its bytes (a zero-copy send in flight), which the caller then releases as usual."""
        try:
            block.view.release()
            # slices of the view keep the mapping exported after ``release``; mmap has no way
            # to ask but this: resizing to its own size refuses while anything is exported
            block.buf.resize(block.size)
        except (BufferError, OSError, SystemError, ValueError):
            return False
        self._maps.append((now, block.size, block.buf))
        while len(self._maps) > RETAIN_MAPPINGS:
            _close(self._maps.pop(0)[2])
        return True

    def take(self, size: int) -> mmap.mmap | None:
        """The newest kept mapping of ``size`` bytes (its pages backed, its bytes stale), or None."""
        for i in range(len(self._maps) - 1, -1, -1):
            if self._maps[i][1] == size:
                return self._maps.pop(i)[2]
        return None

    def expire(self, now: float) -> None:
        while self._maps and now - self._maps[0][0] >= RETAIN_S:
            _close(self._maps.pop(0)[2])

    def drop(self) -> None:
        while self._maps:
            _close(self._maps.pop()[2])


def _close(buf: mmap.mmap) -> None:
    try:
        buf.close()
    except BufferError:  # still exported somewhere: the last holder's release unmaps it
        pass
