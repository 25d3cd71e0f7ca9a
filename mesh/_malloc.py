"""Keep glibc from handing transfer buffers back to the kernel between chunks.

libzmq allocates a fresh buffer for every large message it receives, in its I/O thread's malloc
arena, and Python frees it on the main thread a moment later. With glibc's defaults the arena is
trimmed as soon as more than a few MiB are free, so the next chunk page-faults its whole buffer
in again: measured here, that alone cost 30-45 % of loopback throughput (README.md, "Performance").
Raising the mmap threshold to glibc's own dynamic maximum (32 MiB) and the trim threshold to a
bound derived from the transfer window keeps a few windows' worth of buffers warm.

Process-wide: the agent always calls it; the client calls it when it is built unless
``MESH_TUNE_MALLOC=0``. Does nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_done: tuple[int, int] | None = None


def tune_for_transfers(max_message_bytes: int, window: int) -> bool:
    """True when glibc accepted the settings."""
    global _done
    if os.environ.get("MESH_TUNE_MALLOC", "1") == "0":
        return False
    trim = max(64 * 1024 * 1024, 2 * window * max_message_bytes)
    mmap_threshold = _MMAP_THRESHOLD_MAX
    if _done is not None and _done[1] >= trim:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    if ok:
        _done = (mmap_threshold, trim)
    return ok
