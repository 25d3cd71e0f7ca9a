"""Backing a block's memory: ``populate`` touches every page of a new block (off the loop, so the
allocation is really backed before it is acknowledged), ``advise_huge`` asks for transparent huge
pages, ``block_memory`` maps a block (a memfd that a client on this machine can map, for the
same-host path of ``agents/local.py``, or anonymous memory) and ``release_memfd`` returns a
memfd's pages when its block is freed. Used
by ``agents/store.py`` and the agent's populate thread (``agents/server.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from typing import Any

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
    if getattr(block, "fd", -1) >= 0:
        # a memfd: its pages allocated in the kernel, in one call. Twice as fast as faulting
        # them in through the mapping, and a copy landing at the same time (a move's) is not
        # held up: 1 GiB populated while 2 MiB chunks were copied in, 0.39-0.46 s against
        # 0.66 s through the mapping (anonymous memory: 0.30-0.35 s).
        os.posix_fallocate(block.fd, 0, block.size)
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


FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int
# Blocks under this stay anonymous memory: their operations travel inline (mesh/localwire.py),
# and a memfd costs a descriptor for the block's whole life.
SHARED_MIN = 1 << 20


class Memfds:
    """How many blocks hold a memfd, at most ``budget`` (the descriptors the agent can spare
    beside its connections: ``memfd_budget``); past it, new blocks are anonymous memory."""

    def __init__(self, budget: int = 0):
        self.budget, self.open = budget, 0


MEMFDS = Memfds()


def memfd_budget(fd_limit: int, connections: int, reserve: int) -> int:
    if fd_limit < 0:  # RLIM_INFINITY
        return 1 << 20
    return max(0, fd_limit - connections - reserve)


def block_memory(size: int, shared: bool) -> tuple[mmap.mmap, int]:
    """A block's memory and its descriptor. ``shared`` (and the block at least ``SHARED_MIN``,
    and a descriptor to spare): a memfd (an anonymous file in RAM) mapped shared, which the
    same-host path hands to a client on this machine to map the same pages
    (``agents/local.py``); backing it runs about as fast as anonymous memory here (1 GiB:
    0.56-0.60 s against 0.30-0.32 s with 4 KiB pages and 0.56-1.9 s with huge pages).
    Otherwise anonymous memory, and -1."""
    if shared and size >= SHARED_MIN and MEMFDS.open < MEMFDS.budget:
        try:
            fd = os.memfd_create("mesh-block", os.MFD_CLOEXEC)
        except OSError:  # out of descriptors after all: anonymous, as past the budget
            fd = -1
        if fd >= 0:
            try:
                os.ftruncate(fd, size)
                buf = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            except BaseException:
                os.close(fd)
                raise
            MEMFDS.open += 1
            return buf, fd
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE), -1


def release_memfd(fd: int, size: int, punch: bool) -> None:
    """Close a freed block's memfd (-1: none). ``punch``: first give its pages back to the host
    at once, even while a client still maps it (a client touching it again would only see
    zeros, never another block's bytes); not while a zero-copy send may still read them."""
    if fd < 0:
        return
    MEMFDS.open -= 1
    try:
        if punch:
            _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size)
    finally:
        os.close(fd)
