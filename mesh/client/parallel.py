"""A large write or read of one block over several connections at once.

A client with more than one core (``mesh/client/pool.py``) cuts a block range of at least
``parts_for``'s threshold (two full windows of chunks per part) into contiguous parts (at
most ``MAX_PARTS``), one per core it could borrow without waiting, and runs ``Core.write`` / ``Core.read_into`` on each part
side by side (``gather``): each core has its own link to the agent, so the parts travel on
separate connections. Each part follows the block on its own (``Core.follow_block``); the first
error stops the others. With one core it is the plain operation.

Not here: the chunk window of one connection (``mesh/client/batch.py``), chunking and following
(``mesh/client/transfer.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

from mesh.client.batch import Op, byte_view
from mesh.client.core import Core
from mesh.client.pool import gather
from mesh.errors import InvalidSize, OutOfRange


# libzmq I/O threads of a client's context (mesh/client/drivers.py), and the most parts a
# transfer is cut into: with one I/O thread every connection's bytes pass through that thread,
# so more connections cannot move more. Measured on 2 busy cores (1 GiB to one agent, medians
# of 6, A/B in one process; other jobs running, so within noise): one I/O thread, 1/2/4
# connections 3.18/3.41/2.68 GB/s write, 3.22/3.06/3.00 read; two, 3.16/2.39/2.50 and
# 2.80/2.83/2.79 in one run, 2.50/2.77/2.82 and 2.26/3.01/2.65 in another.
IO_THREADS = 2
MAX_PARTS = 2


def parts_for(core: Core, nbytes: int) -> int:
    """How many connections a transfer of ``nbytes`` is worth: one per two windows of chunks,
    at most ``MAX_PARTS`` and ``mesh.client_connections``. One on the direct path (a cluster
    without keys): one stream already runs at the raw stream's speed, and two parts read slower
    (1 GiB, one process, three rounds: 4.80-5.08 GB/s in one part, 4.34-4.74 in two)."""
    if core.direct.enabled:
        return 1
    per_part = 2 * core.settings.chunk_bytes * core.settings.window
    return max(1, min(MAX_PARTS, core.settings.client_connections, nbytes // per_part))


def _cuts(n: int, parts: int, align: int) -> list[tuple[int, int]]:
    """``parts`` (start, length) ranges covering ``n`` bytes, cut at multiples of ``align``."""
    step = -(-n // parts)
    step = -(-step // align) * align
    return [(i, min(step, n - i)) for i in range(0, n, step)]


def write(cores: Sequence[Core], block_id: str, data: Any, offset: int = 0) -> Op:
    view = byte_view(data)
    if len(cores) == 1 or view.nbytes == 0:
        return (yield from cores[0].write(block_id, view, offset))
    cuts = _cuts(view.nbytes, len(cores), cores[0].settings.chunk_bytes)
    yield from gather([core.write(block_id, view[i : i + n], offset + i)
                       for core, (i, n) in zip(cores, cuts)])
    return view.nbytes


def read_into(cores: Sequence[Core], block_id: str, buffer: Any, offset: int = 0,
              size: int | None = None) -> Op:
    out = byte_view(buffer, writable=True)
    n = out.nbytes if size is None else size
    if len(cores) == 1 or n <= 0 or n > out.nbytes:  # the core says what is wrong, if anything
        return (yield from cores[0].read_into(block_id, out, offset, size))
    _, block_size = yield from cores[0].locate(block_id)
    if not isinstance(offset, int) or offset < 0 or offset + n > block_size:
        return (yield from cores[0].read_into(block_id, out, offset, size))
    cuts = _cuts(n, len(cores), cores[0].settings.chunk_bytes)
    yield from gather([core.read_into(block_id, out[i : i + k], offset + i, k)
                       for core, (i, k) in zip(cores, cuts)])
    return n


def read(cores: Sequence[Core], block_id: str, size: int | None = None, offset: int = 0) -> Op:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidSize(f"read size must be a whole number >= 0, got {size!r}")
    if len(cores) == 1 or isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        return (yield from cores[0].read(block_id, size, offset))
    _, block_size = yield from cores[0].locate(block_id)
    n = block_size - offset if size is None else size
    if n < 0:
        raise OutOfRange(f"offset {offset} is past the end of block {block_id} "
                         f"({block_size} bytes)")
    out = bytearray(n)
    yield from read_into(cores, block_id, out, offset, n)
    return out
