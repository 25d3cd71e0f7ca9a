"""The mesh-agent's event loop: one thread serving the ROUTER, the PUB and the SUB sockets.

Covers: binding the sockets (made by ``mesh/sockets.py``), dispatching parsed requests to their
handlers, heartbeats and gossip, and counting every request and reply for the metrics
(``agents/metrics.py``, served over HTTP on the node's ``metrics_port``).

Does not cover: MANY, many sub-ops in one message (``agents/many.py``), the data-plane
handlers (``agents/blockops.py``: ALLOC, FREE, WRITE, READ,
STAT, LIST, MOVE, key changes), the answers about the agent (``agents/info.py``), frame formats (``mesh/protocol.py``), capacity, bounds and key rules
(``agents/store.py``), a block's lifecycle (``agents/lifecycle.py``), writes waiting for
zero-copy reads (``agents/writegate.py``), moving blocks peer to peer (``agents/moves.py``:
MOVE, PULL, COMMIT, ABORT), keys, roles and sealed sessions (``agents/access.py``), the gossip
links (``agents/gossip.py``), membership rules (``mesh/membership.py``), configuration and
process start-up (``agents/main.py``).

On a keyed cluster a request arrives either over CURVE on the data ROUTER (its sender known by
key) or sealed on the session ROUTER; a request's ``identity`` is then the ROUTER identity
(bytes) or its ``Session``, and ``_send`` seals what goes to a session.

Every request is answered or dropped; none can stop the loop. Errors from the store are
``MeshError``s and go back as error replies; anything else is logged and answered "internal".
"""

from __future__ import annotations

import functools
import logging
import math
import resource
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from agents.blockops import BlockOps, _PendingAlloc
from agents.access import DATA_DOMAIN, GOSSIP_DOMAIN, Access, Session
from agents.gossip import Gossip
from agents.ledger import PromiseLedger, default_path as ledger_default_path
from agents.keyhome import KeyHomes
from agents.info import InfoOps
from agents.peering import Dialing
from agents.eviction import Evictor
from agents.keyops import KeyOps
from agents.many import ManyOps, Slot
from agents.lifecycle import Event, State
from agents.backing import MEMFDS, memfd_budget
from agents.limits import FD_RESERVE_MIN, ConnectionGuard, connection_cap
from agents.direct import DirectServer
from agents.local import LocalServer
from agents import logs, metrics
from agents.metrics import Endpoint, Metrics
from agents.moves import PeerCopies
from agents.replication import Replication
from agents.store import BlockStore, populate
from agents.writegate import WriteGate
from mesh import protocol as P
from mesh.spin import AGENT_SPIN_S, CAN_SPIN, spin_poll
from mesh import sockets
from mesh.errors import (
    AgentError, DeadlineExceeded, MeshError,
)
from mesh.hostmem import HostMemoryReader
from mesh.machine import kernel_key
from mesh.membership import ALIVE, DEAD, MembershipTable, stretched_interval
from mesh.security import link as links
from mesh.security import seal

log = logging.getLogger("mesh.agent")

# Messages handled per socket per loop turn, so heartbeats go out on time under load.
_BATCH = 64
_SENT = zmq.MessageTracker()  # what _send returns for a copied message: done, nothing to track
# The loop's longest sleep while allocations or peer copies are finishing on other threads, and
# while writes wait for zero-copy reads to leave libzmq.
JOBS_POLL_S = 0.005
TICK_S = 0.05  # the connection guard's and the pins' timers run at most this often
DEFERRED_POLL_S = 0.001
LOGGED_LOOP_ERRORS = 100  # with a traceback each; after that one in a thousand


