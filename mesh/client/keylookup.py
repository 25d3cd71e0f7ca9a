"""Finding a named object: ``ObjectInfo`` (a key record as the client sees it), ``holders``
(every agent's record of a key) and ``lookup`` (the newest, or who to blame when there is none).

A key record lives with its block's copies (``docs/durability.md``): every current copy of a
replicated block answers KGET with the same record and ``nodes``, primary first. ``holders``
keeps one answer per record, the primary's when it answered, so a delete or a replace goes to
the primary once and a read to a copy that serves.

Not here: putting and reading objects (``mesh/client/objects.py``), a key's home and claims
(``mesh/client/keyclaims.py``), who to blame (``mesh/client/blame.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mesh.client.keyclaims as keyclaims
from mesh import protocol as P
from mesh.client.batch import Batch, Call, Op
from mesh.client.blame import unavailable
from mesh.client.transfer import NOT_CURRENT_RETRY_S
from mesh.errors import BlockMoving, InvalidRequest, KeyNotFound, NodeUnavailable, NotCurrent
from mesh.membership import ALIVE, DOWN

if TYPE_CHECKING:
    from mesh.client.core import Core


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    block_id: str | None
    offset: int
    length: int
    node: str
    created: float
    content_type: str
    checksum: str
    owns_block: bool
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    # the key that wrote it, as its agent authenticated it (None on a cluster without keys)
    writer: str | None = None
    # with replicas: the nodes holding a current copy, primary first
    nodes: tuple[str, ...] = field(default=(), compare=False)
    # when its agent frees it (epoch seconds; None: never), and whether it may be evicted for
    # room (mesh/client/cacheopts.py)
    expires: float | None = field(default=None, compare=False)
    evictable: bool = field(default=False, compare=False)

    @property
    def compression(self) -> str | None:
        return self.meta.get("compression")

    @property
    def raw_length(self) -> int:
        """Its bytes as put and got back (``length`` is what is stored: compressed, maybe)."""
        return int(self.meta.get("raw_length", self.length))

    @property
    def ttl_remaining(self) -> float | None:
        """Seconds until it expires (None: never)."""
        return None if self.expires is None else max(0.0, self.expires - time.time())

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ObjectInfo:
        nodes = tuple(rec.get("nodes") or ())
        return cls(rec["key"], rec["block"] or None, int(rec["offset"]), int(rec["length"]),
                   nodes[0] if nodes else rec["node"], float(rec["created"]), rec["content_type"], rec["checksum"],
                   bool(rec["owns_block"]), dict(rec.get("meta") or {}),
                   rec.get("writer") if isinstance(rec.get("writer"), str) else None, nodes,
                   float(rec["expires"]) if isinstance(rec.get("expires"), (int, float)) else None,
                   rec.get("evictable") is True)



def _check_key(key: Any) -> None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > 1024):
        raise InvalidRequest(f"a key must be a string of 1 to 1024 characters, got {key!r}")


# --- lookup -------------------------------------------------------------------------------------


def holders(core: Core, key: str, certain: bool = False, evicted: list | None = None) -> Op:
    """Every (address, ObjectInfo) for ``key`` on the live agents, newest first. ``certain``:
    when a copy that cannot serve this instant answered (``NotCurrent``: a newer record may be
    on it, a failover under way), raise that instead of answering with what the others
    hold, which may be an older record of the key."""
    _check_key(key)
    nodes = yield from core.alive_nodes()
    calls = yield from core.execute(Batch(
        [Call(n.address, P.KGET, {"key": key}) for n in nodes],
        timeout_s=core.settings.connect_timeout_s,
        fail_fast=False,
    ))
    one: dict[tuple, tuple[str, ObjectInfo]] = {}  # a replicated record once, the primary's
    for c in calls:
        if certain and isinstance(c.error, NotCurrent):
            raise c.error  # (``follow`` waits and looks again)
        if c.result is None:
            if evicted is not None and isinstance(c.error, KeyNotFound) and \
                    " was evicted " in str(c.error):  # (agents/eviction.py: note_for)
                evicted.append(str(c.error))
            continue
        info = ObjectInfo.from_record(c.result)
        same = (info.block_id, info.created, info.checksum) if info.nodes else (c.address,)
        if same not in one or c.result.get("node") == info.node:  # the primary answered
            one[same] = (c.address, info)
    return sorted(one.values(), key=lambda f: f[1].created, reverse=True)


def lookup(core: Core, key: str) -> Op:
    """The newest (address, ObjectInfo) of ``key``; while a copy that may hold a newer record
    cannot serve (a failover), it waits for it, up to the request timeout."""
    evicted: list[str] = []
    found = yield from _certain(core, key, evicted)
    if not found and evicted:
        raise KeyNotFound(evicted[0])
    if not found:
        # A key whose block is being handed over lives on the source until just after it is on
        # the target, but one broadcast may ask the target just before and the source just
        # after: look once more before saying it is not there. No pause is needed: the source
        # drops the key only once the target has taken it, so a broadcast sent after every
        # answer to the first finds it on the target (a cache's misses pay one round trip more,
        # not a sleep).
        found = yield from _certain(core, key)
    if not found:
        yield from _blame_for_key(core, key)
        raise KeyNotFound(
            f"Key not found: {key!r} (list stored objects with `grid memory list-objects`)"
        )
    return found[0]


def _certain(core: Core, key: str, evicted: list | None = None) -> Op:
    deadline = time.monotonic() + core.settings.request_timeout_s
    while True:
        try:
            return (yield from holders(core, key, certain=True, evicted=evicted))
        except NotCurrent:
            if time.monotonic() > deadline:
                raise
            yield from core.pause(NOT_CURRENT_RETRY_S)


def _blame_for_key(core: Core, key: str) -> Op:
    """``NodeUnavailable`` when the key's home says it lives on a node that is not alive or
    does not answer (the key is not known to be gone); nothing when it does not know."""
    _, node = yield from keyclaims.where(core, key)
    nodes = yield from core.refresh_nodes(max_age_s=core.settings.heartbeat_interval_s)
    if not node:  # the home of the key when every known node was up, if that one is not
        known = [n.name for n in nodes if n.state != DOWN]
        home = keyclaims.home_order(key, known)[:1]
        blamed = unavailable(nodes, home[0] if home else None, set(), f"key {key!r}",
                             where="has its home (which knows where it is) on")
        if blamed is not None:
            raise blamed
        return
    silent: set[str] = set()
    holder = next((n for n in nodes if n.name == node), None)
    if holder is not None and holder.state == ALIVE:
        try:  # alive by its heartbeats: does it answer?
            yield from core.call(holder.address, P.KGET, {"key": key},
                                 timeout_s=core.settings.connect_timeout_s)
        except (KeyNotFound, BlockMoving):
            return
        except NodeUnavailable:
            silent.add(holder.address)
        else:
            return
    blamed = unavailable(nodes, node, silent, f"key {key!r}")
    if blamed is not None:
        raise blamed


