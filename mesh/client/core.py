"""The client core shared by ``MeshClient`` and ``AsyncMeshClient``.

Every client operation is a generator written once here. It sends and receives only with
non-blocking calls, and when it must wait it yields a ``Wait`` (which sockets, how long); the sync
client answers with ``zmq.Poller``, the async one with ``zmq.asyncio.Poller``. Nothing else
differs between the two clients.

Pieces, from the bottom up:

- ``Call``: one request to one agent address, with its payload (WRITE) or the memoryview its
  reply payload lands in (READ). A read reply is copied once, straight into the caller's buffer.
- ``BatchRun``: pure bookkeeping for a group of calls: at most ``window`` in flight per address
  (credit-based flow control), request ids, replies matched by id (stale ones ignored), per-call
  timeouts, first-error or collect-all policies, and "settle" for asking several agents and
  taking the first answers. No sockets: it is unit-tested on its own.
- ``Core``: sockets per agent address, the membership view, block locations, placement, and the
  operation generators (``allocate``, ``write``, ``read_into``, ...).

Not here: frame layouts (``mesh/protocol.py``), exceptions (``mesh/errors.py``), config files
(``mesh/config.py``), and the CLI (``mesh/cli/``).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator, Iterable, Iterator

import zmq

from mesh import protocol as P
from mesh import sockets
from mesh._malloc import tune_for_transfers
from mesh.config import ClusterConfig, MeshSettings
from mesh.errors import (
    BlockMoving,
    BlockNotFound,
    CapacityError,
    InvalidRequest,
    InvalidSize,
    MeshError,
    MeshTimeout,
    NodeUnavailable,
    OutOfRange,
    ProtocolError,
)
from mesh.membership import ALIVE, DEAD, DOWN, SUSPECT, NodeInfo, state_for_silence
from mesh.units import format_bytes

_BLOCK_ID = re.compile(r"^block_\d+_(?P<node>.+)_[0-9a-z]+$")


@dataclass(frozen=True)
class BlockInfo:
    block_id: str
    node: str
    size: int
    lazy: bool
    created: float


@dataclass(frozen=True)
class Wait:
    """What an operation waits for: readable sockets among ``sockets``, up to ``timeout_s``."""

    sockets: tuple[zmq.Socket, ...]
    timeout_s: float


@dataclass(eq=False)
class Call:
    address: str
    op: str
    fields: dict[str, Any]
    payload: Any = None  # one bytes-like frame, for WRITE
    sink: memoryview | None = None  # where a READ reply's payload is copied
    result: dict[str, Any] | None = None
    error: MeshError | None = None
    request_id: int = 0
    sent_at: float = 0.0
    on_done: Callable[["Call"], None] | None = None  # runs when the call succeeds or fails


@dataclass
class Batch:
    calls: Iterable[Call]
    timeout_s: float
    window: int = 8
    fail_fast: bool = True  # stop at the first error and raise it; else collect per-call errors
    settle_s: float | None = None  # after the first success, wait at most this long for the rest


class BatchRun:
    """Flow control and reply matching for one ``Batch``. Pure: no sockets, no clock."""

    def __init__(self, batch: Batch, ids: Iterator[int]):
        self.batch = batch
        self._calls = iter(batch.calls)
        self._head: Call | None = None
        self._exhausted = False
        self._ids = ids
        self.inflight: dict[int, Call] = {}
        self._per_address: Counter[str] = Counter()
        self.done_calls: list[Call] = []
        self.first_error: MeshError | None = None
        self.first_success_at: float | None = None
        self.abandoned: set[str] = set()

    def ready(self, now: float) -> list[tuple[Call, list[Any]]]:
        """Calls that may be sent now, with their frames; marks them in flight."""
        out = []
        if self.first_error is not None and self.batch.fail_fast:
            return out
        while True:
            call = self._head
            if call is None:
                if self._exhausted:
                    break
                call = next(self._calls, None)
                if call is None:
                    self._exhausted = True
                    break
            if self._per_address[call.address] >= self.batch.window:
                self._head = call
                break
            self._head = None
            call.request_id = next(self._ids)
            call.sent_at = now
            frames: list[Any] = [P.encode_request(call.op, call.request_id, call.fields)]
            if call.payload is not None:
                frames.append(call.payload)
            self.inflight[call.request_id] = call
            self._per_address[call.address] += 1
            out.append((call, frames))
        return out

    def _complete(self, call: Call) -> None:
        del self.inflight[call.request_id]
        self._per_address[call.address] -= 1
        self.done_calls.append(call)
        if call.error is not None and self.first_error is None:
            self.first_error = call.error
        if call.on_done is not None:
            call.on_done(call)

    def fail(self, call: Call, error: MeshError) -> None:
        call.error = error
        self._complete(call)

    def on_reply(self, address: str, frames: list[Any], now: float, node: str | None) -> None:
        try:
            reply = P.parse_reply(frames)
        except ProtocolError as exc:
            exc.node = node
            if self.first_error is None:
                self.first_error = exc
            return
        call = self.inflight.get(reply.request_id)
        if call is None or call.address != address:
            return  # a late reply to a call that already timed out
        if not reply.ok:
            try:
                reply.raise_for_error(node)
            except MeshError as exc:
                call.error = exc
        else:
            call.result = reply.body
            if call.sink is not None:
                if len(reply.payload) != 1 or P.frame_len(reply.payload[0]) != call.sink.nbytes:
                    call.error = ProtocolError(
                        f"read reply from {node or address} has the wrong payload size", node=node
                    )
                else:
                    call.sink[:] = P.frame_view(reply.payload[0])
            if self.first_success_at is None:
                self.first_success_at = now
        self._complete(call)

    def finished(self, now: float) -> bool:
        if self.first_error is not None and self.batch.fail_fast:
            if not self.inflight:
                return True
        elif not self.inflight and self._head is None and self._exhausted:
            return True
        if self.batch.settle_s is not None and self.first_success_at is not None:
            if now - self.first_success_at >= self.batch.settle_s:
                self._abandon("did not answer in time")
                return True
        return False

    def wait_s(self, now: float) -> float:
        oldest = min((c.sent_at for c in self.inflight.values()), default=now)
        wait = oldest + self.batch.timeout_s - now
        if self.batch.settle_s is not None and self.first_success_at is not None:
            wait = min(wait, self.first_success_at + self.batch.settle_s - now)
        return wait

    def expire(self, now: float) -> None:
        """Fail every call older than the timeout."""
        for call in list(self.inflight.values()):
            if now - call.sent_at >= self.batch.timeout_s:
                self.abandoned.add(call.address)
                self.fail(call, MeshTimeout(
                    f"no reply from {call.address} to {call.op} within {self.batch.timeout_s:g} s"
                ))

    def _abandon(self, why: str) -> None:
        for call in list(self.inflight.values()):
            self.abandoned.add(call.address)
            self.fail(call, MeshTimeout(f"{call.address} {why}"))

    def inflight_addresses(self) -> set[str]:
        return {c.address for c in self.inflight.values()}

    def outcome(self) -> list[Call]:
        if self.batch.fail_fast and self.first_error is not None:
            raise self.first_error
        return self.done_calls


Op = Generator[Wait, Any, Any]


def byte_view(data: Any, *, writable: bool = False) -> memoryview:
    """A flat byte view of any contiguous bytes-like object (bytes, memoryview, numpy array)."""
    try:
        view = memoryview(data)
    except TypeError:
        raise InvalidRequest(f"expected a bytes-like object, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise InvalidRequest("the buffer must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and view.readonly:
        raise InvalidRequest("the buffer to read into is read-only")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


MOVING_RETRY_S = 0.02  # how soon a change refused during a move is tried again


def block_node_hint(block_id: str) -> str | None:
    m = _BLOCK_ID.match(block_id)
    return m.group("node") if m else None


class Core:
    """Sockets, membership view and the operations. Not thread-safe: the clients serialise."""

    def __init__(
        self,
        settings: MeshSettings,
        seeds: dict[str, str | None],
        config: ClusterConfig | None = None,
        ctx: zmq.Context | None = None,
    ):
        self.settings = settings
        self.config = config
        self.ctx = ctx or zmq.Context.instance()
        self.seeds = dict(seeds)  # address -> node name (None when built from an address)
        self._ids = itertools.count(1)
        self._sockets: dict[str, zmq.Socket] = {}
        self._nodes: dict[str, NodeInfo] = {}  # by node name
        self._nodes_at = -1e9
        self._nodes_heard_at = 0.0
        self._locations: dict[str, tuple[str, int]] = {}  # block id -> (address, size)
        self.closed = False
        tune_for_transfers(settings.max_message_bytes, settings.window)

    # --- sockets ------------------------------------------------------------------------------

    def socket(self, address: str) -> zmq.Socket:
        if self.closed:
            raise MeshError("the client is closed")
        sock = self._sockets.get(address)
        if sock is None:
            sock = sockets.dealer(self.ctx, address, hwm=max(64, 4 * self.settings.window),
                                  max_message_bytes=self.settings.max_message_bytes)
            self._sockets[address] = sock
        return sock

    def reset(self, address: str) -> None:
        """Drop a socket whose requests timed out, so nothing queued in it is ever delivered."""
        sock = self._sockets.pop(address, None)
        if sock is not None:
            sock.close(0)

    def close(self) -> None:
        for address in list(self._sockets):
            self.reset(address)
        self.closed = True

    def node_name(self, address: str) -> str | None:
        for info in self._nodes.values():
            if info.address == address:
                return info.name
        return self.seeds.get(address)

    # --- the one place that sends and receives ------------------------------------------------

    def execute(self, batch: Batch) -> Op:
        run = BatchRun(batch, self._ids)
        try:
            while True:
                now = time.monotonic()
                for call, frames in run.ready(now):
                    try:
                        self.socket(call.address).send_multipart(frames, zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        run.fail(call, NodeUnavailable(
                            f"{call.address} is not accepting requests (send queue full)"
                        ))
                    except NodeUnavailable as exc:
                        run.fail(call, exc)
                if run.finished(now):
                    break
                wait = run.wait_s(now)
                if wait <= 0:
                    run.expire(now)
                    continue
                addresses = run.inflight_addresses()
                ready = yield Wait(tuple(self._sockets[a] for a in addresses), wait)
                now = time.monotonic()
                for address in addresses:
                    sock = self._sockets.get(address)
                    if sock is None or sock not in ready:
                        continue
                    node = self.node_name(address)
                    for _ in range(4 * batch.window + 8):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        run.on_reply(address, frames, now, node)
        finally:
            for address in run.abandoned:
                self.reset(address)
        return run.outcome()

    def call(self, address: str, op: str, fields: dict[str, Any] | None = None,
             timeout_s: float | None = None, wait_moving: bool = True) -> Op:
        """One request. A change refused because its block is being moved (``BlockMoving``)
        is retried until the request timeout, unless ``wait_moving`` is False."""
        deadline = time.monotonic() + (timeout_s or self.settings.request_timeout_s)
        while True:
            try:
                calls = yield from self.execute(Batch(
                    [Call(address, op, fields or {})],
                    timeout_s or self.settings.request_timeout_s,
                ))
                return calls[0].result
            except BlockMoving:
                if not wait_moving or time.monotonic() > deadline:
                    raise
                yield from self.pause(MOVING_RETRY_S)

    def pause(self, seconds: float) -> Op:
        """Sleep inside an operation (the client's wait with no sockets)."""
        yield Wait((), seconds)

    def ping(self, address: str | None = None, timeout_s: float | None = None) -> Op:
        """{node, incarnation} of the agent at ``address`` (default: the first seed)."""
        target = address or next(iter(self.seeds))
        return (yield from self.call(target, P.PING, {},
                                     timeout_s or self.settings.connect_timeout_s))

    # --- membership ---------------------------------------------------------------------------

    def known_addresses(self) -> list[str]:
        addresses = [n.address for n in self._nodes.values() if n.state == ALIVE]
        for n in self._nodes.values():
            if n.address not in addresses and n.state != DEAD:
                addresses.append(n.address)
        for a in self.seeds:
            if a not in addresses:
                addresses.append(a)
        return addresses

    def refresh_nodes(self, max_age_s: float = 0.0) -> Op:
        """Ask up to three agents for their membership tables and merge them."""
        if time.monotonic() - self._nodes_at <= max_age_s and self._nodes:
            return list(self._nodes.values())
        candidates = self.known_addresses()
        merged: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for start in range(0, len(candidates), 3):  # three at a time until one answers
            calls = yield from self.execute(Batch(
                [Call(a, P.NODES, {}) for a in candidates[start : start + 3]],
                timeout_s=self.settings.connect_timeout_s,
                fail_fast=False,
                settle_s=0.2,
            ))
            for call in calls:
                if call.result is None:
                    errors.append(str(call.error))
                    continue
                for rec in call.result.get("nodes", []):
                    prev = merged.get(rec["node"])
                    if prev is None or (rec["incarnation"], -rec["age_s"]) > (
                        prev["incarnation"], -prev["age_s"]
                    ):
                        merged[rec["node"]] = rec
            if merged:
                break
        if not merged:
            detail = "; ".join(errors[:3])
            raise NodeUnavailable(
                "no mesh agent answered (are the agents running? try `grid agents start`)"
                + (f": {detail}" if detail else "")
            )
        nodes = {name: NodeInfo.from_record(r) for name, r in merged.items()}
        now = time.monotonic()
        for name, old in self._nodes.items():
            # A node this client has seen that no agent reports now (it died before its peers
            # heard it) keeps ageing here, so it still turns suspect, then dead.
            if name not in nodes and old.state != DOWN:
                age = old.age_s + (now - self._nodes_heard_at)
                state = state_for_silence(age, self.settings.suspect_after_s,
                                          self.settings.dead_after_s)
                nodes[name] = replace(old, state=state, age_s=age)
        if self.config is not None:
            for node in self.config.nodes:
                if node.name not in nodes:
                    nodes[node.name] = NodeInfo(
                        node.name, node.data_address, DOWN, 0, node.share_bytes or 0, 0, 0, 0, 0,
                        float("inf"), "",
                    )
        self._nodes = dict(sorted(nodes.items()))
        self._nodes_at = self._nodes_heard_at = now
        return list(self._nodes.values())

    def alive_nodes(self) -> Op:
        nodes = yield from self.refresh_nodes(max_age_s=self.settings.heartbeat_interval_s)
        return [n for n in nodes if n.state == ALIVE]

    # --- blocks -------------------------------------------------------------------------------

    def allocate(self, size: int, node: str | None = None, lazy: bool = False) -> Op:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidSize(f"allocation size must be a positive whole number of bytes, got {size!r}")
        nodes = yield from self.refresh_nodes(max_age_s=0.0)
        if node is not None:
            candidates = [_alive_node(nodes, node)]
        else:
            candidates = sorted(
                (n for n in nodes if n.state == ALIVE and n.room >= size),
                key=lambda n: n.room,
                reverse=True,
            )
            if not candidates:
                alive = [n for n in nodes if n.state == ALIVE]
                most = max((n.room for n in alive), default=0)
                raise CapacityError(
                    f"No available nodes for memory allocation: {format_bytes(size)} asked, "
                    f"{len(alive)} live node(s), the most room on one node is {format_bytes(most)}"
                )
        last: MeshError | None = None
        for target in candidates:
            try:
                result = yield from self.call(
                    target.address, P.ALLOC, {"size": size, "lazy": bool(lazy)},
                    # backing pages runs at about 0.5 GB/s on small VMs: allow for it
                    timeout_s=self.settings.request_timeout_s + size / 2e8,
                )
            except CapacityError as exc:
                last = exc
                continue
            self._locations[result["block"]] = (target.address, result["size"])
            self._nodes_at = -1e9  # room changed
            return result["block"]
        assert last is not None
        raise last

    def locate(self, block_id: str) -> Op:
        """(address, size) of the agent holding ``block_id``."""
        if not isinstance(block_id, str) or not block_id:
            raise BlockNotFound(f"block id must be a non-empty string, got {block_id!r}")
        found = self._locations.get(block_id)
        if found is not None:
            return found
        nodes = yield from self.refresh_nodes(max_age_s=1.0)
        hint = block_node_hint(block_id)
        live = [n for n in nodes if n.state != DEAD and n.state != DOWN]
        live.sort(key=lambda n: n.name != hint)  # the node that made it first
        for group in (live[:1], live[1:]):
            if not group:
                continue
            calls = yield from self.execute(Batch(
                [Call(n.address, P.STAT, {"block": block_id}) for n in group],
                timeout_s=self.settings.connect_timeout_s,
                fail_fast=False,
            ))
            for call in calls:
                if call.result is not None:
                    found = (call.address, int(call.result["size"]))
                    self._locations[block_id] = found
                    return found
        raise BlockNotFound(
            f"Block ID not found: {block_id} (it was deallocated or never existed; "
            "list current blocks with `grid memory list-blocks`)"
        )

    def _forget(self, block_id: str) -> None:
        self._locations.pop(block_id, None)

    def _with_location(self, block_id: str, body) -> Op:
        """Run ``body(address, size)`` where the block is. A block that moves meanwhile is
        followed: "moving" waits a moment, "not found" looks again; it ends when the block is
        found nowhere (``locate`` raises) or the request timeout has passed."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        while True:
            address, size = yield from self.locate(block_id)
            try:
                return (yield from body(address, size))
            except (BlockMoving, BlockNotFound) as exc:
                self._forget(block_id)
                if time.monotonic() > deadline:
                    raise
                if isinstance(exc, BlockMoving):
                    yield from self.pause(MOVING_RETRY_S)

    def write(self, block_id: str, data: Any, offset: int = 0) -> Op:
        view = byte_view(data)
        _check_offset(offset)
        n = view.nbytes
        chunk = self.settings.chunk_bytes

        def body(address: str, size: int) -> Op:
            if offset + n > size:
                raise OutOfRange(
                    f"write of {n} bytes at offset {offset} is past the end of block "
                    f"{block_id} ({size} bytes)"
                )
            if n == 0:
                return 0
            calls = (
                Call(address, P.WRITE, {"block": block_id, "offset": offset + i},
                     payload=view[i : i + chunk])
                for i in range(0, n, chunk)
            )
            yield from self.execute(Batch(calls, self.settings.request_timeout_s,
                                          self.settings.window))
            return n

        return (yield from self._with_location(block_id, body))

    def read_into(self, block_id: str, buffer: Any, offset: int = 0,
                  size: int | None = None) -> Op:
        out = byte_view(buffer, writable=True)
        _check_offset(offset)
        chunk = self.settings.chunk_bytes

        def body(address: str, block_size: int) -> Op:
            n = out.nbytes if size is None else size
            if n < 0:
                raise InvalidSize(f"read size must be >= 0, got {n}")
            if n > out.nbytes:
                raise InvalidRequest(f"buffer of {out.nbytes} bytes is smaller than {n}")
            if offset + n > block_size:
                raise OutOfRange(
                    f"read of {n} bytes at offset {offset} is past the end of block "
                    f"{block_id} ({block_size} bytes)"
                )
            calls = (
                Call(address, P.READ, {"block": block_id, "offset": offset + i,
                                       "length": min(chunk, n - i)},
                     sink=out[i : i + min(chunk, n - i)])
                for i in range(0, n, chunk)
            )
            yield from self.execute(Batch(calls, self.settings.request_timeout_s,
                                          self.settings.window))
            return n

        return (yield from self._with_location(block_id, body))

    def read(self, block_id: str, size: int | None = None, offset: int = 0) -> Op:
        _check_offset(offset)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise InvalidSize(f"read size must be a whole number >= 0, got {size!r}")
        _, block_size = yield from self.locate(block_id)
        n = block_size - offset if size is None else size
        if n < 0:
            raise OutOfRange(f"offset {offset} is past the end of block {block_id} ({block_size} bytes)")
        out = bytearray(n)
        yield from self.read_into(block_id, out, offset, n)
        return out

    def free(self, block_id: str) -> Op:
        def body(address: str, size: int) -> Op:
            yield from self.call(address, P.FREE, {"block": block_id})
            return None

        yield from self._with_location(block_id, body)
        self._forget(block_id)
        self._nodes_at = -1e9

    def move(self, block_id: str, target: str, timeout_s: float | None = None) -> Op:
        """Move a block to node ``target``, agent to agent; its id stays the same.

        The source copies it to the target (which verifies a crc32 of the copy), hands over the
        keys naming it, then frees its own copy. Returns the source's report (from, to, size,
        checksum, seconds). On failure (``MoveFailed``) the original is intact at the source."""
        nodes = yield from self.refresh_nodes(max_age_s=self.settings.heartbeat_interval_s)
        dest = _alive_node(nodes, target)
        address, size = yield from self.locate(block_id)
        if address == dest.address:
            raise InvalidRequest(f"block {block_id} is already on node {target}")
        # a generous allowance: copying runs at about 1 GB/s here, verifying at 4 GB/s
        budget = timeout_s or (self.settings.request_timeout_s + size / 20e6)
        result = yield from self.call(address, P.MOVE, {
            "block": block_id, "target": dest.address, "timeout_s": float(budget),
        }, timeout_s=budget + self.settings.request_timeout_s, wait_moving=False)
        self._locations[block_id] = (dest.address, size)
        self._nodes_at = -1e9
        return result

    def stat(self, block_id: str) -> Op:
        def body(address: str, size: int) -> Op:
            return (yield from self.call(address, P.STAT, {"block": block_id}))

        rec = yield from self._with_location(block_id, body)
        return _block_info(rec)

    def blocks(self) -> Op:
        nodes = yield from self.alive_nodes()
        calls = yield from self.execute(Batch(
            [Call(n.address, P.LIST, {}) for n in nodes],
            timeout_s=self.settings.request_timeout_s,
            fail_fast=False,
        ))
        out = []
        for call in calls:
            for rec in (call.result or {}).get("blocks", []):
                info = _block_info(rec)
                self._locations[info.block_id] = (call.address, info.size)
                out.append(info)
        return sorted(out, key=lambda b: (b.node, b.created, b.block_id))

    def stats(self) -> Op:
        nodes = yield from self.refresh_nodes(max_age_s=0.0)
        live = [n for n in nodes if n.state == ALIVE]
        calls = yield from self.execute(Batch(
            [Call(n.address, P.STATS, {}) for n in live],
            timeout_s=self.settings.connect_timeout_s,
            fail_fast=False,
        ))
        by_address = {c.address: c.result for c in calls if c.result is not None}
        per_node = []
        for n in nodes:
            rec = by_address.get(n.address)
            # the agent's own answer is fresher than the heartbeat that told us of it
            fresh = n if rec is None else NodeInfo.from_record(rec, n.state, n.age_s)
            state = n.state if rec is not None or n.state != ALIVE else SUSPECT
            per_node.append({**fresh.record(), "state": state,
                             "reason": _down_reason(n, rec is not None)})
        return {
            "nodes": per_node,
            "live_nodes": sum(1 for p in per_node if p["state"] == ALIVE),
            "total_blocks": sum(p["blocks"] for p in per_node if p["state"] == ALIVE),
            "total_used": sum(p["used"] for p in per_node if p["state"] == ALIVE),
            "total_capacity": sum(p["capacity"] for p in per_node if p["state"] == ALIVE),
        }


def _alive_node(nodes: list[NodeInfo], name: str) -> NodeInfo:
    """The node called ``name``; ``NodeUnavailable`` when it is unknown or not alive."""
    node = next((n for n in nodes if n.name == name), None)
    if node is None:
        known = ", ".join(n.name for n in nodes) or "none"
        raise NodeUnavailable(f"unknown node {name!r} (known: {known})")
    if node.state != ALIVE:
        raise NodeUnavailable(f"node {name!r} is {node.state}", node=name)
    return node


def _down_reason(n: NodeInfo, answered: bool) -> str | None:
    """Why a node is not serving, as far as heartbeats tell."""
    if n.state == DOWN:
        return "in the config, but no agent has heard from it"
    if n.state in (DEAD, SUSPECT):
        return f"no heartbeat for {n.age_s:.0f} s"
    if not answered:
        return "did not answer the stats request"
    return None


def _check_offset(offset: Any) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise InvalidRequest(f"offset must be a whole number of bytes, got {offset!r}")
    if offset < 0:
        raise OutOfRange(f"offset must be >= 0, got {offset}")


def _block_info(rec: dict[str, Any]) -> BlockInfo:
    return BlockInfo(rec["block"], rec["node"], int(rec["size"]), bool(rec["lazy"]),
                     float(rec["created"]))