@dataclass
class AgentSettings:
    node: str
    bind_ip: str
    data_port: int
    gossip_port: int
    advertised_host: str
    peers: list[str]  # gossip addresses of other agents known from the config
    share_bytes: int | None
    reserve_bytes: int
    heartbeat_interval_s: float
    suspect_after_s: float
    dead_after_s: float
    max_message_bytes: int
    chunk_bytes: int  # the cluster's ``mesh.chunk_bytes``: a pull READs its copy in these
    version: str
    sndhwm: int = 256
    rcvhwm: int = 256
    # the host's promise ledger (agents/ledger.py); None: the default path for this user
    ledger_path: str | None = None
    lease_s: float = 30.0  # the cluster's ``mesh.lease_s`` (agents/store.py: leases)
    eviction_policy: str = "lru"  # the cluster's ``mesh.eviction_policy`` (agents/eviction.py)
    peer_nodes: dict[str, str] | None = None  # gossip address -> node name, of ``peers``
    keys: Any = None  # the cluster's KeyDir (mesh/security/keys.py): None runs without keys
    sealed_port: int = 0  # where sealed sessions are served on a keyed agent (0: any free port)
    insecure: bool = False  # bound beyond loopback without keys, on purpose (shown in STATS)
    domain: str = ""  # the failure domain (machine) replicas keep apart; "" -> the node name
    metrics_port: int = 0  # where /metrics is served (0: not served)
    local_access: bool = True  # blocks in memfds, served to clients on this host (agents/local.py)
    direct_tcp: bool = True  # reads and writes over plain TCP beside ZeroMQ (agents/direct.py)
    # the cluster's ``mesh.heartbeat_intake_per_s``: past it, beat less often (membership.stretch)
    heartbeat_intake_per_s: float = 100.0
    heartbeat_host_intake_per_s: float = 2500.0  # the same for all the agents of one machine
    direct_port: int = 0  # its port (the cluster file's direct_port: mesh_port + 3); 0: any free

    def __post_init__(self) -> None:
        # a pull asks its source (same cluster file, same limit) for chunks of chunk_bytes
        if not 0 < self.chunk_bytes <= self.max_message_bytes:
            raise ValueError(f"chunk_bytes ({self.chunk_bytes}) must be positive and fit in "
                             f"max_message_bytes ({self.max_message_bytes})")


