"""The timer half of ``Replication`` (``agents/replication.py``): leases, moving on from dead
or restarted peers, and repairs. ``Upkeep`` is a base class of ``Replication`` and works on its
state (``copies``, ``links``, ``moved_on``, ``members``, ``store``); it is apart only to keep
each module readable.

- ``tick(now)`` runs every loop turn: after a gap in the loop (we were paused or starved) it
  moves on from no one for ``dead_after_s``; then it moves on from peers whose heartbeat went
  dead or who restarted, asks each peer for a lease every ``LEASE_EVERY_S``, and starts or
  resumes repairs where this agent is primary.
- ``move_on(node)``: every set we share with ``node`` goes on without it (epoch + 1); where we
  become primary we take over the block's lifetimes and tell the other members.
- A repair places one new copy (``place``, keeping nodes and failure domains apart), adds it as
  syncing, and pushes the block in chunks over the same ordered link that forwarded writes use,
  ``PUSH_WINDOW`` at a time; when the last chunk is in, the set marks it synced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.replicas import Candidate, place
from mesh import protocol as P
from mesh.errors import (
    BlockMoving, InvalidRequest, MeshError, MoveFailed, NotCurrent, PlacementShort,
)
from mesh.membership import ALIVE, DEAD

if TYPE_CHECKING:
    from agents.replication import Copy

log = logging.getLogger("mesh.agent")

LEASE_EVERY_S = 0.25  # how often a member renews its leases with its peers
PUSH_WINDOW = 4  # chunks of a repair in flight to its target
GAP_S = 1.0  # a loop turn this late means we were paused or starved
REPAIR_RETRY_S = 1.0  # a set that could not be placed is tried again this often
FENCE_EVERY_S = 1.0  # how often a node we moved on from, alive again, is told to drop its copies
VOTE_S = 0.5  # a round of SUSPECT questions is asked again after this, until a majority agrees
RESTARTED, SILENT = "restarted", "silent"


@dataclass
class Ack:
    """A client's request held until every member has applied what it changed."""

    identity: Any
    req: P.Request
    result: dict | None = None
    waiting: dict[str, int] = field(default_factory=dict)  # node -> forwards outstanding
    error: MeshError | None = None
    strict: bool = False  # a member's failure fails the request (a new block's copies)
    block: str = ""  # the new block whose copies a strict ack waits for
    fenced: bool = False  # a member refused the change: the mesh moved on from our copy
    # (block id, Copy) freed by the request: their RFREEs go once the rest is acknowledged
    then_free: list = field(default_factory=list)
    blocks: set = field(default_factory=set)  # the blocks it changed (see Copy.fence_until)


@dataclass
class Moving:
    """A client's MOVE of the copy on ``source`` to ``target``: a repair onto ``target``, then
    the set without ``source``; answered when both are done."""

    identity: Any
    req: P.Request
    source: str
    target: str
    started: float


@dataclass
class Vote:
    until: float
    yes: set[str]


@dataclass
class Push:
    target: str
    epoch: int
    next: int = 0  # the next byte to send
    inflight: int = 0


