"""Replicas on an agent: the copies of replicated blocks this agent holds, the links to the
peers holding the other copies, writes forwarded and acknowledged, leases, fencing and repair
(the design is ``docs/durability.md``; the pure rules are ``agents/replicas.py``).

- **Sets.** ``copies`` maps a block id to its ``Copy``: the replica set (epoch, members with the
  primary first, members still syncing), the copies asked for and how far apart they must be.
  Only the primary changes a set; it sends the new set (RSET) to every member over the one
  ordered link it keeps to each, before anything else in that epoch.
- **Writes.** A client's change reaches the primary only (a backup answers ``not_current``).
  The primary applies it, forwards it to every other member (RWRITE with the received frame,
  RFREE, RKEYS) and answers the client when all of them have applied it: ``begin``/``hold``/
  ``end`` hold the reply of the request being dispatched until its forwards are acknowledged.
- **Leases.** Every ``LEASE_EVERY_S`` a member asks each peer it shares a set with whether that
  peer still counts it in (LEASE). A reply to a request sent at ``t`` gives a lease until
  ``t + lease_s(dead_after_s)`` on our own monotonic clock; a copy serves reads only while it
  holds a lease from every other complete member. The peer moves on from us only after
  ``dead_after_s`` of silence, so by then our lease is over, even if we were paused.
- **Moving on.** A peer whose heartbeat goes dead, that restarted (a new incarnation), or that
  fails a forwarded change is moved on from: it leaves every set we share (``without``, epoch
  + 1), pending acknowledgements stop waiting for it, and its LEASE and forwarded changes are
  refused from then on (``stale_epoch``), so it drops every copy it shares with us. After a
  gap in our own loop (we were paused, or starved) nobody is moved on from for ``dead_after_s``:
  what we heard during the gap is not news.
- **Repair.** A primary whose set has fewer complete copies than asked places a new one
  (``place``, keeping the members' nodes and failure domains apart), adds it as syncing, and
  pushes the block in chunks (RWRITE) over the same link it forwards writes on, so a chunk can
  never land after a newer write; then it marks the copy synced.

Not here: sockets to clients, the block memory and keys (``agents/store.py``), the write path's
own checks (``agents/server.py``), membership (``mesh/membership.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from agents.lifecycle import Event, State
from agents.replica_links import PeerLinks
from agents.replica_upkeep import Ack, Moving, Push, Upkeep
from agents.replicas import APPLY, ReplicaSet, lease_s, place, verdict
from agents.store import Block, BlockStore
from mesh import protocol as P
from mesh.errors import (
    BlockNotFound, Forbidden, InvalidRequest, MeshError, NotCurrent, PlacementShort, StaleEpoch,
)
from mesh.membership import MembershipTable

log = logging.getLogger("mesh.agent")

MAX_WANT = 16
CURRENT = object()  # _forward's default: acknowledged as part of the request being dispatched


@dataclass
class Copy:
    rset: ReplicaSet
    want: int  # complete copies asked for
    spread: str  # "host" or "node" (agents/replicas.py: place)
    expires: float | None = None  # epoch seconds (a ttl); only the primary sweeps
    pending: bool = False  # made for a put not published yet; only the primary's lease runs
    push: Push | None = None  # the repair this primary runs
    repair_after: float = 0.0
    moving: Moving | None = None  # a MOVE of one copy, done when its push is
    incs: dict[str, int] = field(default_factory=dict)  # members' incarnations (the primary's)
    fence_until: float = float("-inf")  # no change acknowledged before (Upkeep.fence_writes)


class Replication(Upkeep):
    def __init__(self, store: BlockStore, members: MembershipTable, *, node: str,
                 incarnation: int, dead_after_s: float, chunk_bytes: int, domain: str,
                 dial: Callable[[str, str], Any], reply: Callable, reply_error: Callable,
                 drop: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.members = members
        self.node = node
        self.incarnation = incarnation
        self.dead_after_s = dead_after_s
        self.lease_s = lease_s(dead_after_s)
        self.chunk_bytes = chunk_bytes
        self.domain = domain
        self._reply = reply
        self._reply_error = reply_error
        self._drop = drop  # frees a copy of ours that the mesh has moved on from
        self._clock = clock
        self.copies: dict[str, Copy] = {}
        self.links = PeerLinks(members, dial, self.lease_s, self.move_on, clock)
        self.moved_on: dict[str, int] = {}  # node -> the incarnation we moved on from
        self._cur: tuple[Any, P.Request] | None = None  # the request being dispatched
        self._ctx: Ack | None = None
        self._result: dict | None = None
        self._dirty_keys: set[str] = set()
        self._freeing: set[str] = set()  # copies being dropped by us: no RFREE for them
        self._last_tick = clock()
        self._quiet_until = float("-inf")
        self._next_lease = float("-inf")
        self._next_fence = float("-inf")
        self._votes: dict = {}  # node -> the round of SUSPECT questions about it
        self.granted: dict[str, float] = {}  # node -> when we last answered it (a lease)
        self._held: list[Ack] = []  # acknowledgements waiting for a fence
        self.repairs = 0
        self.moved_on_count = 0

    def handlers(self) -> dict[str, Callable[[Any, P.Request], None]]:
        return {P.RSET: self._rset, P.RFREE: self._rfree, P.RKEYS: self._rkeys,
                P.LEASE: self._lease, P.SUSPECT: self._suspect, P.FENCE: self._fence}

    def close(self) -> None:
        self.links.close()

    @property
    def version(self) -> int:
        return self.links.version

    def sockets(self) -> list[zmq.Socket]:
        return self.links.sockets()

    def finish_dials(self) -> None:
        self.links.finish_dials()

    def drain(self, events: dict) -> None:
        self.links.drain(events, self.move_on)  # a peer that lost our session restarted

    @property
    def busy(self) -> bool:
        return self.links.busy or any(c.push is not None for c in self.copies.values())

    def _send(self, node: str, op: str, fields: dict, payload: Any,
              done: Callable[[P.Reply | None], None]) -> None:
        peer = self.links.get(node)
        if peer is None or self.moved_on.get(node) == peer.incarnation:
            done(None)
            return
        self.links.send(peer, op, fields, payload, done)

    # --- what the server asks ------------------------------------------------------------------

    def describe(self, block_id: str) -> dict[str, Any]:
        copy = self.copies.get(block_id)
        if copy is None:
            return {}
        current = copy.rset.current
        return {"nodes": list(current), "epoch": copy.rset.epoch, "replicas": copy.want,
                "syncing": list(copy.rset.syncing),
                "shared_hosts": len({self._domain(m) for m in current}) < len(current)}

    def is_primary(self, block_id: str) -> bool:
        """This agent changes ``block_id`` (its primary, or it has no replicas)."""
        copy = self.copies.get(block_id)
        return copy is None or copy.rset.primary == self.node

    def check_primary(self, block_id: str) -> None:
        """A client's change of ``block_id`` is taken here only by its serving primary."""
        copy = self.copies.get(block_id)
        if copy is None:
            return
        if copy.rset.primary != self.node:
            raise NotCurrent(f"block {block_id} is changed through its primary "
                             f"{copy.rset.primary}, not {self.node}", node=self.node)
        if self._clock() < copy.fence_until:
            raise NotCurrent(f"block {block_id} waits for a former copy's lease to end; retry "
                             "in a moment", node=self.node)
        # No lease needed otherwise: every other member checks our epoch before it applies the
        # change, and a change is acknowledged only once all of them have.

    def check_serving(self, block_id: str) -> None:
        """``NotCurrent`` unless this copy may serve now: complete, and holding a lease from
        every other complete member."""
        copy = self.copies.get(block_id)
        if copy is None:
            return
        if self.node in copy.rset.syncing:
            raise NotCurrent(f"the copy of {block_id} on {self.node} is still being filled",
                             node=self.node)
        now = self._clock()
        for m in copy.rset.current:
            if m != self.node:
                peer = self.links.peers.get(m)
                if peer is None or peer.lease_until <= now:
                    raise NotCurrent(f"the copy of {block_id} on {self.node} has not heard "
                                     f"from {m} lately; retry in a moment", node=self.node)

    # --- holding a client's reply until its forwards are applied ---------------------------------

    def begin(self, identity: Any, req: P.Request) -> None:
        """A request is being dispatched: its reply waits for the changes it forwards. (The
        ``Ack`` is made only when something is forwarded: most requests forward nothing.)"""
        self._cur, self._ctx, self._result = (identity, req), None, None

    def hold(self, identity: Any, req: P.Request, result: dict) -> bool:
        if self._cur is None or self._cur[1] is not req:
            return False
        self._result = result  # sent by ``end``, at once or once the forwards are applied
        return True

    def _context(self) -> Ack | None:
        if self._ctx is None and self._cur is not None:
            self._ctx = Ack(*self._cur)
        return self._ctx

    def end(self, failed: bool) -> None:
        if not failed and self._dirty_keys:
            self._flush_keys(self._context())
        cur, ctx, result = self._cur, self._ctx, self._result
        self._cur = self._ctx = self._result = None
        if failed or result is None or cur is None:
            return  # the server answered with the error, or answers later
        if ctx is None:
            self._reply(cur[0], cur[1], result)
            return
        ctx.result = result
        if not ctx.waiting:
            self._finish(ctx)

    def _forward(self, copy: Copy, block_id: str, op: str, fields: dict, payload: Any = None,
                 ack: Any = CURRENT, to: tuple[str, ...] | None = None,
                 then: Callable[[P.Reply | None], None] | None = None) -> None:
        """Send ``op`` to every other member (or ``to``); the request being dispatched (or
        ``ack``) is answered once each has applied it; ``then`` runs on each answer."""
        if ack is CURRENT:  # the request being dispatched, if any
            ack = self._context()
        base = {"block": block_id, "from": self.node, "inc": self.incarnation, **fields}
        if ack is not None:
            ack.blocks.add(block_id)
        for m in to if to is not None else copy.rset.members:
            if m == self.node:
                continue
            if ack is not None:
                ack.waiting[m] = ack.waiting.get(m, 0) + 1

            def done(reply: P.Reply | None, m: str = m) -> None:
                self._acked(ack, m, reply)
                if then is not None:
                    then(reply)

            self._send(m, op, base, payload, done)

    def _acked(self, ack: Ack | None, node: str, reply: P.Reply | None) -> None:
        if reply is not None and not reply.ok and reply.body.get("code") == StaleEpoch.code:
            # the member has moved on from us: our copies of what we share are not current
            log.warning("%s says we are fenced: dropping the copies shared with it", node)
            if ack is not None:
                ack.fenced = True
            self._fenced_by(node)
        elif reply is not None and not reply.ok and ack is not None and ack.strict:
            ack.error = ack.error or _error(reply, node)
        elif reply is None or not reply.ok:
            why = "gone" if reply is None else reply.body.get("message")
            if node in self.links.peers:  # a member that cannot apply a change is not a copy
                log.warning("%s failed a replicated change (%s): moving on from it", node, why)
                self.move_on(node)
        if ack is None or node not in ack.waiting:
            return
        ack.waiting[node] -= 1
        if ack.waiting[node] <= 0:
            del ack.waiting[node]
        if not ack.waiting and ack.result is not None and ack is not self._ctx:
            self._finish(ack)

    def _finish(self, ack: Ack) -> None:
        now = self._clock()
        if any(now < c.fence_until for b in ack.blocks if (c := self.copies.get(b))):
            self._held.append(ack)  # a former copy may still serve the old bytes (tick)
            return
        frees, ack.then_free = ack.then_free, []
        for block_id, copy in frees:  # (see ``freed``)
            self._forward(copy, block_id, P.RFREE, {"epoch": copy.rset.epoch}, ack=ack)
        if ack.waiting:
            return  # answered when these are applied too
        if ack.error is None and ack.fenced:
            ack.error = NotCurrent(f"node {self.node} is no longer the primary of what this "
                                   "request changed; retry at the current one", node=self.node)
        if ack.error is not None:
            self._reply_error(ack.identity, ack.req, ack.error)
            if ack.strict and ack.block in self.copies:
                try:  # the copies made so far are freed too (RFREE)
                    self.store.free(ack.block)
                except MeshError:
                    pass
        else:
            self._reply(ack.identity, ack.req, ack.result)
        ack.result = None  # answered once

    # --- the changes the server makes ------------------------------------------------------------

    def forward_write(self, block_id: str, offset: int, frame: Any) -> None:
        copy = self.copies.get(block_id)
        if copy is not None and len(copy.rset.members) > 1:
            self._forward(copy, block_id, P.RWRITE, {"epoch": copy.rset.epoch,
                                                     "offset": offset}, frame)

    def created(self, identity: Any, req: P.Request, block: Block, want: int, spread: str,
                result: dict) -> None:
        """A new block (ALLOC with ``replicas``): place its other copies, make them (RSET at
        epoch 1), and answer when they exist; the block is freed if one cannot be made."""
        try:
            placed = place(want - 1, block.size, self._candidates(), spread,
                           exclude=frozenset({self.node}),
                           keep_apart=frozenset({self.domain}) if spread == "host" else
                           frozenset(), placed=1)
        except PlacementShort as exc:
            self.store.free(block.block_id)
            self._reply_error(identity, req, PlacementShort(str(exc), node=self.node))
            return
        rset = ReplicaSet(1, (self.node,) + placed.nodes)
        copy = Copy(rset, want, spread, block.expires,
                    block.lease_until is not None)
        self.copies[block.block_id] = copy
        ack = Ack(identity, req, {**result, **self.describe(block.block_id)}, strict=True,
                  block=block.block_id)
        if placed.shared_hosts:
            ack.result["shared_hosts"] = True
        self._send_set(block.block_id, copy, ack)
        if not ack.waiting:
            self._finish(ack)

    def freed(self, block_id: str) -> None:
        """The store freed ``block_id`` (a client's FREE, a key that owned it, its ttl): the
        other members free theirs, unless we are dropping a copy the mesh moved on from."""
        copy = self.copies.pop(block_id, None)
        if copy is None:
            return
        self._dirty_keys.discard(block_id)
        if block_id in self._freeing or copy.rset.primary != self.node:
            return
        ctx = self._context()
        if ctx is not None:  # after the request's other changes are on every copy: a key
            ctx.then_free.append((block_id, copy))  # replaced away from this block must be
            return  # on its new block's copies before its old block goes from any
        self._forward(copy, block_id, P.RFREE, {"epoch": copy.rset.epoch})

    def keys_changed(self, block_id: str) -> None:
        if block_id in self.copies:
            self._dirty_keys.add(block_id)

    def _flush_keys(self, ack: Ack | None) -> None:
        dirty, self._dirty_keys = self._dirty_keys, set()
        for block_id in dirty:
            copy = self.copies.get(block_id)
            if copy is not None and copy.rset.primary == self.node:
                # with the block's time to live (0: none), which KEXPIRE may have changed
                try:
                    expires = self.store.get(block_id).expires or 0
                except BlockNotFound:
                    expires = 0
                self._forward(copy, block_id, P.RKEYS, {
                    "epoch": copy.rset.epoch, "keys": self.store.key_records(block_id),
                    "expires": expires}, ack=ack)

    # --- a member's side ---------------------------------------------------------------------------

    def _sender(self, req: P.Request) -> str:
        f = req.fields
        sender = f["from"]
        if req.caller is not None and req.caller.name != sender:
            raise Forbidden(f"{req.caller.name!r} cannot speak for node {sender!r}",
                            node=self.node)
        if self.moved_on.get(sender) == f["inc"]:
            raise StaleEpoch(f"{self.node} has moved on from {sender} (incarnation "
                             f"{f['inc']})", node=self.node)
        self.links.get(sender, f["inc"])
        self.granted[sender] = self._clock()  # our answer gives it a lease (replica_links.py)
        return sender

    def accept(self, req: P.Request) -> Block:
        """The block a forwarded change (RWRITE, RFREE, RKEYS) may be applied to, after the
        fencing check: only from the primary of our set, in our epoch."""
        sender = self._sender(req)
        block_id = req.fields["block"]
        copy = self.copies.get(block_id)
        if copy is None:
            raise BlockNotFound(f"no copy of {block_id} on {self.node}", node=self.node)
        said = verdict(copy.rset, sender, req.fields["epoch"])
        if said != APPLY:
            raise StaleEpoch(f"{self.node} refuses {req.op} of {block_id} from {sender} in "
                             f"epoch {req.fields['epoch']}: its set is {copy.rset} ({said})",
                             node=self.node)
        return self.store.get(block_id)

    def _rset(self, identity: Any, req: P.Request) -> None:
        f = req.fields
        sender = self._sender(req)
        block_id = f["block"]
        try:
            new = ReplicaSet.from_record(f["set"])
        except ValueError as exc:
            raise InvalidRequest(f"RSET of {block_id}: {exc}") from None
        copy = self.copies.get(block_id)
        # a set comes from its primary, or from the primary handing its role over (a move)
        if sender != new.primary and (copy is None or sender != copy.rset.primary):
            raise InvalidRequest(f"RSET of {block_id} from {sender}, not its primary")
        want, spread = f["want"], f["spread"]
        if not 1 <= want <= MAX_WANT or spread not in ("host", "node"):
            raise InvalidRequest(f"RSET of {block_id}: want 1..{MAX_WANT}, spread host|node")
        if copy is not None and new.epoch < copy.rset.epoch:
            raise StaleEpoch(f"{self.node} has {block_id} in epoch {copy.rset.epoch}, past "
                             f"{new.epoch}", node=self.node)
        if self.node not in new.members:
            if copy is not None:
                self.drop(block_id, f"{sender} left us out of its set")
            self._reply(identity, req, {"block": block_id, "epoch": new.epoch})
            return
        if copy is None:
            if new.epoch != 1 and self.node not in new.syncing:
                raise BlockNotFound(f"{self.node} holds no copy of {block_id} (it restarted?)",
                                    node=self.node)
            self._make_copy(block_id, f)
            copy = Copy(new, want, spread)  # (its size and times are the block's own)
            self.copies[block_id] = copy
        block = self.store.get(block_id)
        if self.node in copy.rset.syncing and self.node not in new.syncing:
            _serve(block)  # our copy is complete
        was_primary = copy.rset.primary == self.node
        copy.rset, copy.want, copy.spread = new, want, spread
        copy.expires, copy.pending = f.get("expires"), bool(f.get("pending"))
        incs = f.get("incs") or {}
        copy.incs = {m: i for m, i in incs.items() if isinstance(m, str) and type(i) is int}
        if new.primary == self.node and not was_primary:
            self._promote(block_id, copy)  # handed over to us (a move of the primary's copy)
        self._set_keys(block, f["keys"])
        self._reply(identity, req, {"block": block_id, "epoch": new.epoch})

    def _make_copy(self, block_id: str, f: dict) -> None:
        try:
            self.store.get(block_id)
        except BlockNotFound:
            pass
        else:
            raise InvalidRequest(f"{self.node} already holds a block {block_id!r}")
        block = self.store.allocate(f["size"], bool(f["lazy"]), block_id=block_id,
                                    created=float(f["created"]))
        if f["set"].get("epoch") == 1:
            _serve(block)  # a new block: its copies are all zeros, complete from the start

    def _rfree(self, identity: Any, req: P.Request) -> None:
        block_id = req.fields["block"]
        if block_id not in self.copies:  # freed here already (a key replaced on us too)
            self._sender(req)
            self._reply(identity, req, {"block": block_id})
            return
        self.accept(req)
        self.drop(block_id, "")
        self._reply(identity, req, {"block": block_id})

    def _rkeys(self, identity: Any, req: P.Request) -> None:
        block = self.accept(req)
        self._set_keys(block, req.fields["keys"])
        expires = req.fields.get("expires")  # absent: a primary of the previous version
        if expires is not None:  # the time to live this copy takes if it becomes the primary
            self.copies[block.block_id].expires = float(expires) or None
        if req.fields["keys"]:  # published: no longer a pending put's block
            self.copies[block.block_id].pending = False
        self._reply(identity, req, {"block": block.block_id})

    def _set_keys(self, block: Block, records: list) -> None:
        """The block's key records become ``records`` (a backup keeps what its primary has)."""
        names = {r.get("key") for r in records if isinstance(r, dict)}
        for rec in self.store.key_records(block.block_id):
            if rec["key"] not in names:
                self.store.drop_key(rec["key"])
        self.store.follow_keys(block, records, time.time())

    def _lease(self, identity: Any, req: P.Request) -> None:
        f = req.fields
        ok = self.moved_on.get(f["from"]) != f["inc"]
        if ok:
            self.links.get(f["from"], f["inc"])
            self.granted[f["from"]] = self._clock()
        self._reply(identity, req, {"node": self.node, "ok": ok})

    def _fence(self, identity: Any, req: P.Request) -> None:
        """The sender moved on from us: drop every copy we share with it (see ``_readmit``)."""
        sender = req.fields["from"]
        if req.caller is not None and req.caller.name != sender:
            raise Forbidden(f"{req.caller.name!r} cannot speak for node {sender!r}",
                            node=self.node)
        self._fenced_by(sender)
        self._reply(identity, req, {"node": self.node})

    def drop(self, block_id: str, why: str) -> None:
        """Free our copy of ``block_id`` without telling the other members."""
        if why:
            log.warning("dropping the copy of %s: %s", block_id, why)
        self._freeing.add(block_id)
        try:
            self._drop(block_id)
        finally:
            self._freeing.discard(block_id)
            self.copies.pop(block_id, None)

    def _fenced_by(self, node: str) -> None:
        for block_id, copy in list(self.copies.items()):
            if node in copy.rset.members:
                self.drop(block_id, f"{node} has moved on from this node")

def _serve(block: Block) -> None:
    """An incoming copy becomes one that serves."""
    if block.state is State.INCOMING:
        block.advance(Event.COPIED)
    if block.state is State.ARRIVED:
        block.advance(Event.COMMIT)


def _error(reply: P.Reply, node: str) -> MeshError:
    try:
        reply.raise_for_error(node)
    except MeshError as exc:
        return exc
    return MeshError(f"{node} failed")
