"""The links an agent keeps to the peers it shares replicated blocks with (``PeerLinks``), used by
``agents/replication.py``: one DEALER per peer (sealed on a keyed cluster), made on a worker
thread (a handshake blocks), polled by the agent's loop.

Every message to a peer goes through ``send`` with a callback that gets the peer's reply, or
None when there will be none (the peer is dropped, its queue is full, the link failed). One
link per peer keeps messages in the order they were sent; what cannot be sent yet (no link
yet, or the link's high-water mark) waits in a bounded queue, in order. An answer that took a
change (``RENEWING``) renews the peer's lease: it counted us in when it did.

Not here: what the messages mean (``agents/replication.py``), the sockets' options
(``mesh/sockets.py``), handshakes (``mesh/security/link.py``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import zmq

from mesh import protocol as P
from mesh.errors import SealError, SessionLost
from mesh.membership import MembershipTable

log = logging.getLogger("mesh.agent")

QUEUE_MAX = 4096  # messages waiting for a peer's link; past that, sends fail (None)
DRAIN_BATCH = 256  # replies read from one peer per loop turn

Done = Callable[[P.Reply | None], None]
# The answers that give the asker a lease: the peer took a change from it (and records when,
# ``Replication.granted``, to fence writes after leaving it out: replica_upkeep.py)
RENEWING = frozenset({P.RSET, P.RWRITE, P.RFREE, P.RKEYS})


class Peer:
    def __init__(self, node: str, address: str, incarnation: int):
        self.node = node
        self.address = address
        self.incarnation = incarnation
        self.link: Any = None
        self.dialing: Future | None = None
        self.queue: deque[tuple[int, list[Any], Done]] = deque()
        self.waiting: dict[int, Done] = {}
        self.lease_until = float("-inf")
        self.lease_asked = float("-inf")  # when the LEASE question in flight was sent


class PeerLinks:
    def __init__(self, members: MembershipTable, dial: Callable[[str, str], Any],
                 lease_s: float, restarted: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.members = members
        self._restarted = restarted  # told before a restarted peer's link is replaced
        self._dial = dial  # (node, address) -> a link (PlainLink or SealedLink); may block
        self.lease_s = lease_s
        self._clock = clock
        self.peers: dict[str, Peer] = {}
        self._ids = itertools.count(1)
        self._dialer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="replica-link")
        self.version = 0  # bumps when the set of sockets changes (the loop polls anew)

    def close(self) -> None:
        self._dialer.shutdown(wait=False, cancel_futures=True)
        for peer in self.peers.values():
            if peer.link is not None:
                peer.link.unwatch(lambda sock: sock.close(0))
                peer.link.sock.close(0)

    def get(self, node: str, incarnation: int | None = None) -> Peer | None:
        """The peer ``node`` (made when the membership table knows it); a newer incarnation
        than the peer's (it restarted) replaces it."""
        peer = self.peers.get(node)
        member = self.members.get(node)
        if member is None:
            return peer
        inc = member.info.incarnation if incarnation is None else incarnation
        if peer is not None and inc > peer.incarnation:
            self._restarted(node)  # its copies died with the old process
            self.drop(node)  # a new link to the new process
            peer = None
        if peer is None:
            peer = Peer(node, member.info.address, inc)
            self.peers[node] = peer
        return peer

    def drop(self, node: str) -> None:
        """Forget ``node``'s link; whatever waited for its answers gets None."""
        peer = self.peers.pop(node, None)
        if peer is None:
            return
        callbacks = list(peer.waiting.values()) + [cb for *_, cb in peer.queue]
        peer.waiting.clear()
        peer.queue.clear()
        if peer.link is not None:
            peer.link.unwatch(lambda sock: sock.close(0))
            peer.link.sock.close(0)
            self.version += 1
        for cb in callbacks:
            cb(None)

    def send(self, peer: Peer, op: str, fields: dict, payload: Any, done: Done) -> None:
        if len(peer.queue) + len(peer.waiting) >= QUEUE_MAX:  # it stopped answering
            done(None)
            return
        rid = next(self._ids)
        header = P.encode_request(op, rid, fields)
        frames = [header] if payload is None else [header, payload]
        sent = self._clock()

        def answered(reply: P.Reply | None) -> None:
            if reply is not None and reply.ok and op in RENEWING:
                peer.lease_until = max(peer.lease_until, sent + self.lease_s)
            done(reply)

        peer.queue.append((rid, frames, answered))
        self._flush(peer)

    def _flush(self, peer: Peer) -> None:
        if peer.link is None:
            if peer.dialing is None:
                peer.dialing = self._dialer.submit(self._dial, peer.node, peer.address)
            return
        while peer.queue:
            rid, frames, done = peer.queue[0]
            try:
                peer.link.send(frames)
            except zmq.Again:
                return
            except zmq.ZMQError:
                peer.queue.popleft()
                done(None)
                continue
            peer.queue.popleft()
            peer.waiting[rid] = done

    def sockets(self) -> list[zmq.Socket]:
        return [p.link.sock for p in self.peers.values() if p.link is not None]

    @property
    def busy(self) -> bool:
        return any(p.dialing is not None or p.queue for p in self.peers.values())

    def finish_dials(self) -> None:
        for peer in list(self.peers.values()):
            if peer.dialing is None or not peer.dialing.done():
                continue
            future, peer.dialing = peer.dialing, None
            try:
                link = future.result()
            except Exception as exc:
                log.warning("no link to %s: %s", peer.node, exc)
                self.drop(peer.node)
                continue
            if self.peers.get(peer.node) is not peer:  # dropped meanwhile
                link.unwatch(lambda sock: sock.close(0))
                link.sock.close(0)
                continue
            peer.link = link
            self.version += 1
            self._flush(peer)

    def drain(self, events: dict, lost: Callable[[str], None]) -> None:
        """Read the replies that arrived; ``lost(node)`` when a peer no longer knows our
        session (it restarted)."""
        for peer in list(self.peers.values()):
            if peer.link is None or peer.link.sock not in events:
                continue
            for _ in range(DRAIN_BATCH):
                try:
                    frames = peer.link.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    reply = P.parse_reply(peer.link.open(frames))
                except SessionLost:
                    lost(peer.node)
                    break
                except (SealError, P.ProtocolError):
                    continue
                done = peer.waiting.pop(reply.request_id, None)
                if done is not None:
                    done(reply)
                if self.peers.get(peer.node) is not peer:
                    break  # the answer made us drop this peer (and close its socket)
            if self.peers.get(peer.node) is peer:
                self._flush(peer)
