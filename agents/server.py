"""The mesh-agent's event loop: one thread serving the ROUTER, the PUB and the SUB sockets.

Covers: socket setup (high-water marks, maximum message size, ROUTER_MANDATORY, linger 0),
dispatching parsed requests to the block store, heartbeats and gossip, and allocations whose
pages are populated in a worker thread so heartbeats keep flowing while a large block is backed.

Does not cover: frame formats (``mesh/protocol.py``), capacity and bounds rules
(``agents/store.py``), membership rules (``mesh/membership.py``), configuration and process
start-up (``agents/main.py``).

Every request is answered or dropped; none can stop the loop. Errors from the store are
``MeshError``s and go back as error replies; anything else is logged and answered "internal".
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections import Counter, OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from agents.store import Block, BlockStore, populate
from mesh import protocol as P
from mesh import sockets
from mesh.errors import (
    AgentError,
    BlockMoving,
    BlockNotFound,
    InvalidRequest,
    MeshError,
    MeshTimeout,
    MoveFailed,
    NodeUnavailable,
    TooLarge,
)
from mesh.membership import ALIVE, DEAD, MembershipTable, NodeInfo
from mesh.hostmem import host_memory

log = logging.getLogger("mesh.agent")

# Messages handled per socket per loop turn, so heartbeats go out on time under load.
_BATCH = 64
# Writes waiting for a zero-copy read of the same range to leave libzmq; more are refused.
MAX_DEFERRED_WRITES = 64
_GOSSIP_ADDRESS = re.compile(r"^tcp://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
# Moving blocks peer to peer: READ chunk size and requests in flight for a pull, how long an
# arrived copy waits for its COMMIT, how many moved-away ids keep a forwarding note.
PULL_CHUNK = 4 * 1024 * 1024
PULL_WINDOW = 8
COMMIT_WAIT_S = 30.0
STALL_S = 10.0  # no reply from the peer for this long ends a pull or a move
MOVED_MEMORY = 10_000
MAX_MOVE_TIMEOUT_S = 3600.0


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
    version: str
    sndhwm: int = 256
    rcvhwm: int = 256


@dataclass
class _PendingAlloc:
    identity: bytes
    request_id: int
    block: Block


class Agent:
    def __init__(self, settings: AgentSettings, ctx: zmq.Context | None = None):
        self.s = settings
        self.incarnation = time.time_ns() // 1000
        self.address = f"tcp://{settings.advertised_host}:{settings.data_port}"
        self.gossip_address = f"tcp://{settings.advertised_host}:{settings.gossip_port}"
        self.store = BlockStore(
            settings.node,
            self.incarnation,
            settings.share_bytes,
            settings.reserve_bytes,
            memory_fn=host_memory,
        )
        self.members = MembershipTable(settings.suspect_after_s, settings.dead_after_s)
        self.ctx = ctx or zmq.Context.instance()
        self._populator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="populate")
        self._pending: dict[Future, _PendingAlloc] = {}
        self._connected_gossip: set[str] = set()
        self._stopping = False
        self.dropped_replies = 0
        # block id -> [(start, end, tracker)] of zero-copy read replies libzmq still holds
        self._sending: dict[str, list[tuple[int, int, zmq.MessageTracker]]] = {}
        self._deferred: deque[tuple[bytes, P.Request]] = deque()
        self._deferred_per_block: Counter[str] = Counter()
        self._retrying = False
        # moves and pulls run in threads with sockets of their own; the loop finishes them
        self._movers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="move")
        self._jobs: dict[Future, tuple[Callable[..., None], tuple]] = {}
        self._dead_addresses: frozenset[str] = frozenset()  # read by the move threads
        self._moved: OrderedDict[str, str] = OrderedDict()  # block id -> where it went
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
            P.KPUT: self._kput,
            P.KGET: self._kget,
            P.KDEL: self._kdel,
            P.KLIST: self._klist,
            P.MOVE: self._move,
            P.PULL: self._pull,
            P.COMMIT: self._commit,
            P.ABORT: self._abort,
        }

    # --- sockets ------------------------------------------------------------------------------

    def bind(self) -> None:
        s = self.s
        self.router = sockets.router(self.ctx, f"tcp://{s.bind_ip}:{s.data_port}",
                                     sndhwm=s.sndhwm, rcvhwm=s.rcvhwm,
                                     max_message_bytes=s.max_message_bytes)
        self.pub = sockets.publisher(self.ctx, f"tcp://{s.bind_ip}:{s.gossip_port}")
        self.sub = sockets.subscriber(self.ctx, topic=P.HEARTBEAT_TOPIC,
                                      max_message_bytes=P.MAX_HEARTBEAT_BYTES + 1024)
        for peer in s.peers:
            self._follow(peer)

    def _follow(self, gossip_address: str) -> None:
        if gossip_address == self.gossip_address or gossip_address in self._connected_gossip:
            return
        if not _GOSSIP_ADDRESS.match(gossip_address) or len(self._connected_gossip) >= 1024:
            return
        self.sub.connect(gossip_address)
        self._connected_gossip.add(gossip_address)

    def close(self) -> None:
        self._stopping = True  # moves and pulls see it within a poll slice and give up
        self._populator.shutdown(wait=True, cancel_futures=True)
        self._movers.shutdown(wait=True, cancel_futures=True)
        for sock in (self.router, self.pub, self.sub):
            sock.close(linger=0)
        self.store.close()

    def stop(self) -> None:
        self._stopping = True

    # --- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        interval = self.s.heartbeat_interval_s
        next_beat = time.monotonic()
        log.info(
            "agent %s serving %s (gossip %s), incarnation %d",
            self.s.node, self.address, self.gossip_address, self.incarnation,
        )
        while not self._stopping:
            now = time.monotonic()
            if now >= next_beat:
                self._beat(now)
                next_beat = max(next_beat + interval, now + interval / 2)
            timeout_s = next_beat - now
            if self._pending or self._jobs:
                timeout_s = min(timeout_s, 0.005)
            if self._deferred:
                timeout_s = min(timeout_s, 0.001)
            events = dict(poller.poll(max(0, int(timeout_s * 1000))))
            if self.router in events:
                self._drain_router()
            if self.sub in events:
                self._drain_sub()
            if self._pending:
                self._finish_allocations()
            if self._jobs:
                self._finish_jobs()
            if self._deferred:
                self._retry_deferred()

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
                self._send(identity, [P.encode_error(bad.op, bad.request_id, bad.code, bad.message)])
                continue
            self._dispatch(identity, request)

    def _dispatch(self, identity: bytes, request: P.Request) -> None:
        try:
            self._handlers[request.op](identity, request)
        except MeshError as exc:
            self._send(identity, [P.encode_exception(request.op, request.request_id, exc)])
        except Exception as exc:  # a bug must not take the agent down
            log.exception("internal error on %s", request.op)
            self._send(
                identity, [P.encode_error(request.op, request.request_id, "internal", repr(exc))]
            )

    def _drain_sub(self) -> None:
        now = time.monotonic()
        for _ in range(_BATCH):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                rec = P.parse_heartbeat(frames)
            except MeshError:
                continue
            if rec["node"] == self.s.node:
                continue
            if self.members.observe(rec, now):
                self._follow(rec["gossip"])
            for peer in rec["peers"]:
                if peer["node"] == self.s.node:
                    continue
                if self.members.observe(peer, now, peer["age_s"]):
                    self._follow(peer["gossip"])

    def _send(self, identity: bytes, frames: list[Any], copy: bool = True,
              track: bool = False) -> zmq.MessageTracker | None:
        try:
            self.router.send(identity, zmq.SNDMORE | zmq.NOBLOCK)
            for frame in frames[:-1]:
                self.router.send(frame, zmq.SNDMORE | zmq.NOBLOCK)
            return self.router.send(frames[-1], zmq.NOBLOCK, copy=copy, track=track)
        except (zmq.Again, zmq.ZMQError):
            # The client went away (EHOSTUNREACH) or stopped reading (EAGAIN at the HWM).
            self.dropped_replies += 1
            return None

    # --- zero-copy reads and the writes that must wait for them -------------------------------

    def _overlaps_send(self, block_id: str, start: int, end: int) -> bool:
        sends = self._sending.get(block_id)
        if not sends:
            return False
        live = [s for s in sends if not s[2].done]
        if live:
            self._sending[block_id] = live
        else:
            del self._sending[block_id]
        return any(s < end and start < e for s, e, _ in live)

    def _must_wait(self, block_id: str, start: int, end: int) -> bool:
        """A write must wait while libzmq still sends a read of that range (or, to keep the
        order of writes, while an earlier write to the block waits)."""
        if not self._retrying and self._deferred_per_block[block_id]:
            return True
        return self._overlaps_send(block_id, start, end)

    def _defer(self, identity: bytes, req: P.Request) -> None:
        if len(self._deferred) >= MAX_DEFERRED_WRITES:
            raise AgentError(
                "busy: too many writes are waiting for reads of the same ranges; retry", 
                node=self.s.node,
            )
        self._deferred.append((identity, req))
        self._deferred_per_block[req.fields["block"]] += 1

    def _retry_deferred(self) -> None:
        waiting, self._deferred = self._deferred, deque()
        held: set[str] = set()
        for identity, req in waiting:
            block_id = req.fields["block"]
            self._deferred_per_block[block_id] -= 1
            if block_id in held:
                self._deferred.append((identity, req))
                self._deferred_per_block[block_id] += 1
                continue
            self._retrying = True
            try:
                self._dispatch(identity, req)
            finally:
                self._retrying = False
            if self._deferred and self._deferred[-1][1] is req:
                held.add(block_id)
        self._deferred_per_block = +self._deferred_per_block

    # --- gossip -------------------------------------------------------------------------------

    def self_record(self) -> dict[str, Any]:
        mem = host_memory()  # one reading for every field below
        return NodeInfo(
            name=self.s.node, address=self.address, gossip=self.gossip_address,
            incarnation=self.incarnation, version=self.s.version, state=ALIVE, age_s=0.0,
            capacity=self.store.capacity_for(mem), used=self.store.used,
            room=self.store.room(mem), host_available=int(mem.available),
            host_total=int(mem.total), blocks=len(self.store),
        ).record()

    def _beat(self, now: float) -> None:
        rec = self.self_record()
        self.members.observe(rec, now)
        self._dead_addresses = frozenset(
            r["address"] for r in self.members.snapshot(now) if r["state"] == DEAD
        )
        self._drop_stale_copies(now)
        rec["peers"] = self.members.gossip_entries(now, exclude=self.s.node)
        try:
            self.pub.send_multipart(P.encode_heartbeat(rec), zmq.NOBLOCK)
        except zmq.Again:
            pass

    # --- handlers -----------------------------------------------------------------------------

    def _reply(self, identity: bytes, req: P.Request, result: dict[str, Any]) -> None:
        self._send(identity, [P.encode_reply(req.op, req.request_id, result)])

    def _hello(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, {
            "node": self.s.node,
            "incarnation": self.incarnation,
            "version": self.s.version,
            "protocol": P.VERSION,
            "address": self.address,
            "max_message_bytes": self.s.max_message_bytes,
        })

    def _ping(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, {"node": self.s.node, "incarnation": self.incarnation})

    def _alloc(self, identity: bytes, req: P.Request) -> None:
        block = self.store.allocate(req.fields["size"], bool(req.fields["lazy"]))
        if block.lazy:
            self._reply(identity, req, block.record(self.s.node))
            return
        future = self._populator.submit(populate, block)
        self._pending[future] = _PendingAlloc(identity, req.request_id, block)

    def _finish_allocations(self) -> None:
        for future in [f for f in self._pending if f.done()]:
            pending = self._pending.pop(future)
            block = pending.block
            exc = future.exception()
            if exc is not None:
                log.error("populating %s failed: %r", block.block_id, exc)
                if block.block_id in {b.block_id for b in self.store.blocks()}:
                    self.store.free(block.block_id)
                self._send(pending.identity, [P.encode_error(
                    P.ALLOC, pending.request_id, "no_capacity", f"could not back the block: {exc}"
                )])
                continue
            block.ready = True
            self._send(pending.identity, [P.encode_reply(
                P.ALLOC, pending.request_id, block.record(self.s.node)
            )])

    def _ready_block(self, block_id: str) -> Block:
        try:
            block = self.store.get(block_id)
        except BlockNotFound:
            where = self._moved.get(block_id)
            if where is None:
                raise
            raise BlockNotFound(f"block {block_id!r} moved from node {self.s.node} to {where}",
                                node=self.s.node) from None
        if not block.ready:
            raise BlockNotFound(f"block {block_id!r} is still being allocated", node=self.s.node)
        return block

    def _free(self, identity: bytes, req: P.Request) -> None:
        block = self._ready_block(req.fields["block"])
        self.store.free(block.block_id)
        self._reply(identity, req, {"block": block.block_id, "size": block.size})

    def _write(self, identity: bytes, req: P.Request) -> None:
        block = self._ready_block(req.fields["block"])
        frame = req.payload[0]
        data = P.frame_view(frame)
        offset = req.fields["offset"]
        self.store.check_range(block, offset, data.nbytes)
        self.store.check_still(block)
        if self._must_wait(block.block_id, offset, offset + data.nbytes):
            self._defer(identity, req)
            return
        block.view[offset : offset + data.nbytes] = data
        self._reply(identity, req, {
            "block": block.block_id, "offset": offset, "length": data.nbytes,
        })

    def _read(self, identity: bytes, req: P.Request) -> None:
        offset, length = req.fields["offset"], req.fields["length"]
        if length > self.s.max_message_bytes:
            raise TooLarge(
                f"read of {length} bytes is over this agent's {self.s.max_message_bytes}-byte "
                "message limit; split it into chunks"
            )
        block = self._ready_block(req.fields["block"])
        self.store.check_range(block, offset, length)
        if block.moving and block.meta.get("handing_over"):
            raise BlockMoving(f"block {block.block_id} is being handed over to another node; "
                              "retry in a moment", node=self.s.node)
        header = P.encode_reply(req.op, req.request_id, {
            "block": block.block_id, "offset": offset, "length": length,
        })
        # Zero-copy: libzmq sends straight from the block (a copy here cost a third of the read
        # throughput). Writes to this range wait until libzmq is done with it (trap 4:
        # a write landing mid-send would tear the read); ``_must_wait`` enforces that.
        tracker = self._send(
            identity, [header, block.view[offset : offset + length]], copy=False, track=True
        )
        if tracker is not None and not tracker.done:
            self._sending.setdefault(block.block_id, []).append((offset, offset + length, tracker))

    def _stat(self, identity: bytes, req: P.Request) -> None:
        block = self._ready_block(req.fields["block"])
        self._reply(identity, req, block.record(self.s.node))

    def _list(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, {
            "node": self.s.node,
            "blocks": [b.record(self.s.node) for b in self.store.blocks() if b.ready],
        })

    def _stats(self, identity: bytes, req: P.Request) -> None:
        rec = self.self_record()
        rec["reserve"] = self.s.reserve_bytes
        rec["dropped_replies"] = self.dropped_replies
        self._reply(identity, req, rec)

    def _nodes(self, identity: bytes, req: P.Request) -> None:
        now = time.monotonic()
        self.members.observe(self.self_record(), now)
        self._reply(identity, req, {"nodes": self.members.snapshot(now)})

    def _kput(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        if f["record"].get("block"):
            self._ready_block(f["record"]["block"])
        record = self.store.put_key(f["key"], f["record"], f["replace"], time.time())
        self._reply(identity, req, record)

    def _kget(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, self.store.get_key(req.fields["key"]))

    def _kdel(self, identity: bytes, req: P.Request) -> None:
        freed = self.store.delete_key(req.fields["key"])
        self._reply(identity, req, {"key": req.fields["key"], "freed_block": freed})

    def _klist(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, {"node": self.s.node, "keys": self.store.key_records()})

    # --- moving blocks peer to peer (see mesh/protocol.py: MOVE, PULL, COMMIT, ABORT) ----------

    def _finish_jobs(self) -> None:
        for future in [f for f in self._jobs if f.done()]:
            done, args = self._jobs.pop(future)
            done(future, *args)

    def _job_error(self, future: Future, what: str) -> MeshError | None:
        exc = future.exception()
        if exc is None:
            return None
        if isinstance(exc, MeshError):
            return exc
        log.error("%s failed: %r", what, exc)
        return AgentError(f"{what} failed: {exc!r}", node=self.s.node)

    def _peer_socket(self, address: str, max_reply: int) -> zmq.Socket:
        return sockets.dealer(self.ctx, address, hwm=4 * PULL_WINDOW, max_message_bytes=max_reply)

    def _await_reply(self, sock: zmq.Socket, peer: str, deadline: float,
                     stall_s: float = STALL_S) -> P.Reply:
        """The next reply from ``peer``, polling in short slices so that this agent stopping,
        the peer dying (its heartbeat goes dead) or the deadline ends the wait."""
        stall_at = time.monotonic() + stall_s
        while True:
            if sock.poll(200):
                return P.parse_reply(sock.recv_multipart(copy=False))
            now = time.monotonic()
            if self._stopping:
                raise AgentError(f"agent {self.s.node} is stopping", node=self.s.node)
            if peer in self._dead_addresses:
                raise NodeUnavailable(f"{peer} stopped sending heartbeats", node=self.s.node)
            if now > deadline or now > stall_at:
                raise MeshTimeout(f"{peer} did not answer in time", node=self.s.node)

    def _valid_peer(self, address: str, what: str) -> str:
        if not _GOSSIP_ADDRESS.match(address):
            raise InvalidRequest(f"{what} must be an address like tcp://host:port, got {address!r}")
        if address == self.address:
            raise InvalidRequest(f"{what} {address} is this agent ({self.s.node})")
        return address

    # source side

    def _move(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        block = self._ready_block(f["block"])
        self.store.check_still(block)  # one move at a time
        target = self._valid_peer(f["target"], "target")
        timeout_s = float(f["timeout_s"])
        if not 0 < timeout_s <= MAX_MOVE_TIMEOUT_S:
            raise InvalidRequest(f"timeout_s must be in (0, {MAX_MOVE_TIMEOUT_S:g}], got {timeout_s}")
        keys = [dict(r) for r in self.store.key_records(block.block_id)]
        block.moving = True
        future = self._movers.submit(self._move_job, block, target, keys,
                                     time.monotonic() + timeout_s)
        self._jobs[future] = (self._move_done, (identity, req, block, target))

    def _move_job(self, block: Block, target: str, keys: list[dict], deadline: float) -> dict:
        started = time.monotonic()
        sock = self._peer_socket(target, 1 << 20)
        pulled = False
        try:
            sock.send(P.encode_request(P.PULL, 1, {
                "block": block.block_id, "source": self.address, "size": block.size,
                "created": block.created, "lazy": block.lazy,
            }))
            # checksum our copy while the target pulls it (zlib releases the GIL)
            checksum = f"crc32:{zlib.crc32(block.view):08x}"
            summed = time.monotonic()
            reply = self._await_reply(sock, target, deadline,
                                      stall_s=max(STALL_S, deadline - time.monotonic()))
            copied = time.monotonic()
            reply.raise_for_error(target)
            pulled = True
            if reply.body.get("checksum") != checksum:
                raise MoveFailed(
                    f"the copy of {block.block_id} on {target} has checksum "
                    f"{reply.body.get('checksum')}, the original {checksum}", node=self.s.node)
            # From here the target may take writes: stop serving reads of our copy (they get
            # "moving" and follow the block) so nobody reads what the target has overwritten.
            block.meta["handing_over"] = True
            sock.send(P.encode_request(P.COMMIT, 2, {"block": block.block_id, "keys": keys}))
            self._await_reply(sock, target, deadline + STALL_S).raise_for_error(target)
            return {
                "block": block.block_id, "from": self.s.node, "from_address": self.address,
                "to": str(reply.body.get("node", "")), "to_address": target,
                "size": block.size, "checksum": checksum, "keys": len(keys),
                "seconds": time.monotonic() - started,
                # where the time went: our checksum, the target's copy (it overlaps ours),
                # and the commit
                "checksum_s": summed - started, "copy_s": copied - started,
                "pull_s": reply.body.get("pull_s"), "commit_s": time.monotonic() - copied,
            }
        except MeshError:
            if pulled or not self._stopping:
                try:  # best effort: the target also drops an uncommitted copy on its own
                    sock.send(P.encode_request(P.ABORT, 3, {"block": block.block_id}),
                              zmq.NOBLOCK)
                    if sock.poll(500):
                        sock.recv_multipart()
                except zmq.ZMQError:
                    pass
            raise
        finally:
            sock.close(0)

    def _move_done(self, future: Future, identity: bytes, req: P.Request, block: Block,
                   target: str) -> None:
        error = self._job_error(future, f"moving {block.block_id}")
        if error is not None:
            block.moving = False
            block.meta.pop("handing_over", None)
            log.warning("move of %s to %s failed: %s", block.block_id, target, error)
            self._send(identity, [P.encode_error(
                req.op, req.request_id, MoveFailed.code,
                f"moving {block.block_id} from {self.s.node} to {target} failed, the original "
                f"is intact on {self.s.node}: {error}",
            )])
            return
        result = future.result()
        self.store.free(block.block_id, moved=True)
        self._moved[block.block_id] = result["to"] or target
        while len(self._moved) > MOVED_MEMORY:
            self._moved.popitem(last=False)
        log.info("moved %s (%d bytes) to %s in %.2f s", block.block_id, block.size, target,
                 result["seconds"])
        self._reply(identity, req, result)

    # target side

    def _pull(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        source = self._valid_peer(f["source"], "source")
        if not f["block"] or len(f["block"]) > 256:
            raise InvalidRequest("block id must be 1 to 256 characters")
        block = self.store.allocate(f["size"], bool(f["lazy"]), block_id=f["block"],
                                    created=float(f["created"]))
        block.incoming = True
        block.meta["commit_by"] = None
        deadline = time.monotonic() + STALL_S + block.size / 20e6
        block.meta["pull_started"] = time.monotonic()
        # back the pages ahead of the copy on another thread (page faults, not the network,
        # bound a copy into fresh memory); populating never changes what is written
        self._populator.submit(populate, block)
        future = self._movers.submit(self._pull_job, block, source, deadline)
        self._jobs[future] = (self._pull_done, (identity, req, block))

    def _pull_job(self, block: Block, source: str, deadline: float) -> str:
        chunk = min(PULL_CHUNK, self.s.max_message_bytes)
        sock = self._peer_socket(source, chunk)
        try:
            inflight: dict[int, tuple[int, int]] = {}
            next_offset, request_id, received = 0, 0, 0
            crc, checked = 0, 0  # crc32 of the copy's first ``checked`` bytes
            while received < block.size:
                while len(inflight) < PULL_WINDOW and next_offset < block.size:
                    request_id += 1
                    length = min(chunk, block.size - next_offset)
                    sock.send(P.encode_request(P.READ, request_id, {
                        "block": block.block_id, "offset": next_offset, "length": length,
                    }))
                    inflight[request_id] = (next_offset, length)
                    next_offset += length
                if block.meta.get("cancelled"):
                    raise MoveFailed(f"the move of {block.block_id} was aborted by its source")
                reply = self._await_reply(sock, source, deadline)
                reply.raise_for_error(source)
                offset, length = inflight.pop(reply.request_id, (None, None))
                if offset is None or len(reply.payload) != 1 or \
                        P.frame_len(reply.payload[0]) != length:
                    raise MoveFailed(f"{source} sent an unexpected reply while copying "
                                     f"{block.block_id}")
                block.view[offset : offset + length] = P.frame_view(reply.payload[0])
                received += length
                if offset == checked:  # in order, as one connection delivers: checksum it warm
                    crc = zlib.crc32(block.view[offset : offset + length], crc)
                    checked += length
            if checked != block.size:  # a chunk came out of order: checksum the whole copy
                crc = zlib.crc32(block.view)
            return f"crc32:{crc:08x}"
        finally:
            sock.close(0)

    def _pull_done(self, future: Future, identity: bytes, req: P.Request, block: Block) -> None:
        error = self._job_error(future, f"copying {block.block_id}")
        if error is None and block.meta.get("cancelled"):
            error = MoveFailed(f"the move of {block.block_id} was aborted by its source")
        if error is not None:
            self.store.free(block.block_id, moved=True)
            self._send(identity, [P.encode_exception(req.op, req.request_id, error)])
            return
        block.meta["commit_by"] = time.monotonic() + COMMIT_WAIT_S
        self._reply(identity, req, {"block": block.block_id, "size": block.size,
                                    "checksum": future.result(), "node": self.s.node,
                                    "pull_s": time.monotonic() - block.meta["pull_started"]})

    def _arrived(self, block_id: str) -> Block:
        block = self.store.get(block_id)
        if not block.incoming or block.meta.get("commit_by") is None:
            raise InvalidRequest(f"block {block_id!r} is not a copy waiting for its commit here")
        return block

    def _commit(self, identity: bytes, req: P.Request) -> None:
        block = self._arrived(req.fields["block"])
        for rec in req.fields["keys"]:
            if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or \
                    rec.get("block") != block.block_id:
                raise InvalidRequest("COMMIT keys must be key records of the moved block")
            created = rec.get("created")
            self.store.put_key(rec["key"], rec, True,
                               created if isinstance(created, (int, float)) else time.time())
        block.incoming = False
        block.ready = True
        block.meta.pop("commit_by", None)
        self._reply(identity, req, {"block": block.block_id, "node": self.s.node})

    def _abort(self, identity: bytes, req: P.Request) -> None:
        block_id = req.fields["block"]
        dropped = False
        try:
            block = self.store.get(block_id)
        except BlockNotFound:
            block = None
        if block is not None and block.incoming:
            if block.meta.get("commit_by") is None:
                block.meta["cancelled"] = True  # the pull thread stops; _pull_done frees it
            else:
                self.store.free(block_id, moved=True)
            dropped = True
        self._reply(identity, req, {"block": block_id, "dropped": dropped})

    def _drop_stale_copies(self, now: float) -> None:
        """Arrived copies whose source never committed (it died or gave up) are dropped."""
        for block in self.store.blocks():
            commit_by = block.meta.get("commit_by") if block.incoming else None
            if commit_by is not None and now > commit_by:
                log.warning("dropping the copy of %s: its source never committed the move",
                            block.block_id)
                self.store.free(block.block_id, moved=True)