class Agent(BlockOps, InfoOps, Dialing, ManyOps):
    def __init__(self, settings: AgentSettings, ctx: zmq.Context | None = None):
        self.s = settings
        self.incarnation = time.time_ns() // 1000
        self.address = f"tcp://{settings.advertised_host}:{settings.data_port}"
        self.gossip_address = f"tcp://{settings.advertised_host}:{settings.gossip_port}"
        # writes wait here for zero-copy reads of the same range; a freed block's reads hold none
        self.gate = WriteGate(settings.node)
        self.host_memory = HostMemoryReader()  # every heartbeat and allocation reads it
        self.host_key = kernel_key()  # agents with the same share CPUs (stretched_interval)
        self.store = BlockStore(
            settings.node,
            self.incarnation,
            settings.share_bytes,
            settings.reserve_bytes,
            memory_fn=self.host_memory,
            on_free=self._freed,
            ledger=PromiseLedger(settings.ledger_path or ledger_default_path(None), settings.node),
            lease_s=settings.lease_s,
            shared=settings.local_access,
        )
        self.members = MembershipTable(settings.suspect_after_s, settings.dead_after_s,
                                       heartbeat_interval_s=settings.heartbeat_interval_s)
        self.beat_s = settings.heartbeat_interval_s  # until the next heartbeat (_beat stretches it)
        self.homes = KeyHomes(settings.node)  # claims and places of the keys homed here
        self.ctx = ctx or zmq.Context.instance()
        self.ctx.max_sockets = max(self.ctx.max_sockets, sockets.AGENT_MAX_SOCKETS)
        self.access = Access(self.ctx, settings.keys, settings.node)
        self.gossip = Gossip(self.ctx, settings.node, self.gossip_address, self.members,
                             self.access, settings.dead_after_s)
        self.sealed: zmq.Socket | None = None
        self.sealed_port = 0  # a client reaches it at the host it reached the data port at
        self._populator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="populate")
        self._pending: dict[Future, _PendingAlloc] = {}
        self._stopping = False
        self.dropped_replies = 0
        self.loop_errors = 0  # failures the loop survived (logged; see _guarded)
        self.late_requests = 0  # refused because their client had given up (deadline passed)
        self.reads_served = 0  # READs answered (STATS)
        self.beats_sent = 0
        self.metrics = Metrics(settings.node, settings.version)
        self.metrics_endpoint = Endpoint(self.metrics)
        self.local = LocalServer(self)  # the same-host path
        self.direct = DirectServer(self)  # plain TCP beside ZeroMQ, without keys
        # moves and pulls run in threads with sockets of their own; the loop finishes them
        self.moves = PeerCopies(
            self.store, node=settings.node, address=self.address,
            chunk_bytes=settings.chunk_bytes,
            connect=self._dial_peer,
            populate=functools.partial(self._populator.submit, populate),
            reply=self._reply, reply_error=self._reply_error, member=self._member_node,
        )
        self.repl = Replication(
            self.store, self.members, node=settings.node, incarnation=self.incarnation,
            dead_after_s=settings.dead_after_s, chunk_bytes=settings.chunk_bytes,
            domain=settings.domain or settings.node, dial=self._dial_link,
            reply=self._send_reply, reply_error=self._reply_error, drop=self._drop_copy)
        self.evictor = Evictor(self.store, settings.node, settings.eviction_policy)
        self.keyops = KeyOps(self.store, self.homes, settings.node, self._reply,
                             self.repl.describe, self.evictor)
        keyops = self.keyops.handlers()
        self._move_one_copy = self.moves.handlers()[P.MOVE]
        self._handlers: dict[str, Callable[[bytes, P.Request], None]] = {
            P.HELLO: self._hello,
            P.PING: self._ping,
            P.ALLOC: self._alloc,
            P.FREE: self._free,
            P.WRITE: self._write,
            P.READ: self._read,
            P.STAT: self._stat,
            P.LIST: self._list,
            P.STATS: self._stats,
            P.NODES: self._nodes,
            P.RENEW: self._renew,
            **keyops,
            P.KPUT: self._key_change(keyops[P.KPUT]),
            P.KDEL: self._key_change(keyops[P.KDEL]),
            P.KEXPIRE: self._key_change(keyops[P.KEXPIRE]),
            P.KGET: self._kget,
            **self.repl.handlers(),
            P.RWRITE: self._write,
            P.SESSION: self._session,
            P.TRUST: self._trust,
            **self.moves.handlers(),
            P.MOVE: self._move,
            P.MANY: self._many,
            P.RANGES: self._ranges,
            P.LOCAL: self._local,
            P.DIRECT: lambda identity, req: self._reply(identity, req,
                                                        {"port": self.direct.port}),
        }

    # --- sockets ------------------------------------------------------------------------------

    def bind(self) -> None:
        s = self.s
        self.access.start()  # the ZAP handler, on a keyed cluster
        data = f"tcp://{s.bind_ip}:{s.data_port}"
        self.router = sockets.router(
            self.ctx, data, sndhwm=s.sndhwm, rcvhwm=s.rcvhwm,
            max_message_bytes=s.max_message_bytes,
            prepare=functools.partial(self.access.serve, domain=DATA_DOMAIN))
        self.pub = sockets.publisher(self.ctx, f"tcp://{s.bind_ip}:{s.gossip_port}",
                                     prepare=functools.partial(self.access.serve,
                                                               domain=GOSSIP_DOMAIN))
        listeners = [(self.router, data, "data"),
                     (self.pub, f"tcp://{s.bind_ip}:{s.gossip_port}", "gossip")]
        if self.access.keyed:
            # sealed sessions: NULL mechanism, every message AES-GCM under its session's key
            self.sealed = sockets.router(
                self.ctx, f"tcp://{s.bind_ip}:{s.sealed_port or '*'}", sndhwm=s.sndhwm,
                rcvhwm=s.rcvhwm,
                max_message_bytes=s.max_message_bytes + links.SEALED_OVERHEAD_BYTES)
            port = self.sealed.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
            self.sealed_port = int(port)
            listeners.append((self.sealed, f"tcp://{s.bind_ip}:{port}", "sealed"))
        # accepted connections stay below the descriptor limit (agents/limits.py)
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.guard = ConnectionGuard(self.ctx, listeners, connection_cap(fd_limit))
        # blocks in memfds take the descriptors left beside connections (agents/backing.py)
        MEMFDS.budget = memfd_budget(fd_limit, connection_cap(fd_limit), FD_RESERVE_MIN)
        names = s.peer_nodes or {}
        for peer in s.peers:
            self.gossip.follow(peer, names.get(peer))
        # bound like the data port; an agent that cannot serve it still serves data (logged)
        self.metrics_endpoint.start(s.bind_ip, s.metrics_port, s.advertised_host)
        if s.local_access:
            self.local.bind(self.address)
        if s.direct_tcp and not self.access.keyed:  # (keyed: every byte is sealed, on ZeroMQ)
            self.direct.bind(s.bind_ip, s.direct_port)
            self.moves.direct = self.direct.port > 0

    def close(self) -> None:
        self.stop()
        self._populator.shutdown(wait=True, cancel_futures=True)
        self.moves.close()
        self.repl.close()
        self.guard.close()
        self.gossip.close()
        for sock in (self.router, self.pub, self.sealed):
            if sock is not None:
                sock.close(linger=0)
        self.access.close()
        self.local.close()
        self.direct.close()
        self.metrics_endpoint.close()
        self.store.close()

    def _freed(self, block_id: str) -> None:
        self.gate.forget(block_id)
        self.repl.freed(block_id)

    def _drop_copy(self, block_id: str) -> None:
        """Free a copy the mesh has moved on from (or that a repair was filling)."""
        block = self.store.get(block_id)
        filling = block.state in (State.INCOMING, State.CANCELLED, State.ARRIVED)
        self.store.free(block_id, Event.DROP if filling else Event.FREE)

    def stop(self) -> None:
        self._stopping = True
        self.moves.stop()  # moves and pulls see it within a poll slice and give up

    # --- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        poller, polled = self._poller(), self._polled()
        next_beat = next_tick = time.monotonic()
        log.info(
            "agent %s serving %s (gossip %s), incarnation %d",
            self.s.node, self.address, self.gossip_address, self.incarnation,
        )
        # Every phase is guarded: whatever one message, one peer or the host does (EMFILE,
        # a libzmq error, a bug), the loop logs it, counts it and goes on serving.
        guarded = self._guarded
        spin = False  # work comes in quick succession: poll a moment before sleeping (mesh/spin.py)
        while not self._stopping:
            if polled != self._polled():  # links came or went
                poller, polled = self._poller(), self._polled()
            now = time.monotonic()
            guarded("replicas", self.repl.tick, now)
            if now >= next_beat:
                guarded("heartbeat", self._beat, now)
                next_beat = max(next_beat + self.beat_s, now + self.beat_s / 2)
            if now >= next_tick:  # (timers of a second and more: not every turn)
                next_tick = now + TICK_S
                guarded("connection guard", self.guard.tick, now)
                guarded("same-host path", self.local.tick, now)
                guarded("direct path", self.direct.tick, now)
            # heartbeats do not wake the loop (agents/gossip.py): it looks at them this often
            timeout_s = min(next_beat - now, self.gossip.drain_in(time.monotonic()))
            if self._pending or self.moves.busy or self.repl.busy:
                timeout_s = min(timeout_s, JOBS_POLL_S)
            if self.gate.waiting:
                timeout_s = min(timeout_s, DEFERRED_POLL_S)
            rebind_s = self.guard.wake_in(now)
            if rebind_s is not None:
                timeout_s = min(timeout_s, rebind_s)
            try:
                waiting_from = time.perf_counter()  # (a short wait: spin before the next one)
                events = dict(spin_poll(poller.poll, AGENT_SPIN_S)) if spin else {}
                if not events:
                    # rounded up: a wait cut short of what is due would turn again at once
                    events = dict(poller.poll(max(0, math.ceil(timeout_s * 1000))))
                spin = CAN_SPIN and time.perf_counter() - waiting_from <= AGENT_SPIN_S and \
                    any(type(sock) is not zmq.Socket for sock in events)
            except zmq.ZMQError:
                self._survived("poll")
                time.sleep(DEFERRED_POLL_S)  # a poll that keeps failing must not spin
                continue
            if any(m in events for m in self.guard.monitors):
                guarded("connection guard", self.guard.check, now)
            if self.router in events:
                guarded("requests", self._drain_router)
            if self.sealed is not None and self.sealed in events:
                guarded("sealed requests", self._drain_sealed)
            guarded("gossip", self.gossip.drain, events, now, guarded)
            guarded("same-host path", self.local.drain, events)
            guarded("direct path", self.direct.drain, events)
            guarded("replica links", self.repl.finish_dials)
            guarded("replica replies", self.repl.drain, events)
            if self._pending:
                guarded("allocations", self._finish_allocations)
            if self.moves.busy:
                guarded("moves", self.moves.finish_jobs)
            if self.gate.waiting:
                guarded("deferred writes", self.gate.retry, self._dispatch_deferred)

    def _polled(self) -> tuple[int, int, int, int]:
        return self.gossip.version, self.repl.version, self.local.version, self.direct.version

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        for sock in [self.router, self.sealed, *self.gossip.sockets(), *self.guard.monitors,
                     *self.repl.sockets(), *self.local.sockets(), *self.direct.sockets()]:
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        return poller

    def _guarded(self, phase: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._survived(phase)

    def _survived(self, phase: str) -> None:
        """Count (and log, sparingly) the exception being handled; the loop goes on."""
        self.loop_errors += 1
        if self.loop_errors <= LOGGED_LOOP_ERRORS or self.loop_errors % 1000 == 0:
            log.exception("agent loop: %s failed (%d errors so far); going on", phase,
                          self.loop_errors)

    def _drain_router(self) -> None:
        for _ in range(_BATCH):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            try:
                request = P.parse_request(frames[1:])
            except P.BadRequest as bad:
                self._refuse(identity, bad)
                continue
            self._arrived(request)
            if self.access.keyed:
                request.caller = self.access.caller_of(frames[1])
            self._dispatch(identity, request)

    def _drain_sealed(self) -> None:
        for _ in range(_BATCH):
            try:
                frames = self.sealed.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            try:
                session, caller, inner = self.access.open(identity, frames[1:])
            except seal.SessionLost:  # unsealed, so it says only "shake hands again"
                self._send(identity, seal.no_session(seal.session_of(frames[1:])), sealed=True)
                continue
            except seal.SealError:
                continue  # garbage, tampered, replayed or another session's: dropped, counted
            try:
                request = P.parse_request(inner)
            except P.BadRequest as bad:
                self._refuse(session, bad)
                continue
            self._arrived(request)
            request.caller = caller
            self._dispatch(session, request)

    def _arrived(self, request: P.Request) -> None:
        request.arrived = time.perf_counter()
        self.metrics.arrived(request.op, sum(len(f) for f in request.payload))

    def _refuse(self, identity: bytes | Session, bad: P.BadRequest) -> None:
        """Answer a request that did not parse (its op as well as it could be read)."""
        op = metrics.unknown_op(bad.op)
        self.metrics.arrived(op, 0)
        self.metrics.replied(op, bad.code, 0.0)
        self._send(identity, [P.encode_error(bad.op, bad.request_id, bad.code, bad.message)])

    def _dispatch(self, identity: bytes | Session, request: P.Request) -> None:
        logs.set_request(request.request_id, request.op)  # its lines carry its id
        try:
            self.access.check(request.op, request.caller, identity)
            if P.past_deadline(request.fields, time.time()):
                # its client has given up on it (it timed out there): apply nothing
                self.late_requests += 1
                raise DeadlineExceeded(
                    f"{request.op} reached node {self.s.node} after its client's deadline; "
                    "nothing was applied", node=self.s.node)
            self.repl.begin(identity, request)  # its reply waits for its forwarded changes
            self._handlers[request.op](identity, request)
            self.repl.end(failed=False)
        except MeshError as exc:
            self.repl.end(failed=True)
            log.debug("%s refused: %s", request.op, exc.message,
                      extra={"event": "request_refused", "code": exc.code})
            self._reply_error(identity, request, exc)
        except Exception as exc:  # a bug must not take the agent down
            self.repl.end(failed=True)
            log.exception("internal error on %s", request.op, extra={"event": "internal_error"})
            self.metrics.replied(request.op, "internal", request.arrived)
            self._send(
                identity, [P.encode_error(request.op, request.request_id, "internal", repr(exc))]
            )
        finally:
            logs.clear_request()

    def _send(self, identity: bytes | Session, frames: list[Any], copy: bool = True,
              track: bool = False, sealed: bool = False) -> zmq.MessageTracker | None:
        if type(identity) is Slot:  # a sub-op of a MANY request (agents/many.py)
            identity.take(frames)
            return _SENT
        sock = self.sealed if sealed else self.router
        if isinstance(identity, Session):  # sealed: ciphertext, nothing for a write to wait on
            sock, copy, track = self.sealed, False, False  # fresh ciphertext: no copy needed
            frames = identity.sealer.seal(frames[0], frames[1] if len(frames) > 1 else None)
            identity = identity.identity
        try:
            sock.send(identity, zmq.SNDMORE | zmq.NOBLOCK)
            for frame in frames[:-1]:
                sock.send(frame, zmq.SNDMORE | zmq.NOBLOCK)
            return sock.send(frames[-1], zmq.NOBLOCK, copy=copy, track=track) or _SENT
        except (zmq.Again, zmq.ZMQError):
            # The client went away (EHOSTUNREACH) or stopped reading (EAGAIN at the HWM).
            self.dropped_replies += 1
            return None

    def _local(self, identity: bytes, req: P.Request) -> None:
        """LOCAL: the same-host path's socket, and a ticket for it on a keyed cluster."""
        if not self.local.name:
            raise AgentError(f"node {self.s.node} serves no same-host path (mesh.local_access "
                             "is off, or its socket could not be made)", node=self.s.node)
        result = {"name": self.local.name}
        if self.access.keyed:
            result["ticket"] = self.local.ticket(req.caller)
        self._reply(identity, req, result)

    def _dispatch_deferred(self, write: tuple[bytes, P.Request]) -> None:
        self._dispatch(*write)

    # --- gossip -------------------------------------------------------------------------------

    def _beat(self, now: float) -> None:
        # with many peers, beat less often, and say so (self_record: beat_ms): they time our
        # silence by it
        states = self.members.states(now)  # one pass over the table for all the beat needs
        live = sum(1 for name, state in states.items() if state != DEAD and name != self.s.node)
        self.beat_s = stretched_interval(self.s.heartbeat_interval_s, live,
                                         self.s.heartbeat_intake_per_s, self.beat_s,
                                         self.members.co_located(self.host_key, states),
                                         self.s.heartbeat_host_intake_per_s)
        self.gossip.pace(self.beat_s)
        rec = self.self_record()
        self.members.observe(rec, now)
        states[self.s.node] = ALIVE  # (on the first beat, not in the table before)
        self.moves.set_dead_peers(frozenset(
            m.info.address for name, state in states.items()
            if state == DEAD and (m := self.members.get(name)) is not None))
        self.moves.drop_stale_copies(now)
        self.access.reload(now)  # revocations reach us within a second
        self.access.expire_sessions(now)
        self.store.flush_ledger()
        for block in self.store.sweep():  # leases run out, ttls up: no client needed
            log.info("freed %s (%d bytes): its %s", block.block_id, block.size,
                     "lease ran out" if block.lease_until is not None else "ttl is up")
        # a bounded digest, not the whole table: a heartbeat's size does not grow with the mesh
        # (mesh/membership.py gossip_digest; docs/scale.md)
        rec["peers"] = self.members.gossip_digest(now, exclude=self.s.node)
        frames = P.encode_heartbeat(rec)
        # over the limit, a heartbeat would cost every follower its link to us: relay fewer
        while len(frames[1]) > P.MAX_HEARTBEAT_BYTES and rec["peers"]:
            rec["peers"] = rec["peers"][: len(rec["peers"]) // 2]
            frames = P.encode_heartbeat(rec)
        try:
            self.pub.send_multipart(frames, zmq.NOBLOCK)
            self.beats_sent += 1
        except zmq.Again:
            pass
        self.gossip.relink(now)
        self.metrics.snapshot(self._gauges(rec, states))

    def _gauges(self, rec: dict[str, Any], states: dict[str, str]) -> dict[str, Any]:
        """The figures a scrape reads (``agents/metrics.py``: ``GAUGES``), taken by the loop;
        ``states``: every member's (``MembershipTable.states``)."""
        members: dict[str, int] = {}
        for state in states.values():
            members[state] = members.get(state, 0) + 1
        a, store = self.access, self.store
        return {
            "blocks": rec["blocks"], "used_bytes": rec["used"], "capacity_bytes": rec["capacity"],
            "unbacked_bytes": store.unbacked, "host_promised_bytes": store.host_promised(),
            "host_available_bytes": rec["host_available"], "host_total_bytes": rec["host_total"],
            "connections": self.guard.connections, "sessions": len(a.sessions),
            "replica_copies": len(self.repl.copies), "gossip_heard": self.gossip.heard,
            "gossip_rejected": self.gossip.rejected, "gossip_sent": self.beats_sent,
            "moves": self.moves.moved, "replica_repairs": self.repl.repairs,
            "evictions": self.evictor.evictions, "evictable_bytes": rec.get("evictable", 0),
            "replica_moved_on": self.repl.moved_on_count, "dropped_replies": self.dropped_replies,
            "rejected_handshakes": a.rejected_handshakes,
            "connection_unbinds": self.guard.unbinds,
            "refused_requests": a.refused_requests + a.refused_sealed,
            "late_requests": self.late_requests, "loop_errors": self.loop_errors,
            "reads_served": self.reads_served, "members": members,
        }

    # --- handlers -----------------------------------------------------------------------------

    def _reply(self, identity: bytes, req: P.Request, result: dict[str, Any]) -> None:
        if not self.repl.hold(identity, req, result):  # held until every copy applied it
            self._send_reply(identity, req, result)

    def _send_reply(self, identity: bytes, req: P.Request, result: dict[str, Any]) -> None:
        self.metrics.replied(req.op, "ok", req.arrived)
        if type(identity) is Slot:
            identity.answer(True, result)
            return
        self._send(identity, [P.encode_reply(req.op, req.request_id, result)])

    def _reply_error(self, identity: bytes, req: P.Request, exc: MeshError) -> None:
        self.metrics.replied(req.op, exc.code, req.arrived)
        if type(identity) is Slot:
            identity.answer(False, {"code": exc.code, "message": exc.message})
            return
        self._send(identity, [P.encode_exception(req.op, req.request_id, exc)])
