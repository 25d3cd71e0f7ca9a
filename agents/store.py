"""The agent's block store: capacity accounting, block memory, bounds checks, keys.

Covers: making blocks (one contiguous mmap each, exposed as a memoryview: anonymous memory, or
with ``shared`` a memfd that the same-host path hands to local clients, ``agents/local.py``),
checking every offset/length before memory is touched, counting promises against the agent's
share and the host's RAM (the room rule below), giving memory back to the OS on free, the key records that
name ranges of blocks, and a forwarding note for each block that moved away (so a client asking
for it hears where it went). Each block carries its lifecycle state; the store refuses what the
state does not allow (``BlockNotFound`` while a block is not served, ``BlockMoving`` while it
moves) and frees through the state machine.

Does not cover: the lifecycle table itself (``agents/lifecycle.py``), sockets and request
parsing (``agents/server.py``), the peer copy that moves blocks (``agents/moves.py``),
membership (``mesh/membership.py``). No I/O beyond mapping memory. Page population (backing an
allocation with real pages) is slow on virtual machines (about 0.5 GB/s here), so ``populate``
is a separate call the agent runs in a worker thread; the madvise call releases the GIL.

The room rule. An agent's promises are ``used``: every block it holds, whether backed, being
backed or lazy, plus the bytes of its key records. ``unbacked`` is the part of ``used`` that
holds no pages yet (blocks still being populated, copies moving in, lazy blocks): it will still
come out of the host's available RAM. Every agent on a host writes both figures in the host's
promise ledger (``agents/ledger.py``), and a new promise of ``n`` bytes is made only when, under
the ledger's lock::

    n <= share - used                                            (the agent's own share)
    n <= (total - reserve) - (promised by every agent on the host)      (never over-promise)
    n <= (available - reserve) - (unbacked by every agent on the host)  (what is free now)

so the sum of every agent's promises on a host never exceeds its RAM less the reserve, and
allocations still being backed count as taken. A lazy block is counted as unbacked even once
written (its pages then count twice, which errs on the safe side).

Leases. A block made for a named put (ALLOC ``pending``) is pending until a key record naming it
is stored (KPUT publishes it). Every request that names it (``served``: WRITE, STAT, READ, FREE,
RENEW) renews its lease for ``lease_s`` (the cluster's ``mesh.lease_s``); a block made with
``ttl_s`` expires that long after it was made. ``sweep`` (the agent's heartbeat timer) frees
every READY block whose lease ran out or whose time is up (``Event.EXPIRE``), so a client
killed mid-put leaves nothing behind for more than ``lease_s`` plus one heartbeat; a block that
is still being backed or moved when its time comes is looked at again ``lease_s`` later. A plain
ALLOC has neither and lives until it is freed.
"""

from __future__ import annotations

import contextlib
import heapq
import mmap
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

from agents import lifecycle
from agents.backing import HUGE_PAGE, advise_huge, block_memory, populate, release_memfd
from agents.keyrecords import MAX_KEY_LENGTH, MAX_KEY_RECORD_BYTES, check_key_record, public
from agents.ledger import Others, PromiseLedger
from agents.lifecycle import Event, IllegalTransition, State
from agents.paging import SeqIndex
from mesh.hostmem import HostMemory
from mesh.units import format_bytes
from mesh.errors import (
    BlockMoving,
    BlockNotFound, CapacityError, InvalidRequest, InvalidSize, KeyExists, KeyNotFound, OutOfRange,
)

__all__ = ["Block", "BlockStore", "MAX_KEY_LENGTH", "MAX_KEY_RECORD_BYTES", "host_room", "populate"]

# How many block ids that moved away keep a note of where they went (a few hundred KiB at most).
MOVED_NOTES = 10_000

