"""Zero-copy reads and the writes that must wait for them.

The agent answers a READ with a frame that points straight into the block (copying it cost a
third of the read throughput), so libzmq sends from the block's memory some time after the reply
was queued. A WRITE landing in that range before libzmq is done would tear the read: the client
would get half old, half new bytes. So ``WriteGate`` remembers, per block, the ranges of reads
still in flight (each with libzmq's ``MessageTracker``, or any object with a ``.done``
attribute), and a write overlapping one of them waits in a bounded queue until the read has
left. Writes to one block keep their order: while one waits, later writes to the same block wait
behind it even if they overlap nothing.

Covers: ``WriteGate.sent`` (a read is in flight), ``must_wait`` / ``defer`` (a write waits; at
most ``MAX_DEFERRED_WRITES``, then ``AgentError`` "busy"), ``retry`` (the loop re-dispatches the
waiting writes, in order), ``forget`` (a freed block's reads no longer hold anything). No
sockets, no clock: the loop polls trackers by calling ``retry`` every millisecond or so while
writes wait.

Does not cover: sending the read (``agents/server.py``), bounds and move checks on the write
(``agents/store.py``); a deferred write is dispatched again from the start, so those checks run
again when it is retried.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Callable, Protocol

from mesh.errors import AgentError

# Writes waiting for a zero-copy read of the same range to leave libzmq; more are refused.
MAX_DEFERRED_WRITES = 64
# Reads remembered before the first sweep of the done ones (see ``WriteGate._sweep_at``).
SWEEP_MIN = 1024


class Tracker(Protocol):
    done: bool  # zmq.MessageTracker: True once libzmq has let go of the frame


class WriteGate:
    def __init__(self, node: str, max_deferred: int = MAX_DEFERRED_WRITES):
        self.node = node
        self.max_deferred = max_deferred
        # block id -> [(start, end, tracker)] of zero-copy reads libzmq may still be sending
        self._sending: dict[str, list[tuple[int, int, Tracker]]] = {}
        self._deferred: deque[tuple[str, Any]] = deque()  # (block id, write) in arrival order
        self._deferred_per_block: Counter[str] = Counter()
        self._retrying = False
        # reads recorded in ``_sending``, and the count at which ``sent`` next sweeps out the
        # done ones: twice what was live after the last sweep, so a read-mostly load (reads, no
        # writes, no frees) keeps at most about twice its reads in flight, at O(1) a read
        self._tracked = 0
        self._sweep_at = SWEEP_MIN

    @property
    def waiting(self) -> int:
        """How many writes wait."""
        return len(self._deferred)

    def sent(self, block_id: str, start: int, end: int, tracker: Tracker | None) -> None:
        """A zero-copy read of ``[start, end)`` of the block was queued (``None``: the reply
        was dropped, so nothing is in flight)."""
        if tracker is not None and not tracker.done:
            self._sending.setdefault(block_id, []).append((start, end, tracker))
            self._tracked += 1
            if self._tracked >= self._sweep_at:
                self._sweep()

    @property
    def tracked(self) -> int:
        """Reads remembered (live, or done but not swept out yet)."""
        return self._tracked

    def _sweep(self) -> None:
        """Forget every read libzmq has finished sending."""
        for block_id in list(self._sending):
            self._prune(block_id)
        self._sweep_at = max(SWEEP_MIN, 2 * self._tracked)

    def reads_in_flight(self, block_id: str) -> int:
        return sum(1 for *_, t in self._sending.get(block_id, ()) if not t.done)

    def must_wait(self, block_id: str, start: int, end: int) -> bool:
        """A write must wait while libzmq still sends a read of that range (or, to keep the
        order of writes, while an earlier write to the block waits)."""
        if block_id not in self._sending and not self._deferred_per_block.get(block_id):
            return False  # nothing in flight or waiting on this block: the common case
        if not self._retrying and self._deferred_per_block[block_id]:
            return True
        return self._overlaps_send(block_id, start, end)

    def defer(self, block_id: str, write: Any, force: bool = False) -> None:
        """Queue ``write`` (whatever ``retry``'s ``dispatch`` takes) for the next ``retry``;
        ``force``: even past the limit (a write forwarded by a block's primary, whose window
        bounds them)."""
        if len(self._deferred) >= self.max_deferred and not force:
            raise AgentError(
                "busy: too many writes are waiting for reads of the same ranges; retry",
                node=self.node,
            )
        self._deferred.append((block_id, write))
        self._deferred_per_block[block_id] += 1

    def retry(self, dispatch: Callable[[Any], None]) -> None:
        """Dispatch every waiting write again, in order. A write that must still wait is
        deferred again by its handler (through ``must_wait``/``defer``), and holds back the
        later writes to its block."""
        waiting, self._deferred = self._deferred, deque()
        held: set[str] = set()
        for block_id, write in waiting:
            self._deferred_per_block[block_id] -= 1
            if block_id in held:
                self._deferred.append((block_id, write))
                self._deferred_per_block[block_id] += 1
                continue
            self._retrying = True
            try:
                dispatch(write)
            finally:
                self._retrying = False
            if self._deferred and self._deferred[-1][1] is write:
                held.add(block_id)
        self._deferred_per_block = +self._deferred_per_block

    def forget(self, block_id: str) -> None:
        """The block was freed: its memory takes no more writes, so its reads hold none back
        (a block of the same id made later is other memory). Writes waiting for it stay queued
        and get their answer ("not found") when retried."""
        self._tracked -= len(self._sending.pop(block_id, ()))

    def _prune(self, block_id: str) -> list[tuple[int, int, Tracker]]:
        """The block's reads still in flight, the done ones forgotten."""
        sends = self._sending.get(block_id)
        if not sends:
            return []
        live = [s for s in sends if not s[2].done]
        self._tracked -= len(sends) - len(live)
        if live:
            self._sending[block_id] = live
        else:
            del self._sending[block_id]
        return live

    def _overlaps_send(self, block_id: str, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e, _ in self._prune(block_id))
