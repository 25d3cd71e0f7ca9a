"""Heartbeats in: one SUB link per followed peer, so every heartbeat is known to come from the peer
it names.

A peer is followed by its gossip address and, when known, its node name (the cluster file's
peers, and every node another heartbeat mentions). A link hears only that peer: its heartbeat
must name that node (a member speaks only about itself first-hand); one naming another node is
dropped and counted (``rejected``). On a keyed cluster the link is a CURVE client of the node's
own key from the allow-list (``agents/access.py``), so only the holder of that node's secret can
speak on it, and a node without an agent key in the allow-list is not followed at all (counted).
What a heartbeat says about other nodes (its ``peers``) is hearsay: it introduces nodes, and the
membership rules (``mesh/membership.py``) decide what it may change.

A peer whose own heartbeat says it runs another version of the mesh than this agent is logged
once per (peer, version) as a WARNING ("version skew"), as a client warns (``mesh/client/view.py``).

Heartbeats do not wake the agent's loop: with N peers they would, 2 (N - 1) times a second (the
loop's turn costs more than the heartbeat). ``sockets()`` gives the loop none to poll; ``drain``,
called every turn of the loop (the loop wakes for it: ``drain_in``), takes what every link has
queued, at most every ``DRAIN_EVERY_S`` and 4 times per heartbeat interval (``pace``), with a
fresh clock (docs/scale.md). A heartbeat taken then may have waited since the drain before: a
relayed record's age counts that wait too, else two agents relaying a silent node to each other
would each make it look fresher than the other saw it, and keep it alive for ever.

A link silent for its peer's ``dead_after_s`` (stretched as its heartbeats are:
``MembershipTable.dead_after``) is made again (libzmq drops a link for good when a peer sends
a message over the SUB's size limit, and reconnects by itself only after connection errors), at
most ``RELINKS_PER_BEAT`` per heartbeat.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from mesh import __version__, protocol as P
from mesh import sockets
from mesh.errors import MeshError
from mesh.membership import MembershipTable, is_agent_address

log = logging.getLogger("mesh.agent")

# Gossip links one agent keeps, at most: each is a socket, and a context holds ZMQ_MAX_SOCKETS
# (the agent raises libzmq's 1023 to mesh/sockets.py AGENT_MAX_SOCKETS).
MAX_FOLLOWED_PEERS = 512
RELINKS_PER_BEAT = 16
# Links to nodes known only from hearsay made per heartbeat, at most: a relayed list of 2,000
# made-up members costs a few sockets a beat, not a burst of them (they are mentioned again).
HEARSAY_LINKS_PER_BEAT = 16
# The SUB takes heartbeats up to the protocol's limit, plus room for the topic frame.
HEARTBEAT_SLACK_BYTES = 1024
BATCH = 64  # heartbeats taken per link per loop turn
DRAIN_EVERY_S = 0.1  # the links are looked at no more often than this,
DRAINS_PER_BEAT = 4  # nor more often than this per heartbeat interval of the agent's own


@dataclass
class PeerLink:
    gossip: str
    node: str | None  # None: an address from the cluster file not yet heard from (no keys)
    sock: zmq.Socket
    linked_at: float
    heard_at: float = 0.0


class Gossip:
    def __init__(self, ctx: zmq.Context, node: str, gossip_address: str,
                 members: MembershipTable, access: Any, dead_after_s: float):
        self.ctx = ctx
        self.node = node
        self.gossip_address = gossip_address
        self.members = members
        self.access = access
        self.dead_after_s = dead_after_s
        self.links: dict[str, PeerLink] = {}
        self.by_socket: dict[zmq.Socket, PeerLink] = {}
        self.version = 0  # bumped when the set of sockets changes (the loop polls them)
        self.heard = 0
        self.rejected = 0  # heartbeats naming another node than their link's, or non-members
        self._hearsay_budget = HEARSAY_LINKS_PER_BEAT
        self.skewed: set[tuple[str, str]] = set()  # (peer, its version) warned about
        self._poller: tuple[int, zmq.Poller] | None = None  # (version it was made at, poller)
        self._drained_at = 0.0
        self.drain_every_s = DRAIN_EVERY_S  # ``pace``

    def follow(self, gossip: str, node: str | None, hearsay: bool = False) -> None:
        if gossip == self.gossip_address or node == self.node:
            return
        link = self.links.get(gossip)
        if link is not None:
            if link.node is None and node is not None and not self.access.keyed:
                link.node = node
            return
        if not is_agent_address(gossip) or len(self.links) >= MAX_FOLLOWED_PEERS:
            return
        if hearsay:
            if self._hearsay_budget <= 0:
                return
            self._hearsay_budget -= 1
        server_key = None
        if self.access.keyed:
            server_key = self.access.agent_public(node) if node else None
            if server_key is None:  # not a member: nobody could prove to be it
                self.rejected += 1
                return
        self._link(gossip, node, server_key, time.monotonic())

    def _link(self, gossip: str, node: str | None, server_key: bytes | None, now: float) -> None:
        sock = sockets.subscriber(self.ctx, topic=P.HEARTBEAT_TOPIC,
                                  max_message_bytes=P.MAX_HEARTBEAT_BYTES + HEARTBEAT_SLACK_BYTES)
        if server_key is not None:
            self.access.dial(sock, server_key)
        try:
            sock.connect(gossip)
        except zmq.ZMQError as exc:  # a valid shape libzmq still refuses (IPv6 off, say)
            sock.close(0)
            log.warning("cannot follow gossip at %r: %s", gossip, exc)
            return
        link = PeerLink(gossip, node, sock, linked_at=now)
        self.links[gossip] = link
        self.by_socket[sock] = link
        self.version += 1

    def _unlink(self, link: PeerLink) -> None:
        self.links.pop(link.gossip, None)
        self.by_socket.pop(link.sock, None)
        link.sock.close(0)
        self.version += 1

    def sockets(self) -> list[zmq.Socket]:
        """The sockets the agent's loop should wake for: none (see the module's doc)."""
        return []

    def pace(self, beat_s: float) -> None:
        """The agent beats every ``beat_s`` (stretched in a large mesh, and its peers as much):
        the links are drained ``DRAINS_PER_BEAT`` times in that, at most every
        ``DRAIN_EVERY_S``. A heartbeat then waits at most a quarter of an interval to be taken,
        against the 3 intervals after which its sender is suspect; with 100 agents the loop
        wakes 4 times a second for gossip instead of 10 (docs/scale.md)."""
        self.drain_every_s = max(DRAIN_EVERY_S, beat_s / DRAINS_PER_BEAT)

    def drain_in(self, now: float) -> float:
        """Seconds until the next ``drain`` is due: the loop waits no longer (there is none to
        come while nothing is followed: a long wait)."""
        if not self.by_socket:
            return 60.0
        return max(0.0, self._drained_at + self.drain_every_s - now)

    def drain(self, ready: Any, now: float, guarded: Callable[..., None]) -> None:
        """Take the heartbeats queued on every link (``ready`` and ``now`` of the loop are not
        used: the links are not in its poller, and its clock may be a poll's wait old)."""
        now = time.monotonic()
        if now - self._drained_at < self.drain_every_s or not self.by_socket:
            return
        waited_s = now - self._drained_at if self._drained_at else 0.0
        self._drained_at = now
        if self._poller is None or self._poller[0] != self.version:
            poller = zmq.Poller()
            for sock in self.by_socket:
                poller.register(sock, zmq.POLLIN)
            self._poller = (self.version, poller)
        for sock, _ in self._poller[1].poll(0):
            link = self.by_socket[sock]
            for _ in range(BATCH):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                guarded("a heartbeat", self._heard, link, frames, now, waited_s)

    def _heard(self, link: PeerLink, frames: list[bytes], now: float,
               waited_s: float = 0.0) -> None:
        try:
            rec = P.parse_heartbeat(frames, lambda p: self.members.moot(p, now, waited_s))
        except MeshError:
            self.rejected += 1
            return
        if link.node is None and not self.access.keyed:
            link.node = rec["node"]
        if rec["node"] != link.node or rec["gossip"] != link.gossip:
            self.rejected += 1  # a member speaks only for itself, from its own address
            return
        self.heard += 1
        link.heard_at = now
        version = str(rec.get("version") or "")
        if version and version != __version__ and (rec["node"], version) not in self.skewed:
            self.skewed.add((rec["node"], version))
            log.warning("version skew: peer %s runs mesh %s, this agent runs %s; upgrade them "
                        "to one version", rec["node"], version, __version__)
        # its own record, which it vouches for; then hearsay, which introduces nodes
        for new in self.members.merge_heartbeat(rec, now, waited_s, skip=self.node):
            self.follow(new["gossip"], new["node"], hearsay=new is not rec)

    def relink(self, now: float) -> None:
        """Once a heartbeat: links silent too long are made again (see the module's doc)."""
        self._hearsay_budget = HEARSAY_LINKS_PER_BEAT
        # (no member's dead_after is under dead_after_s: the cheap test first)
        stale = [lk for lk in self.links.values()
                 if (silent := now - max(lk.heard_at, lk.linked_at)) > self.dead_after_s
                 and silent > self._dead_after(lk.node)]
        for link in sorted(stale, key=lambda lk: lk.linked_at)[:RELINKS_PER_BEAT]:
            server_key = self.access.agent_public(link.node) if self.access.keyed else None
            self._unlink(link)
            if self.access.keyed and server_key is None:
                continue  # revoked meanwhile
            self._link(link.gossip, link.node, server_key, now)
            log.info("no heartbeat from %s for %.1f s: connected to it again", link.gossip,
                     now - (link.heard_at or link.linked_at))

    def _dead_after(self, node: str | None) -> float:
        member = self.members.get(node) if node is not None else None
        return self.dead_after_s if member is None else self.members.dead_after(member)

    def close(self) -> None:
        for link in list(self.links.values()):
            self._unlink(link)
