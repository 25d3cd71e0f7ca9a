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
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import zmq

from agents.store import Block, BlockStore, populate
from mesh import protocol as P
from mesh.errors import AgentError, BlockNotFound, MeshError, TooLarge
from mesh.membership import MembershipTable

log = logging.getLogger("mesh.agent")

# Messages handled per socket per loop turn, so heartbeats go out on time under load.
_BATCH = 64
# Writes waiting for a zero-copy read of the same range to leave libzmq; more are refused.
MAX_DEFERRED_WRITES = 64
_GOSSIP_ADDRESS = re.compile(r"^tcp://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


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
            available_fn=lambda: psutil.virtual_memory().available,
            total_fn=lambda: psutil.virtual_memory().total,
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
        }

    # --- sockets ------------------------------------------------------------------------------

    def bind(self) -> None:
        s = self.s
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, s.sndhwm)
        self.router.setsockopt(zmq.RCVHWM, s.rcvhwm)
        self.router.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 64)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 256)
        self.sub.setsockopt(zmq.MAXMSGSIZE, P.MAX_HEARTBEAT_BYTES + 1024)
        self.sub.setsockopt(zmq.SUBSCRIBE, P.HEARTBEAT_TOPIC)
        self.router.bind(f"tcp://{s.bind_ip}:{s.data_port}")
        self.pub.bind(f"tcp://{s.bind_ip}:{s.gossip_port}")
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
        self._populator.shutdown(wait=True, cancel_futures=True)
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
            if self._pending:
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
        vm = psutil.virtual_memory()
        return {
            "node": self.s.node,
            "address": self.address,
            "gossip": self.gossip_address,
            "incarnation": self.incarnation,
            "version": self.s.version,
            "capacity": self.store.capacity,
            "used": self.store.used,
            "room": self.store.room(),
            "host_available": int(vm.available),
            "blocks": len(self.store),
        }

    def _beat(self, now: float) -> None:
        rec = self.self_record()
        self.members.observe(rec, now)
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
        block = self.store.get(block_id)
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
        rec["host_total"] = int(psutil.virtual_memory().total)
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
