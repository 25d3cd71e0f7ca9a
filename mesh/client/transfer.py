"""How the client moves bytes: the one chunking helper, the one "follow the block" policy, and the
ring of chunk buffers that streams a range of any size in a few buffers' worth of memory.

- ``chunk_calls``: the READ or WRITE ``Call``s for a block range laid over a sequence of buffers
  (read into them or written from them), at most ``chunk_bytes`` each, with an optional
  per-chunk callback. Every chunked transfer of the client is cut here: ``Core.write`` and
  ``Core.read_into`` (``mesh/client/core.py``), the writers and readers of named objects
  (``mesh/client/objects.py``) and the streams below.
- ``follow``: run an operation where a block (or a key's block) is, and follow the block when it
  moves (rebalancing and draining move blocks between agents; the id stays the same). "Moving"
  waits ``MOVING_RETRY_S`` and tries again, "not found" forgets the cached place and looks again,
  until the block is found nowhere or ``timeout_s`` passes without progress. Every reader and
  writer goes through it: the block operations of ``Core`` (``follow_block``), ``Core.call``'s
  wait while a block moves, and the key reads and streams of ``mesh/client/objects.py``.
- ``ChunkRing``, ``StreamRead``, ``stream_write``: files go through a ring of chunk buffers.
  A ``StreamRead`` hands chunks to its sink in order and remembers how far it got, so after a
  move it resumes at the first byte not yet delivered and its running checksum goes on
  (``mesh/checksum.py``: the algorithm of the record it is checked against, xxh3 by default).

Pure apart from what the given ``core`` does: no sockets here. Not here: the batch window and
reply matching (``mesh/client/batch.py``), sockets and block locations (``mesh/client/core.py``),
key records (``mesh/client/objects.py``), the agent's side of a move (``agents/moves.py``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator

from mesh import checksum as C
from mesh import protocol as P
from mesh.client.batch import Batch, Call, Op, Wait
from mesh.errors import BlockMoving, BlockNotFound, InvalidRequest, NodeUnavailable, NotCurrent, \
    OutOfRange

if TYPE_CHECKING:
    from mesh.client.core import Core

MOVING_RETRY_S = 0.02  # how soon a request refused during a block's hand-over is tried again
NOT_CURRENT_RETRY_S = 0.05  # ... and one refused by a copy of a replicated block that can't serve
# A replicated block whose primary stopped answering is tried again at its other copies for
# this long (they take over once the mesh has declared the primary dead: mesh.dead_after_s).
FAILOVER_S = 15.0

Progress = Callable[[int], None] | None
# (the call, where its chunk starts from the start of the range, the chunk's buffer)
OnChunk = Callable[[Call, int, memoryview], None]


def check_offset(offset: Any) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise InvalidRequest(f"offset must be a whole number of bytes, got {offset!r}")
    if offset < 0:
        raise OutOfRange(f"offset must be >= 0, got {offset}")


def chunk_calls(op: str, address: str, block_id: str, offset: int,
                buffers: Iterable[memoryview], chunk_bytes: int,
                on_done: OnChunk | None = None) -> Iterator[Call]:
    """The ``op`` (READ or WRITE) calls for the range of ``block_id`` starting at ``offset`` and
    laid over ``buffers`` back to back: a READ's reply lands in its piece of a buffer, a WRITE
    sends its piece. ``buffers`` may be lazy (a ring hands out a buffer when the window has
    room for its call). ``on_done`` runs as each call succeeds or fails."""
    reading = op == P.READ
    pos = 0
    for buf in buffers:
        for i, n in P.chunk_ranges(buf.nbytes, chunk_bytes):
            piece = buf[i : i + n]
            fields = {"block": block_id, "offset": offset + pos}
            if reading:
                fields["length"] = piece.nbytes
                call = Call(address, op, fields, sink=piece)
            else:
                call = Call(address, op, fields, payload=piece)
            if on_done is not None:
                call.on_done = lambda c, p=pos, v=piece: on_done(c, p, v)
            yield call
            pos += piece.nbytes


def follow(find: Callable[[], Op], body: Callable[[Any], Op], timeout_s: float, *,
           forget: Callable[[], None] | None = None, relocate: bool = True,
           progress: Callable[[], int] | None = None,
           failover: Callable[[], bool] | None = None) -> Op:
    """``body(where)`` where ``where = find()`` is, following the block when it moves.

    ``BlockMoving`` from the body: the block is being handed over; pause ``MOVING_RETRY_S`` and
    find it again. ``BlockNotFound`` from the body: it left the place ``find`` gave (or has not
    arrived there yet); ``forget`` that place and find it again, unless ``relocate`` is False
    (the caller chose the place: ``Core.call``), then it is final. Ends with the body's result,
    with ``find``'s own error when the block or key is found nowhere, or with the body's error
    once ``timeout_s`` has passed without progress (``progress()`` is a count that grows when
    the body got further, such as bytes delivered, so a long stream that a move interrupts near
    its end is not cut short).

    A copy of a replicated block that cannot serve (``NotCurrent``, from ``find`` too) is a
    moving block; with ``failover()`` True (the block has replicas), a body that fails because
    its agent does not answer (``NodeUnavailable``) finds the block again, once, for up to
    ``FAILOVER_S`` more: another copy takes over when the silent one is declared dead."""
    deadline = time.monotonic() + timeout_s
    seen = progress() if progress is not None else 0
    failed_over = False
    while True:
        try:
            where = yield from find()
        except BlockMoving:
            if time.monotonic() > deadline:
                raise
            yield Wait((), NOT_CURRENT_RETRY_S)
            continue
        try:
            return (yield from body(where))
        except NodeUnavailable:
            if failover is None or not failover() or failed_over:
                raise
            failed_over = True
            deadline = max(deadline, time.monotonic() + FAILOVER_S)
            if forget is not None:
                forget()
            continue
        except (BlockMoving, BlockNotFound) as exc:
            if isinstance(exc, BlockNotFound) and not relocate:
                raise
            if forget is not None:
                forget()
            now = time.monotonic()
            if progress is not None and progress() != seen:
                seen, deadline = progress(), now + timeout_s
            elif now > deadline:
                raise
            if isinstance(exc, BlockMoving):
                yield Wait((), NOT_CURRENT_RETRY_S if isinstance(exc, NotCurrent)
                           else MOVING_RETRY_S)


def found(where: Any) -> Callable[[], Op]:
    """A ``find`` for a place already known."""

    def find() -> Op:
        return where
        yield  # a generator, run with ``yield from`` like every other find

    return find


class ChunkRing:
    """``count`` buffers of ``chunk_bytes``: a chunk takes one and gives it back when done with,
    so a stream of any length holds no more memory than the ring."""

    def __init__(self, count: int, chunk_bytes: int):
        self._free = [bytearray(chunk_bytes) for _ in range(count)]

    def take(self, n: int) -> memoryview:
        return memoryview(self._free.pop())[:n]

    def give(self, view: memoryview) -> None:
        self._free.append(view.obj)

    def __len__(self) -> int:
        return len(self._free)


class StreamRead:
    """``length`` bytes of a block range handed to ``sink`` in order, chunk by chunk.

    ``run`` reads what is not delivered yet from one agent; when it fails because the block
    moved, ``follow`` finds the block again and calls ``run`` once more, which resumes at the
    first byte not yet delivered (``delivered``) with the checksum going on (``checksum``, made
    by ``hasher``: ``mesh.checksum.new()`` unless given, e.g. the algorithm a record names)."""

    def __init__(self, length: int, sink: Callable[[memoryview], Any], progress: Progress = None,
                 hasher: C.Hasher | None = None):
        self.length = length
        self.sink = sink
        self.progress = progress
        self.delivered = 0
        self._hasher = C.new() if hasher is None else hasher

    @property
    def checksum(self) -> str:
        return self._hasher.text()

    def _deliver(self, view: memoryview) -> None:
        self._hasher.update(view)
        self.sink(view)
        self.delivered += view.nbytes
        if self.progress is not None:
            self.progress(view.nbytes)

    def run(self, core: Core, address: str, block_id: str, offset: int) -> Op:
        """Read the rest of the range, which starts at ``offset`` in ``block_id``, from
        ``address``."""
        chunk, window = core.settings.chunk_bytes, core.settings.window
        # on the agent's machine: chunk by chunk in shared memory (mesh/client/local.py), each
        # a copy into one buffer; the network takes over from the first one it must carry
        local = ChunkRing(1, chunk) if self.delivered < self.length else None
        while local is not None and self.delivered < self.length:
            view = local.take(min(chunk, self.length - self.delivered))
            if not (yield from core.local.read(address, block_id, offset + self.delivered,
                                               view)):
                break
            self._deliver(view)
            local.give(view)
        start = self.delivered
        if start >= self.length:
            return
        # `window` in flight, up to `window - 1` read ahead of their turn, one held back by the
        # window. A fresh ring per run: a failed run may leave a buffer in its dropped batch.
        ring = ChunkRing(2 * window + 2, chunk)
        ahead: dict[int, memoryview] = {}  # chunks read ahead of their turn, by position

        def done(call: Call, pos: int, view: memoryview) -> None:
            if call.error is not None:
                ring.give(view)
                return
            ahead[start + pos] = view
            while self.delivered in ahead:
                turn = ahead.pop(self.delivered)
                self._deliver(turn)
                ring.give(turn)

        def buffers() -> Iterator[memoryview]:
            for pos in range(start, self.length, chunk):
                yield ring.take(min(chunk, self.length - pos))

        yield from core.execute(Batch(
            chunk_calls(P.READ, address, block_id, offset + start, buffers(), chunk, done),
            core.settings.request_timeout_s, window,
        ))


def _readinto_full(src: BinaryIO, buf: memoryview) -> int:
    got = 0
    while got < buf.nbytes:
        n = src.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def stream_write(core: Core, address: str, block_id: str, offset: int, src: BinaryIO,
                 length: int, progress: Progress = None) -> Op:
    """Send ``length`` bytes of ``src`` to ``block_id`` at ``offset`` through a ring of chunk
    buffers; returns their checksum (``mesh.checksum.new()``: ``xxh3:<16 hex>``)."""
    chunk, window = core.settings.chunk_bytes, core.settings.window
    # window + 2 buffers: at most `window` in flight plus one held back by the window; a buffer
    # goes back to the ring when the agent has acknowledged its chunk.
    ring = ChunkRing(window + 2, chunk)
    hasher = C.new()

    def fill(pos: int) -> memoryview:
        buf = ring.take(min(chunk, length - pos))
        got = _readinto_full(src, buf)
        if got != buf.nbytes:
            raise InvalidRequest(f"the input ended after {pos + got} of {length} bytes")
        hasher.update(buf)
        return buf

    # on the agent's machine: chunk by chunk in shared memory (mesh/client/local.py); the
    # network takes over from the first chunk it must carry, that one included
    start, pending = 0, None
    while start < length:
        pending = fill(start)
        if not (yield from core.local.write(address, block_id, offset + start, pending)):
            break
        if progress is not None:
            progress(pending.nbytes)
        ring.give(pending)
        start, pending = start + pending.nbytes, None

    def filled() -> Iterator[memoryview]:
        if pending is not None:
            yield pending
        for pos in range(start + (pending.nbytes if pending is not None else 0), length, chunk):
            yield fill(pos)

    def done(call: Call, pos: int, view: memoryview) -> None:
        ring.give(view)
        if progress is not None and call.error is None:
            progress(view.nbytes)

    if start < length:
        yield from core.execute(Batch(
            chunk_calls(P.WRITE, address, block_id, offset + start, filled(), chunk, done),
            core.settings.request_timeout_s, window,
        ))
    return hasher.text()