class Upkeep:
    def tick(self, now: float) -> None:
        if now - self._last_tick > GAP_S:  # we were stopped (or starved): hear the mesh anew
            quiet_s = self.members.longest_dead_after()  # (as long as peers' beats stretch)
            log.warning("the loop was away %.1f s: no one is moved on from for %.1f s",
                        now - self._last_tick, quiet_s)
            self._quiet_until = now + quiet_s
        self._last_tick = now
        if self._held:
            self._release_held(now)
        if self.moved_on and now >= self._next_fence:
            self._next_fence = now + FENCE_EVERY_S
            self._readmit(now)
        if not self.copies:
            return
        shared = {m for c in self.copies.values() for m in c.rset.members} - {self.node}
        if now >= self._quiet_until:
            for node in shared:
                why = self._gone(node, now)
                if why == RESTARTED:
                    self.move_on(node)  # the process that held its copies is gone: no vote
                elif why == SILENT:
                    self._confirm(node, now)
        if now >= self._next_lease:
            self._next_lease = now + LEASE_EVERY_S
            for node in shared:
                self._ask_lease(node, now)
            for block_id, copy in list(self.copies.items()):
                if copy.rset.primary == self.node:
                    self._repair(block_id, copy, now)

    def _readmit(self, now: float) -> None:
        """A node we moved on from that is alive again as the same process (it was paused or
        cut off) may hold copies of sets we left it out of: FENCE tells it to drop every copy
        it shares with us, and once it has, it is a node like any other (a copy target again);
        until then its changes and leases are refused."""
        for node, inc in list(self.moved_on.items()):
            member = self.members.get(node)
            if member is None or member.info.incarnation != inc or \
                    self.members.state(member, now) != ALIVE:
                continue
            peer = self.links.get(node)
            if peer is None:
                continue

            def answered(reply: P.Reply | None, node: str = node, inc: int = inc) -> None:
                if reply is not None and reply.ok and self.moved_on.get(node) == inc:
                    del self.moved_on[node]
                    log.info("%s dropped the copies it shared with us: a copy target again",
                             node)

            self.links.send(peer, P.FENCE, {"from": self.node, "inc": self.incarnation}, None,
                            answered)

    def _gone(self, node: str, now: float) -> str | None:
        member = self.members.get(node)
        peer = self.links.peers.get(node)
        known = [peer.incarnation] if peer is not None else []
        known += [c.incs[node] for c in self.copies.values()
                  if node in c.incs and node in c.rset.members]
        if member is not None and known and member.info.incarnation > min(known):
            return RESTARTED  # (the incarnations a set's primary told us of count too)
        if member is None or self.members.state(member, now) == DEAD:
            return SILENT
        return None

    def _confirm(self, node: str, now: float) -> None:
        """Move on from a silent ``node`` once a majority of the mesh's agents (us included,
        ``node`` counted) have it dead: on the minority side of a partition no one can, so no
        two sides of one set both go on (docs/durability.md: partitions)."""
        vote = self._votes.get(node)
        if vote is not None and now < vote.until:
            return  # a round is out
        member = self.members.get(node)
        inc = member.info.incarnation if member is not None else 0
        agents = [r["node"] for r in self.members.snapshot(now)
                  if (m := self.members.get(r["node"])) is not None and m.vouched]
        need = len(set(agents) | {self.node, node}) // 2 + 1
        vote = Vote(now + VOTE_S, {self.node})
        self._votes[node] = vote

        def answered(voter: str, reply: P.Reply | None) -> None:
            if reply is None or not reply.ok or reply.body.get("dead") is not True:
                return
            vote.yes.add(voter)
            if len(vote.yes) >= need and self._votes.get(node) is vote:
                del self._votes[node]
                log.warning("%d of the mesh's agents have %s dead", len(vote.yes), node)
                self.move_on(node, inc)  # that process, even if it has restarted since

        if len(vote.yes) >= need:  # (never with two agents: one is not a majority of two)
            del self._votes[node]
            self.move_on(node, inc)
            return
        for voter in agents:
            if voter not in (self.node, node):
                self._send(voter, P.SUSPECT, {"node": node, "inc": inc}, None,
                           lambda reply, v=voter: answered(v, reply))

    def _suspect(self, identity: Any, req: P.Request) -> None:
        node, inc = req.fields["node"], req.fields["inc"]
        member = self.members.get(node)
        dead = member is None or member.info.incarnation > inc or \
            self.members.state(member, self._clock()) == DEAD
        self._reply(identity, req, {"node": node, "dead": dead})

    def _ask_lease(self, node: str, now: float) -> None:
        peer = self.links.get(node)
        if peer is None or now - peer.lease_asked < self.lease_s / 2:
            return  # one question at a time, unless it has gone unanswered a while

        asked = now
        peer.lease_asked = asked

        def answered(reply: P.Reply | None) -> None:
            peer.lease_asked = float("-inf")
            if reply is None or not reply.ok:
                return
            if reply.body.get("ok") is False:
                self._fenced_by(node)
            else:
                peer.lease_until = max(peer.lease_until, asked + self.lease_s)

        self._send(node, P.LEASE, {"from": self.node, "inc": self.incarnation}, None, answered)

    def move_on(self, node: str, inc: int | None = None) -> None:
        """``node`` (its incarnation ``inc``; default: the one we know it by) no longer holds
        any copy we share: every set it was in as that process goes on without it. A set made
        with a later process of the same node (it restarted meanwhile) keeps it."""
        peer = self.links.peers.get(node)
        member = self.members.get(node)
        told = [c.incs[node] for c in self.copies.values()
                if node in c.incs and node in c.rset.members]
        if inc is None:
            inc = peer.incarnation if peer is not None else min(told) if told else (
                member.info.incarnation if member is not None else 0)
        if self.moved_on.get(node) == inc:
            return
        self.moved_on[node] = inc
        self.moved_on_count += 1
        log.warning("moving on from %s (incarnation %d)", node, inc)
        for block_id, copy in list(self.copies.items()):
            if copy.incs.get(node, inc) > inc:
                continue  # a copy on its later process
            copy.incs.pop(node, None)
            if node not in copy.rset.members:
                continue
            self.fence_writes(copy, node)
            try:
                new = copy.rset.without(node)
            except ValueError:  # it held the only complete copy: ours is not one
                self.drop(block_id, f"{node} held its only complete copy")
                continue
            copy.rset = new
            if copy.push is not None and copy.push.target == node:
                copy.push = None
            if copy.moving is not None and node in (copy.moving.target, copy.moving.source):
                self._move_failed(block_id, copy, f"{node} was lost during the move")
            if new.primary == self.node:
                self._promote(block_id, copy)
                self._send_set(block_id, copy, None)
        if peer is not None and peer.incarnation <= inc:
            self.links.drop(node)

    def fence_writes(self, copy: Copy, node: str) -> None:
        """``node`` leaves the set while it may still hold a lease we granted (it answered, or
        it failed a change, but was not silent): no change is acknowledged until that lease is
        over, or it could serve a read older than an acknowledged write."""
        copy.fence_until = max(copy.fence_until, self.granted.get(node, float("-inf"))
                               + self.lease_s)

    def _release_held(self, now: float) -> None:
        """Acknowledgements held by a fence (``fence_writes``) whose time is up."""
        held, self._held = self._held, []
        for ack in held:
            self._finish(ack)

    def _promote(self, block_id: str, copy: Copy) -> None:
        """We are the primary now: ours are the lifetimes (a ttl, a pending put's lease)."""
        block = self.store.get(block_id)
        if copy.expires is not None and block.expires_at is None:
            self.store.set_lifetime(block, copy.expires, copy.pending)
        elif copy.pending and block.lease_until is None:
            self.store.set_lifetime(block, None, True)
        copy.push = None  # a fill another primary began starts again from us (_repair)

    def _send_set(self, block_id: str, copy: Copy, ack: Ack | None,
                  to: tuple[str, ...] | None = None) -> None:
        block = self.store.get(block_id)
        fields = {"set": copy.rset.record(), "size": block.size, "lazy": block.lazy,
                  "created": block.created, "want": copy.want, "spread": copy.spread,
                  "keys": self.store.key_records(block_id),
                  "pending": block.lease_until is not None if copy.rset.primary == self.node
                  else copy.pending,
                  "incs": {self.node: self.incarnation, **{
                      m: p.incarnation for m in copy.rset.members
                      if m != self.node and (p := self.links.get(m)) is not None}}}
        copy.incs = dict(fields["incs"])
        if block.expires is not None:
            fields["expires"] = block.expires
        # members left out (moved on from) get nothing: they drop their copies on their own
        self._forward(copy, block_id, P.RSET, fields, ack=ack, to=to)

    def _candidates(self) -> list[Candidate]:
        now = self._clock()
        out = []
        for rec in self.members.snapshot(now):
            if rec["state"] != ALIVE or rec["node"] == self.node or \
                    self.moved_on.get(rec["node"]) == rec["incarnation"]:
                continue
            out.append(Candidate(rec["node"], rec.get("domain") or rec["node"],
                                 int(rec.get("room", 0))))
        return out

    def _repair(self, block_id: str, copy: Copy, now: float) -> None:
        if copy.push is not None:
            if copy.push.inflight == 0:  # (re)start it; otherwise it goes on as chunks land
                self._push(block_id, copy)
            return
        if copy.rset.syncing:  # a fill another primary began: ours starts from the start
            copy.push = Push(copy.rset.syncing[0], copy.rset.epoch)
            self._push(block_id, copy)
            return
        if len(copy.rset.members) >= copy.want or now < copy.repair_after or \
                now < self._quiet_until:
            return
        domains = {self._domain(m) for m in copy.rset.members}
        try:
            placed = place(1, self.store.get(block_id).size, self._candidates(), copy.spread,
                           exclude=frozenset(copy.rset.members),
                           keep_apart=frozenset(domains) if copy.spread == "host" else
                           frozenset())
        except PlacementShort as exc:
            copy.repair_after = now + REPAIR_RETRY_S
            log.warning("cannot repair %s yet: %s", block_id, exc)
            return
        target = placed.nodes[0]
        copy.rset = copy.rset.with_member(target)
        copy.push = Push(target, copy.rset.epoch)
        self.repairs += 1
        log.info("repairing %s: a copy on %s (epoch %d)", block_id, target, copy.rset.epoch)
        self._send_set(block_id, copy, None)
        self._push(block_id, copy)

    def _domain(self, node: str) -> str:
        if node == self.node:
            return self.domain
        member = self.members.get(node)
        return (member.info.domain or node) if member is not None else node

    def _push(self, block_id: str, copy: Copy) -> None:
        """Send the repair's next chunks; when every chunk is in, the copy is synced."""
        push = copy.push
        if push is None or block_id not in self.copies:
            return
        block = self.store.get(block_id)

        def pushed(reply: P.Reply | None) -> None:
            push.inflight -= 1
            if copy.push is push and reply is not None and reply.ok:
                self._push(block_id, copy)

        while push.inflight < PUSH_WINDOW and push.next < block.size:
            offset, n = push.next, min(self.chunk_bytes, block.size - push.next)
            push.next += n
            push.inflight += 1
            # a copy, not a view: the block may be freed (unmapped) before libzmq has sent it
            self._forward(copy, block_id, P.RWRITE, {"epoch": copy.rset.epoch, "offset": offset},
                          bytes(block.view[offset:offset + n]), ack=None, to=(push.target,),
                          then=pushed)
            if copy.push is not push:
                return  # the target failed at once
        if push.next >= block.size and push.inflight == 0 and copy.push is push:
            copy.push = None
            copy.rset = copy.rset.synced(push.target)
            log.info("repaired %s: %s holds a complete copy (epoch %d)", block_id, push.target,
                     copy.rset.epoch)
            if copy.moving is not None and copy.moving.target == push.target:
                self._move_done(block_id, copy)
            else:
                self._send_set(block_id, copy, None)

    # --- moving one copy (MOVE of a replicated block; rebalancing and draining) ---------------

    def move(self, identity: Any, req: P.Request, target: str) -> None:
        """Move the copy on ``req.fields["source"]`` (default: ours) to ``target``: a copy is
        made there first, so the block never has fewer copies than before."""
        block_id = req.fields["block"]
        copy = self.copies[block_id]
        source = req.fields.get("source") or self.node
        if copy.rset.primary != self.node:
            raise NotCurrent(f"block {block_id} is moved by its primary {copy.rset.primary}",
                             node=self.node)
        if source not in copy.rset.current:
            raise InvalidRequest(f"node {source} holds no current copy of {block_id}")
        if target in copy.rset.members:
            raise InvalidRequest(f"node {target} holds a copy of {block_id} already")
        kept = {self._domain(m) for m in copy.rset.members if m != source}
        if copy.spread == "host" and self._domain(target) in kept:
            raise InvalidRequest(f"node {target} is on the same machine as another copy of "
                                 f"{block_id} (spread 'host')")
        if copy.push is not None or copy.moving is not None:
            raise BlockMoving(f"a copy of {block_id} is being made; retry in a moment",
                              node=self.node)
        copy.moving = Moving(identity, req, source, target, self._clock())
        copy.rset = copy.rset.with_member(target)
        copy.push = Push(target, copy.rset.epoch)
        self._send_set(block_id, copy, None)
        self._push(block_id, copy)

    def _move_done(self, block_id: str, copy: Copy) -> None:
        m, copy.moving = copy.moving, None
        copy.rset = copy.rset.without(m.source)
        result = {"block": block_id, "from": m.source, "to": m.target, "size": self.store.get(block_id).size,
                  "nodes": list(copy.rset.current), "epoch": copy.rset.epoch,
                  "seconds": self._clock() - m.started}
        ack = Ack(m.identity, m.req, result)
        to = copy.rset.members + ((m.source,) if m.source != self.node else ())
        if m.source != self.node:
            self.fence_writes(copy, m.source)  # it serves until it has our new set
        self._send_set(block_id, copy, ack, to=to)  # the source, left out, drops its copy
        if m.source == self.node:  # handed over: the next member is primary
            self.drop(block_id, "")
        if not ack.waiting:
            self._finish(ack)
        log.info("moved the copy of %s on %s to %s", block_id, m.source, m.target)

    def _move_failed(self, block_id: str, copy: Copy, why: str) -> None:
        m, copy.moving = copy.moving, None
        self._reply_error(m.identity, m.req, MoveFailed(
            f"moving the copy of {block_id} on {m.source} to {m.target} failed, the copies "
            f"are intact on {', '.join(copy.rset.current)}: {why}", node=self.node))


