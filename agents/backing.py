"""Backing a block's memory: ``populate`` touches every page of a new block (off the loop, so the
allocation is really backed before it is acknowledged), ``advise_huge`` asks for transparent huge
pages, ``shared_memory`` makes a block a memfd that a client on this machine can map (the
same-host path, ``agents/local.py``) and ``give_back`` returns its pages when it is freed. Used
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


def shared_memory(size: int, name: str) -> tuple[mmap.mmap, int]:
    """A block's memory as a memfd (an anonymous file in RAM) mapped shared, and its descriptor:
    the same-host path hands the descriptor to a client on this machine, which maps the same
    pages (``agents/local.py``). Backing it runs about as fast as anonymous memory here (1 GiB:
    0.56-0.60 s against 0.30-0.32 s with 4 KiB pages and 0.56-1.9 s with huge pages)."""
    fd = os.memfd_create(name[:200], os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED), fd
    except BaseException:
        os.close(fd)
        raise


def give_back(fd: int, size: int) -> None:
    """Return a freed memfd block's pages to the host at once, even while a client still maps
    it (a client touching it again would only see zeros, never another block's bytes), and
    close the agent's descriptor."""
    try:
        _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size)
    finally:
        os.close(fd)
