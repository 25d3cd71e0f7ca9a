"""Evicting cache keys: an agent short of room for a new allocation (ALLOC) or a new key record
(KPUT) frees keys stored as evictable, one at a time, until the request fits.

Only a key stored with ``evictable`` (``put_*(..., evictable=True)``) whose record owns its block
(the block was made for it) is ever evicted; other keys and raw blocks never are. A key's block
must accept changes (not being backed, moved or handed over). The cluster file's
``mesh.eviction_policy`` picks the victim:

- ``lru`` (default): the key read or written longest ago;
- ``lfu``: the key read the fewest times since it was stored (ties: the least recently used);
- ``ttl-first``: the key whose time to live runs out first, then as ``lru``.

A use is a KGET of the key (every ``get_*`` looks its key up) or its KPUT. The agent remembers
the last ``EVICTED_NOTES`` keys it evicted, so a KGET of one says it was evicted rather than
only "not found" (``mesh/client/keylookup.py`` passes that on). Evictions are counted in STATS
and the metrics (``mesh_evictions_total``).

Interface: ``Evictor(store, node, policy)``: ``stored(key, evictable)`` after a KPUT, ``used(key)``
after a KGET, ``making_room(attempt, nbytes)`` runs ``attempt`` and evicts while it raises
``CapacityError`` (none at all when evicting everything would not make ``nbytes`` of room), ``note_for(key)`` (why a missing key is missing, or None), ``evictable_bytes()``
(what evicting everything would free: gossiped, so clients try a full node that can make room).
Everything runs on the agent's loop. Does not cover the records themselves (``agents/store.py``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable, Iterator, TypeVar

from agents import lifecycle
from agents.store import Block, BlockStore
from mesh.errors import BlockNotFound, CapacityError

log = logging.getLogger(__name__)

T = TypeVar("T")

EVICTED_NOTES = 10_000
# evictable_bytes walks every evictable key: at most this often (it rides on heartbeats)
TALLY_EVERY_S = 1.0


class Evictor:
    def __init__(self, store: BlockStore, node: str, policy: str = "lru",
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.node, self.policy, self._clock = store, node, policy, clock
        # evictable key -> [reads since stored, last use]; least recently used first
        self._use: OrderedDict[str, list] = OrderedDict()
        self._evicted: OrderedDict[str, str] = OrderedDict()  # key -> the policy that chose it
        self.evictions = 0
        self.evicted_bytes = 0
        self._tally: tuple[float, int] = (float("-inf"), 0)

    # --- uses ---------------------------------------------------------------------------------

    def stored(self, key: str, evictable: bool) -> None:
        self._evicted.pop(key, None)
        if evictable:
            self._use[key] = [0, self._clock()]
            self._use.move_to_end(key)
            block = self._block(key)
            if block is not None:  # counted at once (a key stored again: twice, until recounted)
                self._tally_add(block.size + self.store.key_record(key)["_bytes"])
        else:
            self._use.pop(key, None)

    def used(self, key: str) -> None:
        use = self._use.get(key)
        if use is not None:
            use[0] += 1
            use[1] = self._clock()
            self._use.move_to_end(key)

    def note_for(self, key: str) -> str | None:
        policy = self._evicted.get(key)
        if policy is None:
            return None
        return (f"key {key!r} was evicted from node {self.node} to make room for new data "
                f"(eviction policy {policy}); store it again")

    # --- evicting -----------------------------------------------------------------------------

    def making_room(self, attempt: Callable[[], T], nbytes: int = 0) -> T:
        """``attempt()``, evicting one key after each ``CapacityError`` while any can go;
        nothing is evicted when evicting every evictable key would still leave less room
        than ``nbytes``."""
        while True:
            try:
                return attempt()
            except CapacityError:
                if nbytes and self.store.room() + self._count() < nbytes:
                    raise
                if not self.evict_one():
                    raise

    def evict_one(self) -> bool:
        key = self._victim()
        if key is None:
            return False
        record = self.store.key_record(key)
        size = self.store.get(record["block"]).size + record["_bytes"]
        self.store.delete_key(key)  # and its block
        self._use.pop(key, None)
        self._evicted[key] = self.policy
        while len(self._evicted) > EVICTED_NOTES:
            self._evicted.popitem(last=False)
        self.evictions += 1
        self.evicted_bytes += size
        self._tally_add(-size)
        log.debug("evicted %r (%d bytes, %s)", key, size, self.policy)
        return True

    def _block(self, key: str) -> Block | None:
        """The block ``key`` would free, if it may be evicted now (None: not now, or never:
        a key gone, replaced by one not evictable, or naming a block it does not own)."""
        record = self.store.key_record(key)
        if record is None or not record.get("evictable") or not record["owns_block"] or \
                not record["block"]:
            return None
        try:
            block = self.store.get(record["block"])
        except BlockNotFound:
            return None
        return block if lifecycle.accepts_changes(block.state) else None

    def _candidates(self) -> Iterator[tuple[str, Block]]:
        """Evictable keys with their blocks, least recently used first; keys no longer
        evictable are forgotten on the way."""
        gone = []
        try:
            for key in self._use:
                block = self._block(key)
                if block is not None:
                    yield key, block
                elif self.store.key_record(key) is None or \
                        not self.store.key_record(key).get("evictable"):
                    gone.append(key)
        finally:
            for key in gone:
                self._use.pop(key, None)

    def _victim(self) -> str | None:
        if self.policy == "lfu":  # (a walk over every evictable key)
            found = [(self._use[k][0], self._use[k][1], k) for k, _ in self._candidates()]
            return min(found)[2] if found else None
        if self.policy == "ttl-first":
            found = [(b.expires, k) for k, b in self._candidates() if b.expires is not None]
            if found:
                return min(found)[1]
        for key, _ in self._candidates():
            return key  # least recently used first
        return None

    def evictable_bytes(self) -> int:
        """What evicting every key that may go now would free: counted over every evictable key
        at most once every ``TALLY_EVERY_S`` (it rides on heartbeats and NODES replies, one per
        allocation), kept up to date between counts by what is stored and evicted here (keys
        deleted, replaced or expired meanwhile are noticed at the next count)."""
        now = self._clock()
        if now - self._tally[0] >= TALLY_EVERY_S:
            self._tally = (now, self._count())
        return self._tally[1]

    def _tally_add(self, nbytes: int) -> None:
        self._tally = (self._tally[0], max(0, self._tally[1] + nbytes))

    def _count(self) -> int:
        return sum(b.size + self.store.key_record(k)["_bytes"] for k, b in self._candidates())