@dataclass(eq=False)
class Block:
    block_id: str
    size: int
    lazy: bool
    created: float  # wall-clock seconds
    buf: mmap.mmap
    view: memoryview
    state: State  # see agents/lifecycle.py; change it with ``advance`` or ``BlockStore.free``
    # Monotonic seconds. A copy moving in: when its pull began, and once it has ARRIVED, the
    # time by which the source must COMMIT it (else it is dropped).
    pull_started: float | None = None
    commit_by: float | None = None
    seq: int = 0  # where it stands in the store's listing order (agents/paging.py)
    # Lifetimes (see "Leases" in the module docstring). Monotonic seconds, None when unset:
    # a pending block's lease runs out at ``lease_until``; a block made with a ttl expires at
    # ``expires_at`` (``expires`` is the same moment in epoch seconds, for people).
    lease_until: float | None = None
    expires_at: float | None = None
    expires: float | None = None
    fd: int = -1  # a shared block's memfd (-1: anonymous) and its inode (agents/local.py)
    ino: int = 0

    def advance(self, event: Event) -> State:
        """Apply ``event`` (``IllegalTransition`` if the state does not allow it). Events that
        free the block go through ``BlockStore.free``, which also gives its memory back."""
        new = lifecycle.transition(self.state, event)
        if new is State.FREED:
            raise IllegalTransition(f"{event.value!r} frees block {self.block_id}; use "
                                    "BlockStore.free")
        self.state = new
        return new

    def record(self, node: str) -> dict:
        return {
            "block": self.block_id,
            "node": node,
            "size": self.size,
            "lazy": self.lazy,
            "created": self.created,
            "expires": self.expires,
            "pending": self.lease_until is not None,
        }

    def deadline(self) -> float | None:
        """When the sweep must look at this block next (None: it lives until freed)."""
        times = [t for t in (self.lease_until, self.expires_at) if t is not None]
        return min(times) if times else None


# States in which a block's pages are not all there yet (populating, or a copy being pulled).
_FILLING = (State.ALLOCATING, State.INCOMING, State.CANCELLED, State.ARRIVED)


def host_room(mem: HostMemory, reserve: int, promised: int, unbacked: int,
              others: Others) -> int:
    """What the host can still promise (the room rule in the module docstring): ``promised`` and
    ``unbacked`` are this agent's, ``others`` every other agent's on the host."""
    never_over = mem.total - reserve - promised - others.promised
    free_now = mem.available - reserve - unbacked - others.unbacked
    return max(0, min(never_over, free_now))


class BlockStore:
    """Blocks of one agent. ``memory_fn`` tells the host's (or its cgroup's) RAM: an object with
    ``total`` and ``available`` bytes (``mesh.hostmem.host_memory``). ``on_free`` is told the id
    of every block freed (the server drops its bookkeeping of reads in flight from it).
    ``ledger`` is the host's promise ledger (None: no other agent shares this host)."""

    def __init__(
        self,
        node: str,
        incarnation: int,
        share_bytes: int | None,
        reserve_bytes: int,
        memory_fn: Callable[[], HostMemory],
        on_free: Callable[[str], None] | None = None,
        ledger: PromiseLedger | None = None,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        shared: bool = False,
    ):
        self.node = node
        self.shared = shared  # blocks in memfds a local client may map
        self.lease_s = lease_s
        self._clock = clock
        self._deadlines: list[tuple[float, int, str]] = []  # heap: (when, seq, block id)
        self.incarnation = incarnation
        self.share_bytes = share_bytes
        self.reserve_bytes = reserve_bytes
        self._memory = memory_fn
        self._blocks: dict[str, Block] = {}
        self._keys: dict[str, dict] = {}  # key -> key record (see mesh/protocol.py)
        self._moved: OrderedDict[str, str] = OrderedDict()  # block id -> node it moved to
        self._on_free = on_free
        self._counter = 0
        self._tag = _base36(incarnation)
        self.used = 0  # every promise: block sizes and key record bytes
        self.key_bytes = 0  # the part of ``used`` that key records take
        self._lazy_bytes = 0
        self._filling: dict[str, Block] = {}  # non-lazy blocks whose pages may not all be there
        self._ledger = ledger
        self._block_order = SeqIndex()  # listing order and cursors (LIST, KLIST)
        self._key_order = SeqIndex()
        self._ledger_stale = False  # a free not yet written to the ledger (errs on the safe side)

    # --- accounting ---------------------------------------------------------------------------

    def capacity_for(self, mem: HostMemory) -> int:
        """The most this agent will ever promise: its share, or the host's RAM less the reserve."""
        host = max(0, mem.total - self.reserve_bytes)
        return host if self.share_bytes is None else min(self.share_bytes, host)

    @property
    def capacity(self) -> int:
        return self.capacity_for(self._memory())

    @property
    def unbacked(self) -> int:
        """Promised bytes that hold no pages yet (see the room rule)."""
        for block_id in [i for i, b in self._filling.items() if b.state not in _FILLING]:
            del self._filling[block_id]  # populated, or committed: its pages are there
        return self._lazy_bytes + sum(b.size for b in self._filling.values())

    def room(self, mem: HostMemory | None = None, others: Others | None = None) -> int:
        """Bytes a new allocation may take now (``mem``: a reading already taken; ``others``:
        the other agents' totals, read from the ledger when None)."""
        mem = mem or self._memory()
        if others is None:
            others = self._ledger.others() if self._ledger is not None else Others()
        by_share = self.capacity_for(mem) - self.used
        by_host = host_room(mem, self.reserve_bytes, self.used, self.unbacked, others)
        return max(0, min(by_share, by_host))

    @contextlib.contextmanager
    def _promise(self, nbytes: int, what: str) -> Iterator[None]:
        """Check ``nbytes`` against the room under the host's lock; the caller counts it inside
        the ``with`` block, and the new totals go to the ledger when it ends."""
        lock = self._ledger.locked() if self._ledger is not None else \
            contextlib.nullcontext(Others())
        with lock as others:
            mem = self._memory()
            room = self.room(mem, others)
            if nbytes > room:
                raise CapacityError(
                    f"node {self.node} has room for {format_bytes(room)}, {format_bytes(nbytes)} "
                    f"asked for {what} (capacity {format_bytes(self.capacity_for(mem))}, used "
                    f"{format_bytes(self.used)})",
                    node=self.node,
                )
            yield
            if self._ledger is not None:
                self._ledger.write(self.used, self.unbacked)
                self._ledger_stale = False

    def flush_ledger(self) -> None:
        """Write frees to the ledger (the agent calls it on its heartbeat timer)."""
        if self._ledger is not None and self._ledger_stale:
            self._ledger.update(self.used, self.unbacked)
            self._ledger_stale = False

    def host_promised(self) -> int:
        """Bytes promised by every agent of the host, this one included (for the metrics)."""
        others = self._ledger.others() if self._ledger is not None else Others()
        return self.used + others.promised

    def __len__(self) -> int:
        return len(self._blocks)

    # --- blocks -------------------------------------------------------------------------------

    def new_id(self) -> str:
        """The next id of this incarnation that no block here holds: a PULL may have brought in
        (or planted) a block under an id of ours, and two entries must never share an id."""
        while True:
            block_id = f"block_{self._counter}_{self.node}_{self._tag}"
            self._counter += 1
            if block_id not in self._blocks:
                return block_id

    def allocate(self, size: int, lazy: bool, block_id: str | None = None,
                 created: float | None = None, pending: bool = False,
                 ttl_s: float | None = None) -> Block:
        """Reserve and map a block. A new one is ALLOCATING until the caller has populated it
        (``Event.POPULATED``), or READY at once if lazy.

        ``block_id`` adopts the id of a block moving here from another node (ids name where a
        block was made, not where it lives): that block starts INCOMING."""
        if block_id is not None and block_id in self._blocks:
            raise InvalidRequest(f"block {block_id!r} already exists on node {self.node}")
        if size <= 0:
            raise InvalidSize(f"allocation size must be a positive number of bytes, got {size}")
        if ttl_s is not None and not 0 < ttl_s < float("inf"):
            raise InvalidRequest(f"ttl_s must be a positive number of seconds, got {ttl_s}")
        with self._promise(size, "a block"):
            try:
                buf, fd = block_memory(size, self.shared and block_id is None)  # (DESIGN.md)
            except (OSError, OverflowError, MemoryError) as exc:
                raise CapacityError(f"node {self.node} could not map {size} bytes: {exc}") \
                    from None
            if size >= HUGE_PAGE and block_id is None:  # not for a copy moving in (agents/backing.py)
                advise_huge(buf)
            block = Block(block_id or self.new_id(), size, lazy,
                          time.time() if created is None else created, buf, memoryview(buf),
                          lifecycle.initial_state(lazy, incoming=block_id is not None),
                          fd=fd, ino=os.fstat(fd).st_ino if fd >= 0 else 0)
            self._blocks[block.block_id] = block
            block.seq = self._block_order.add(block.block_id)
            self._block_order.compact(len(self._blocks), self._block_at)
            self.used += size
            if lazy:
                self._lazy_bytes += size
            else:
                self._filling[block.block_id] = block
        now = self._clock()
        if pending:
            block.lease_until = now + self.lease_s
        if ttl_s is not None:  # (a copy moving in brings the time it has left, not its first)
            block.expires_at, block.expires = now + ttl_s, time.time() + ttl_s
        self._watch(block)
        return block

    # --- leases and lifetimes -----------------------------------------------------------------

    def _watch(self, block: Block) -> None:
        when = block.deadline()
        if when is not None:
            heapq.heappush(self._deadlines, (when, block.seq, block.block_id))

    def renew(self, block: Block) -> bool:
        """Extend a pending block's lease (True if it has one)."""
        if block.lease_until is None:
            return False
        block.lease_until = self._clock() + self.lease_s
        return True

    def sweep(self, limit: int = 10_000) -> list[Block]:
        """Free the blocks whose lease ran out or whose time is up (at most ``limit`` a call,
        so one sweep never holds the loop long); returns them."""
        now = self._clock()
        freed: list[Block] = []
        while self._deadlines and self._deadlines[0][0] <= now and len(freed) < limit:
            _, seq, block_id = heapq.heappop(self._deadlines)
            block = self._block_at(block_id, seq)
            if block is None:
                continue  # freed already
            when = block.deadline()
            if when is not None and when > now:
                self._watch(block)  # renewed since: look again then
            elif when is not None:
                if lifecycle.accepts_changes(block.state):
                    freed.append(self.free(block_id, Event.EXPIRE))
                else:  # being backed or moved: its writer is still at it
                    if block.lease_until is not None:
                        block.lease_until = now + self.lease_s
                    heapq.heappush(self._deadlines, (now + self.lease_s, seq, block_id))
        return freed

    def get(self, block_id: str) -> Block:
        block = self._blocks.get(block_id)
        if block is None:
            raise BlockNotFound(f"block {block_id!r} not found on node {self.node}", node=self.node)
        return block

    def holds(self, block: Block) -> bool:
        """This very block is still here under its id (not freed, not moved away)."""
        return self._blocks.get(block.block_id) is block

    def served(self, block_id: str) -> Block:
        """The block as clients may see it (READY, MOVING or HANDING_OVER); ``BlockNotFound``
        otherwise, saying where it went if it moved away from here. A request naming a pending
        block renews its lease."""
        try:
            block = self.get(block_id)
        except BlockNotFound:
            where = self._moved.get(block_id)
            if where is None:
                raise
            raise BlockNotFound(f"block {block_id!r} moved from node {self.node} to {where}",
                                node=self.node) from None
        if not lifecycle.listed(block.state):
            raise _not_served(block, self.node)
        if block.lease_until is not None:
            self.renew(block)
        return block

    def check_still(self, block: Block) -> None:
        """Refuse a change to a block that is being moved (the client retries)."""
        if lifecycle.accepts_changes(block.state):
            return
        if lifecycle.listed(block.state):
            raise BlockMoving(f"block {block.block_id} is being moved off node {self.node}; "
                              "retry in a moment", node=self.node)
        raise _not_served(block, self.node)

    def free(self, block_id: str, why: Event = Event.FREE, moved_to: str | None = None) -> Block:
        """Free a block and forget every key that points into it. ``why`` is the lifecycle
        event: ``FREE`` (a client's; refused with ``BlockMoving`` while the block moves), or
        one the mesh itself causes (``MOVED_AWAY`` to ``moved_to``, ``DROP`` of a copy that
        never became ours, ``POPULATE_FAILED``, ``SHUTDOWN``)."""
        block = self.get(block_id)
        if why is Event.FREE:
            self.check_still(block)
        if lifecycle.transition(block.state, why) is not State.FREED:
            raise IllegalTransition(f"{why.value!r} does not free a block")
        block.state = State.FREED
        del self._blocks[block_id]
        self.used -= block.size
        if block.lazy:
            self._lazy_bytes -= block.size
        self._filling.pop(block_id, None)
        self._ledger_stale = True
        if why is not Event.SHUTDOWN:  # other agents on the host may take the room at once
            self.flush_ledger()
        for key in [k for k, r in self._keys.items() if r["block"] == block_id]:
            self._drop_key(key)
        if moved_to is not None:
            self._moved[block_id] = moved_to
            self._moved.move_to_end(block_id)
            while len(self._moved) > MOVED_NOTES:
                self._moved.popitem(last=False)
        if self._on_free is not None:
            self._on_free(block_id)
        _release(block)
        return block

    # --- keys ---------------------------------------------------------------------------------

    def put_key(self, key: str, rec: dict, replace: bool, now: float) -> dict:
        """Name a range of one of our blocks; on replace, free the old record's own block. A
        record's bytes count against the room like a block's (``CapacityError``)."""
        record = self._checked_key(key, rec, replace, now)
        old = self._keys.get(key)
        grow = record["_bytes"] - (old["_bytes"] if old is not None else 0)
        with self._promise(max(0, grow), f"key {key!r}"):
            self._install_key(record)
        if record["block"]:
            self._blocks[record["block"]].lease_until = None  # published: no longer pending
        return public(record)

    def adopt_keys(self, block: Block, records: list, now: float) -> None:
        """Take the key records that a COMMIT brings with ``block`` (an ARRIVED copy), keeping
        their creation times (``now`` for a record without one) and replacing keys of the same
        names: all of them, or none if one is wrong (so no key is left pointing into a copy
        that is then dropped)."""
        checked = [self._checked_key(rec["key"], rec, True, created, arriving=block)
                   for rec, created in _records_of(block, records, now)]
        for record in checked:  # counted, not checked: the source had room for them
            self._install_key(record)

    def follow_keys(self, block: Block, records: list, now: float) -> None:
        """A backup's copy of ``block`` takes the key records its primary sent: all of them,
        or none if one is wrong. A key whose record here names another block and is newer stays
        as it is (records of one key on two blocks: the newest put wins), and installing one
        never frees another block: the copies of a block are its primary's to free."""
        checked = []
        for rec, created in _records_of(block, records, now):
            held = self._keys.get(rec["key"])
            if held is not None and held["block"] != block.block_id and \
                    held["created"] > created:
                continue
            checked.append(check_key_record(rec["key"], rec, self.node, created))
            self.check_range(block, checked[-1]["offset"], checked[-1]["length"])
        for record in checked:
            if record["key"] in self._keys:
                self._drop_key(record["key"])  # not _install_key's replace: nothing is freed
            self._install_key(record)

    def _checked_key(self, key: str, rec: dict, replace: bool, now: float,
                     arriving: Block | None = None) -> dict:
        """The record to store under ``key``, after every check that storing it makes; the
        block it names must accept changes, unless it is the copy ``arriving`` by COMMIT."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidRequest(f"a key must be 1 to {MAX_KEY_LENGTH} characters")
        record = check_key_record(key, rec, self.node, now)
        if record["block"]:
            block = self.get(record["block"])
            self.check_range(block, record["offset"], record["length"])
            if block is not arriving:
                self.check_still(block)
        old = self._keys.get(key)
        if old is not None and not replace:
            raise KeyExists(f"key {key!r} already exists (on node {self.node}); delete it or replace it")
        if old is not None and old["block"] in self._blocks and \
                self._blocks[old["block"]] is not arriving:
            self.check_still(self._blocks[old["block"]])
        return record

    def _install_key(self, record: dict) -> None:
        old = self._keys.get(record["key"])
        if old is not None:
            self._drop_key(record["key"])
        self._keys[record["key"]] = record
        record["_seq"] = self._key_order.add(record["key"])
        self._key_order.compact(len(self._keys), self._key_at)
        self.used += record["_bytes"]
        self.key_bytes += record["_bytes"]
        if old is not None and old["owns_block"] and old["block"] and old["block"] != record["block"]:
            if old["block"] in self._blocks:
                self.free(old["block"])

    def _drop_key(self, key: str) -> dict:
        record = self._keys.pop(key)
        self.used -= record["_bytes"]
        self.key_bytes -= record["_bytes"]
        self._ledger_stale = True
        return record

    def get_key(self, key: str) -> dict:
        record = self._keys.get(key)
        if record is None:
            raise KeyNotFound(f"key {key!r} not found on node {self.node}", node=self.node)
        return public(record)

    def key_record(self, key: str) -> dict | None:
        """The stored record of ``key``, bookkeeping included (``agents/eviction.py``)."""
        return self._keys.get(key)

    def drop_key(self, key: str) -> None:
        """Forget a key and nothing else (a backup following its primary's records)."""
        if key in self._keys:
            self._drop_key(key)

    def set_lifetime(self, block: Block, expires: float | None, pending: bool) -> None:
        """Give a block the lifetime a copy's primary kept (a ttl, a pending put's lease)."""
        now = self._clock()
        if expires is not None:
            block.expires, block.expires_at = expires, now + max(0.0, expires - time.time())
        if pending:
            block.lease_until = now + self.lease_s
        self._watch(block)

    def delete_key(self, key: str) -> bool:
        """Forget a key; free its block when the block was made for it. True if freed."""
        record = self.get_key(key)
        if record["block"] in self._blocks:
            self.check_still(self._blocks[record["block"]])
        self._drop_key(key)
        if record["owns_block"] and record["block"] in self._blocks:
            self.free(record["block"])
            return True
        return False

    def key_records(self, block_id: str | None = None) -> list[dict]:
        """Every key record, or those naming a range of ``block_id``."""
        if block_id is None:
            return [public(r) for r in self._keys.values()]
        return [public(r) for r in self._keys.values() if r["block"] == block_id]

    def blocks(self) -> list[Block]:
        return list(self._blocks.values())

    def _block_at(self, block_id: str, seq: int) -> Block | None:
        block = self._blocks.get(block_id)
        return block if block is not None and block.seq == seq else None

    def _key_at(self, key: str, seq: int) -> dict | None:
        record = self._keys.get(key)
        return record if record is not None and record["_seq"] == seq else None

    def list_blocks(self, after: int, limit: int) -> tuple[list[Block], int | None]:
        """One page of the blocks clients may see, after cursor ``after`` (agents/paging.py)."""
        def listed(block_id: str, seq: int) -> Block | None:
            block = self._block_at(block_id, seq)
            return block if block is not None and lifecycle.listed(block.state) else None

        return self._block_order.page(after, limit, listed)

    def list_keys(self, after: int, limit: int, max_bytes: int) -> tuple[list[dict], int | None]:
        """One page of key records after cursor ``after``, at most ``max_bytes`` of them."""
        records, cursor = self._key_order.page(after, limit, self._key_at,
                                               cost=lambda r: r["_bytes"], max_bytes=max_bytes)
        return [public(r) for r in records], cursor

    def check_range(self, block: Block, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise OutOfRange(f"offset and length must be >= 0 (got {offset}, {length})")
        if offset + length > block.size:
            raise OutOfRange(
                f"range [{offset}, {offset + length}) is past the end of block "
                f"{block.block_id} ({block.size} bytes)"
            )

    def close(self) -> None:
        for block_id in list(self._blocks):
            self.free(block_id, Event.SHUTDOWN)
        if self._ledger is not None:
            self._ledger.close()  # promises nothing any more


def _records_of(block: Block, records: list, now: float) -> Iterator[tuple[dict, float]]:
    """(record, its creation time; ``now`` when it has none) of key records that must all name
    ``block`` (a COMMIT's, or a copy's from its primary); ``InvalidRequest`` otherwise."""
    for rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or \
                rec.get("block") != block.block_id:
            raise InvalidRequest(f"key records sent with block {block.block_id} must name it")
        created = rec.get("created")
        yield rec, created if isinstance(created, (int, float)) else now


def _not_served(block: Block, node: str) -> BlockNotFound:
    # An allocation being backed, or a copy moving in that is not committed yet: to a client,
    # not here (yet).
    return BlockNotFound(f"block {block.block_id!r} is still being allocated", node=node)


def _release(block: Block) -> None:
    """Unmap now if nothing else holds the buffer; otherwise the last holder's release unmaps it
    (a zero-copy send still in libzmq's queue keeps a reference, and must not see freed memory)."""
    try:
        block.view.release()
        block.buf.close()
    except BufferError:  # (a local client's mapping, if any, keeps the pages until it unmaps)
        release_memfd(block.fd, block.size, punch=False)
        return
    release_memfd(block.fd, block.size, punch=True)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out)) or "0"
