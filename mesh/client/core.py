"""The client core shared by ``MeshClient`` and ``AsyncMeshClient``: ``Core``.

Every client operation is a generator written once here or in ``mesh/client/objects.py``. It
sends and receives only with non-blocking calls, and when it must wait it yields a ``Wait``
(which sockets, how long); the sync client answers with ``zmq.Poller``, the async one with
``zmq.asyncio.Poller`` (``mesh/client/drivers.py``). Nothing else differs between the two.

``Core`` holds one link per agent address (``execute`` is the one place that sends and
receives), the membership view, block locations, placement, and the block operations
(``allocate``, ``write``, ``read_into``, ``free``, ``move``, ...). With a key (a keyed
cluster) a link is a sealed session made by a CURVE handshake the first time an address is
used (``mesh/security/link.py``); without one it is a plain DEALER.

Not here: the batch window and reply matching (``mesh/client/batch.py``, pure), how the
membership view is merged and version skew noticed (``mesh/client/view.py``, pure), telling a
port where nothing listens from a slow agent (``mesh/client/reach.py``), how a range is
cut into chunks and how a moving block is followed (``mesh/client/transfer.py``), the same-host
path that ``write`` and ``read_into`` try first (``mesh/client/local.py``), frame layouts
(``mesh/protocol.py``), exceptions (``mesh/errors.py``), config files (``mesh/config.py``), and
the CLI (``mesh/cli/``).
"""

from __future__ import annotations

import itertools
import random
import re
import time
from typing import Any, Callable

import zmq

from mesh import __version__, protocol as P
from mesh._malloc import tune_for_transfers
from mesh.client.batch import Batch, BatchRun, Call, Op, Wait, byte_view
from mesh.client.blame import down_reason
from mesh.client.locate import BlockInfo, block_info as _block_info, find_block, primary_address
from mesh.client.listing import one_per_block as _one_per_block, pages as _pages
from mesh.client.transfer import check_offset, chunk_calls, follow, found
from mesh.config import ClusterConfig, MeshSettings
from mesh.errors import (
    AuthenticationError,
    BlockNotFound,
    CapacityError,
    Forbidden,
    InvalidRequest,
    InvalidSize,
    MeshError,
    NodeUnavailable,
    OutOfRange,
    PlacementShort,
    SealError,
    SessionLost,
)
from mesh.membership import ALIVE, DEAD, LIVE_FIELDS, SUSPECT, NodeInfo
from mesh.client.links import Links
from mesh.client.direct import DirectPath
from mesh.client.local import LocalPath
from mesh.client.view import VersionWatch, build_view, newer, nobody_listens
from mesh.units import format_bytes

__all__ = ["BlockInfo", "Core", "Listing", "NodeInfo", "block_node_hint"]  # BlockInfo: re-exported

_BLOCK_ID = re.compile(r"^block_\d+_(?P<node>.+)_[0-9a-z]+$")


class Listing(list):
    """A listing (``blocks()``, ``keys()``): a list of what the nodes that answered hold, and
    ``failed_nodes``, {node: why} for each node that was asked and did not answer (its rows
    may be missing). Empty when the listing is complete."""

    def __init__(self, items: Any = (), failed_nodes: dict[str, str] | None = None):
        super().__init__(items)
        self.failed_nodes: dict[str, str] = dict(failed_nodes or {})


# Timeout allowances for work that grows with the size: the slowest rates still waited for.
BACKING_BYTES_PER_S = 200e6  # backing a new block's pages runs at about 0.5 GB/s on small VMs
MOVE_BYTES_PER_S = 20e6  # moves copy at ~1 GB/s, verify at 4 GB/s (`tools/bench.py move`)


def block_node_hint(block_id: str) -> str | None:
    m = _BLOCK_ID.match(block_id)
    return m.group("node") if m else None


class Core:
    """Sockets, membership view and the operations. Not thread-safe: a client lends each of
    its cores to one operation at a time (``mesh/client/pool.py``)."""

    def __init__(
        self,
        settings: MeshSettings,
        seeds: dict[str, str | None],
        config: ClusterConfig | None = None,
        ctx: zmq.Context | None = None,
        key: Any = None,
    ):
        self.settings = settings
        self.config = config
        self.ctx = ctx or zmq.Context.instance()
        self.seeds = dict(seeds)  # address -> node name (None when built from an address)
        self._ids = itertools.count(1)
        self.links = Links(self.ctx, settings, key)
        self._nodes: dict[str, NodeInfo] = {}  # by node name
        self._nodes_at = float("-inf")  # when the view was last refreshed
        self._nodes_heard_at = 0.0
        self._locations: dict[str, tuple[str, int]] = {}  # block id -> (address, size)
        self.replicated: set[str] = set()  # block ids known to have copies on other nodes
        self.near: dict[str, str] = {}  # block id -> a copy on this machine, for reads
        self.closed = False
        self.versions = VersionWatch(__version__)  # warns once per (node, other version)
        self.local = LocalPath(self)  # agents on this machine: shared memory, not TCP
        self.direct = DirectPath(self)  # the others, without keys: plain TCP beside ZeroMQ
        tune_for_transfers(settings.max_message_bytes, settings.window)

    # --- sockets ------------------------------------------------------------------------------

    def link(self, address: str) -> Op:
        """The link to ``address``, made (and on a keyed cluster, shaken hands) if needed."""
        if self.closed:
            raise MeshError("the client is closed")
        return (yield from self.links.get(address, self.node_name(address)))

    def socket(self, address: str) -> zmq.Socket:
        """The socket replies from ``address`` arrive on (a link made already)."""
        return self.links.live[address].sock

    def reset(self, address: str) -> None:
        """Drop a link whose requests timed out, so nothing queued in it is ever delivered."""
        self.links.drop(address)

    def close(self) -> None:
        self.links.close()
        self.local.close()
        self.direct.close()
        self.closed = True

    def node_info(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def node_name(self, address: str) -> str | None:
        for info in self._nodes.values():
            if info.address == address:
                return info.name
        return self.seeds.get(address)

    # --- the one place that sends and receives ------------------------------------------------

    def execute(self, batch: Batch) -> Op:
        run = BatchRun(batch, self._ids)
        watched: set[str] = set()  # links checked for a loss while idle (once a batch)
        try:
            while True:
                now = time.monotonic()
                for call, frames in run.ready(now, time.time(), self.settings.clock_skew_s):
                    try:
                        link = self.links.live.get(call.address)
                        if link is not None and call.address not in watched:
                            watched.add(call.address)
                            if self.links.refused(call.address) is not None:
                                link = None  # lost while idle (the agent restarted): a new one
                        if link is None or link.stale(now):
                            link = yield from self.link(call.address)
                        link.send(frames)
                    except zmq.Again:
                        run.fail(call, NodeUnavailable(
                            f"{call.address} is not accepting requests (send queue full)"
                        ))
                    except MeshError as exc:  # unavailable, refused, or a failed handshake
                        run.fail(call, exc)
                if run.finished(now):
                    break
                wait = run.wait_s(now)
                if wait <= 0:
                    run.expire(now)
                    continue
                addresses = run.inflight_addresses()
                live = self.links.live
                probe_s = self.links.poll_s(addresses)  # links not known to reach an agent yet
                ready = yield Wait(tuple(live[a].sock for a in addresses if a in live)
                                   + tuple(self.links.monitors(addresses)),
                                   wait if probe_s is None else min(wait, probe_s))
                now = time.monotonic()
                for address in addresses:
                    refused = self.links.refused(address)
                    if refused is not None:  # no key for a keyed agent, or the agent is gone
                        run.fail_address(address, refused)
                        continue
                    link = self.links.live.get(address)
                    if link is None or link.sock not in ready:
                        continue
                    node = self.node_name(address)
                    for _ in range(4 * batch.window + 8):
                        try:
                            frames = link.open(link.sock.recv_multipart(zmq.NOBLOCK, copy=False))
                        except zmq.Again:
                            break
                        except SessionLost:  # nothing sent since was applied: say so
                            self.reset(address)
                            run.fail_address(address, NodeUnavailable(
                                f"{node or address} no longer knows this client's session (it "
                                "restarted?); nothing was applied; retry", node=node))
                            break
                        except SealError:
                            self.links.refused_replies += 1  # not from the agent: dropped
                            continue
                        run.on_reply(address, frames, now, node)
                        if not run.waiting_on(address):
                            break  # (one more recv would only raise zmq.Again: ~10 us)
        finally:
            for address in run.abandoned:
                self.reset(address)
        return run.outcome()

    def call(self, address: str, op: str, fields: dict[str, Any] | None = None,
             timeout_s: float | None = None, wait_moving: bool = True) -> Op:
        """One request. A change refused because its block is being moved (``BlockMoving``)
        is retried at the same address until the request timeout, unless ``wait_moving`` is
        False; "not found" is the caller's to follow."""
        timeout_s = timeout_s or self.settings.request_timeout_s

        def once(address: str) -> Op:
            calls = yield from self.execute(Batch([Call(address, op, fields or {})], timeout_s))
            return calls[0].result

        if not wait_moving:
            return (yield from once(address))
        return (yield from follow(found(address), once, timeout_s, relocate=False))

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
        # three at a time until one answers; agents we hold a link to first, alone: a new link
        # to a keyed agent that died costs a handshake's timeout, which the others must not wait
        linked = [a for a in self.known_addresses() if a in self.links.live]
        rest = [a for a in self.known_addresses() if a not in linked]
        groups = [g[i : i + 3] for g in (linked, rest) for i in range(0, len(g), 3)]
        merged: dict[str, dict[str, Any]] = {}
        errors: list[tuple[str, MeshError]] = []
        for group in groups:
            calls = yield from self.execute(Batch(
                [Call(a, P.NODES, {}) for a in group],
                timeout_s=self.settings.connect_timeout_s,
                fail_fast=False,
                settle_s=0.2,
            ))
            for call in calls:
                if call.result is None:
                    errors.append((call.address, call.error))
                    continue
                for rec in call.result.get("nodes", []):
                    self.links.learn(rec)
                    self.versions.check(rec["node"], str(rec.get("version") or ""))
                    if newer(rec, merged.get(rec["node"])):
                        merged[rec["node"]] = rec
            if merged:
                break
        if not merged:
            refused = [e for _, e in errors if isinstance(e, (AuthenticationError, Forbidden))]
            if refused:  # the agents are there, and say no: that is the answer, not "not running"
                raise refused[0]
            asked = [a for g in groups for a in g]
            why = sorted(((a, self.node_name(a), self.links.unreached.get(a, ("", 0))[0])
                          for a, _ in errors), key=lambda w: asked.index(w[0]))
            if why and all(w for _, _, w in why):  # nothing listens anywhere: say so at once
                raise nobody_listens(why)
            detail = "; ".join(str(e) for _, e in errors[:3])
            raise NodeUnavailable(
                "no mesh agent answered (are the agents running? try `grid agents start`)"
                + (f": {detail}" if detail else "")
            )
        now = time.monotonic()
        self._nodes = build_view(merged, self._nodes, now - self._nodes_heard_at, self.settings,
                                 self.config, self.links.unreached, now)
        self._nodes_at = self._nodes_heard_at = now
        return list(self._nodes.values())

    def invalidate_nodes(self) -> None:
        """Drop the membership view's freshness: the next look refreshes it (after a change of
        room: allocations, frees, moves, new keys)."""
        self._nodes_at = float("-inf")

    def alive_nodes(self) -> Op:
        nodes = yield from self.refresh_nodes(max_age_s=self.settings.heartbeat_interval_s)
        return [n for n in nodes if n.state == ALIVE]

    # --- blocks -------------------------------------------------------------------------------

    def allocate(self, size: int, node: str | None = None, lazy: bool = False,
                 ttl_s: float | None = None, pending: bool = False,
                 replicas: int | None = None, spread: str | None = None) -> Op:
        """A new block's id. ``ttl_s``: the agent frees it that long after (else it lives until
        freed); ``pending``: it is made for a named put and lives while requests name it within
        ``mesh.lease_s``, until a key names it (``agents/store.py``: leases). ``replicas``
        (default ``mesh.replicas``): copies on distinct nodes, on distinct machines unless
        ``spread="node"`` (default ``mesh.replica_spread``); ``node`` is then the primary."""
        replicas = self.settings.replicas if replicas is None else replicas
        spread = spread or self.settings.replica_spread
        if isinstance(replicas, bool) or not isinstance(replicas, int) or \
                not 1 <= replicas <= 16 or spread not in ("host", "node"):
            raise InvalidRequest(f"replicas must be 1 to 16 and spread 'host' or 'node', got "
                                 f"{replicas!r} and {spread!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidSize(f"allocation size must be a positive whole number of bytes, got {size!r}")
        fields: dict[str, Any] = {"size": size, "lazy": bool(lazy)}
        if ttl_s is not None:
            if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or \
                    not 0 < ttl_s < float("inf"):
                raise InvalidRequest(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
            fields["ttl_s"] = float(ttl_s)
        if pending:
            fields["pending"] = True
        if replicas > 1:
            fields.update(replicas=replicas, spread=spread)
        nodes = yield from self.refresh_nodes(max_age_s=0.0)
        if node is not None:
            candidates = [_alive_node(nodes, node)]
        else:
            candidates = sorted(
                (n for n in nodes if n.state == ALIVE and n.room >= size),
                key=lambda n: n.room,
                reverse=True,
            ) or _by_chance(  # full: nodes that can make room by evicting (agents/eviction.py)
                [n for n in nodes if n.state == ALIVE and n.room + n.evictable >= size])
            if not candidates:
                alive = [n for n in nodes if n.state == ALIVE]
                most = max((n.room for n in alive), default=0)
                raise CapacityError(
                    f"No available nodes for memory allocation: {format_bytes(size)} asked, "
                    f"{len(alive)} live node(s), the most room on one node is {format_bytes(most)}"
                )
        last: MeshError | None = None
        # an agent that has not heard every peer yet (just started) may place fewer copies than
        # this client sees room for: it is asked again for up to a dead_after_s
        alive = [n for n in nodes if n.state == ALIVE and n.room >= size]
        fits = len({n.domain or n.name for n in alive} if spread == "host" else alive) >= replicas
        patience = time.monotonic() + (self.settings.dead_after_s if fits else 0.0)
        for target in candidates:
            try:
                result = yield from self.call(
                    target.address, P.ALLOC, fields,
                    timeout_s=self.settings.request_timeout_s + size / BACKING_BYTES_PER_S,
                )
            except PlacementShort:
                if time.monotonic() > patience:
                    raise
                yield from self.pause(self.settings.heartbeat_interval_s)
                candidates.append(target)
                continue
            except CapacityError as exc:
                last = exc
                continue
            self._locations[result["block"]] = (target.address, result["size"])
            if len(result.get("nodes") or ()) > 1:
                self.replicated.add(result["block"])
            self.invalidate_nodes()  # room changed
            return result["block"]
        assert last is not None
        raise last

    def locate(self, block_id: str) -> Op:
        """(address, size) of the agent serving ``block_id`` (its primary, when it has
        replicas: ``mesh/client/locate.py``)."""
        if not isinstance(block_id, str) or not block_id:
            raise BlockNotFound(f"block id must be a non-empty string, got {block_id!r}")
        found = self._locations.get(block_id)
        if found is not None:
            return found
        address, size, replicated, near = yield from find_block(self, block_id,
                                                                 block_node_hint(block_id))
        self._locations[block_id] = (address, size)
        if replicated:
            self.replicated.add(block_id)
        if near:  # a copy on this machine: reads go there (docs/durability.md: reads)
            self.near[block_id] = near
        return address, size

    def forget_location(self, block_id: str) -> None:
        """Drop the cached place of a block (it moved, or it is gone), and its mapping."""
        self._locations.pop(block_id, None)
        self.local.forget(block_id)
        self.near.pop(block_id, None)

    def follow_block(self, block_id: str, body: Callable[[str, int], Op],
                     progress: Callable[[], int] | None = None) -> Op:
        """Run ``body(address, size)`` where the block is, following it while it moves
        (``follow`` in ``mesh/client/transfer.py``): until the block is found nowhere
        (``locate`` raises) or the request timeout passes without ``progress`` growing."""
        return (yield from follow(
            lambda: self.locate(block_id), lambda where: body(*where),
            self.settings.request_timeout_s,
            forget=lambda: self.forget_location(block_id), progress=progress,
            failover=lambda: block_id in self.replicated,
        ))

    def write(self, block_id: str, data: Any, offset: int = 0) -> Op:
        view = byte_view(data)
        check_offset(offset)
        n = view.nbytes

        def body(address: str, size: int) -> Op:
            if offset + n > size:
                raise OutOfRange(
                    f"write of {n} bytes at offset {offset} is past the end of block "
                    f"{block_id} ({size} bytes)"
                )
            if n == 0 or (yield from self.local.write(address, block_id, offset, view)) or \
                    (yield from self.direct.write(address, block_id, offset, view)):
                return n
            calls = chunk_calls(P.WRITE, address, block_id, offset, [view],
                                self.settings.chunk_bytes)
            yield from self.execute(Batch(calls, self.settings.request_timeout_s,
                                          self.settings.window))
            return n

        return (yield from self.follow_block(block_id, body))

    def read_into(self, block_id: str, buffer: Any, offset: int = 0,
                  size: int | None = None) -> Op:
        out = byte_view(buffer, writable=True)
        check_offset(offset)

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
            address = self.near.get(block_id, address)
            if n and ((yield from self.local.read(address, block_id, offset, out[:n])) or
                      (yield from self.direct.read(address, block_id, offset, out[:n]))):
                return n
            calls = chunk_calls(P.READ, address, block_id, offset, [out[:n]],
                                self.settings.chunk_bytes)
            yield from self.execute(Batch(calls, self.settings.request_timeout_s,
                                          self.settings.window))
            return n

        return (yield from self.follow_block(block_id, body))

    def read(self, block_id: str, size: int | None = None, offset: int = 0) -> Op:
        check_offset(offset)
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

        yield from self.follow_block(block_id, body)
        self.forget_location(block_id)
        self.invalidate_nodes()

    def move(self, block_id: str, target: str, timeout_s: float | None = None,
             source: str | None = None) -> Op:
        """Move a block to node ``target``, agent to agent; its id stays the same.

        The source copies it to the target (which verifies a checksum of the copy), hands over the
        keys naming it, then frees its own copy. Returns the source's report (from, to, size,
        checksum, seconds). On failure (``MoveFailed``) the original is intact at the source.
        A replicated block moves the copy on ``source`` (default: its primary's); the target
        gets a copy before the source lets go of its own (docs/durability.md)."""
        nodes = yield from self.refresh_nodes(max_age_s=self.settings.heartbeat_interval_s)
        dest = _alive_node(nodes, target)
        info = yield from self.stat(block_id)
        address, size = yield from self.locate(block_id)
        if target in info.nodes:
            raise InvalidRequest(f"block {block_id} is already on node {target}")
        budget = timeout_s or (self.settings.request_timeout_s + size / MOVE_BYTES_PER_S)
        fields = {"block": block_id, "target": dest.address, "timeout_s": float(budget)}
        if len(info.nodes) > 1 or info.replicas > 1:
            fields["source"] = source or info.nodes[0]
        result = yield from self.call(address, P.MOVE, fields, wait_moving=False,
                                      timeout_s=budget + self.settings.request_timeout_s)
        self.forget_location(block_id)
        self.invalidate_nodes()
        return result

    def stat(self, block_id: str) -> Op:
        def body(address: str, size: int) -> Op:
            return (yield from self.call(address, P.STAT, {"block": block_id}))

        rec = yield from self.follow_block(block_id, body)
        return _block_info(rec)

    def listing(self, op: str, field: str, page: int | None = None) -> Op:
        """Every record of a paged listing from every live or suspect node
        (``mesh/client/listing.py``: ``pages``)."""
        return (yield from _pages(self, op, field, page))

    def block_records(self, page: int | None = None) -> Op:
        """One record per block, as the agent holding its newest copy describes it."""
        found, failed = yield from self.listing(P.LIST, "blocks", page)
        pairs = _one_per_block(found)
        locations = self._locations
        for address, rec in pairs:
            if rec.get("nodes"):  # (a block with copies: its primary may be another node)
                address = primary_address(self, address, rec)
            locations[rec["block"]] = (address, int(rec["size"]))
        return Listing([rec for _, rec in pairs], failed)

    def blocks(self, page: int | None = None) -> Op:
        records = yield from self.block_records(page)
        return Listing(sorted(map(_block_info, records),
                              key=lambda b: (b.node, b.created, b.block_id)),
                       records.failed_nodes)

    def stats(self) -> Op:
        nodes = yield from self.refresh_nodes(max_age_s=0.0)
        live = [n for n in nodes if n.state == ALIVE]
        calls = yield from self.execute(Batch(
            [Call(n.address, P.STATS, {}) for n in live],
            timeout_s=self.settings.connect_timeout_s,
            fail_fast=False,
        ))
        refused = next((c.error for c in calls
                        if isinstance(c.error, (AuthenticationError, Forbidden))), None)
        if refused is not None:  # a node refuses this key (revoked there already): say so
            raise refused
        by_address = {c.address: c.result for c in calls if c.result is not None}
        per_node = []
        for n in nodes:
            rec = by_address.get(n.address)
            # the agent's own answer is fresher than the heartbeat that told us of it
            fresh = n if rec is None else NodeInfo.from_record(rec, n.state, n.age_s)
            state = n.state if rec is not None or n.state != ALIVE else SUSPECT
            live = {k: rec[k] for k in LIVE_FIELDS if k in (rec or ())}  # counters, uptime
            per_node.append({**fresh.record(), **live, "state": state,
                             "reason": down_reason(n, rec is not None)})
        return {
            "nodes": per_node,
            "live_nodes": sum(1 for p in per_node if p["state"] == ALIVE),
            "total_blocks": sum(p["blocks"] for p in per_node if p["state"] == ALIVE),
            "total_used": sum(p["used"] for p in per_node if p["state"] == ALIVE),
            "total_capacity": sum(p["capacity"] for p in per_node if p["state"] == ALIVE),
        }


def _by_chance(nodes: list[NodeInfo]) -> list[NodeInfo]:
    """Full nodes that can evict, in a random order weighted by what they can free: new
    entries spread over them as their caches' sizes go, so each one's least recently used key
    stays about as old as the mesh's (always the same node first would churn that one alone)."""
    return sorted(nodes, key=lambda n: random.random() ** (1.0 / max(1, n.room + n.evictable)),
                  reverse=True)


def _alive_node(nodes: list[NodeInfo], name: str) -> NodeInfo:
    """The node called ``name``; ``NodeUnavailable`` when it is unknown or not alive."""
    node = next((n for n in nodes if n.name == name), None)
    if node is None:
        known = ", ".join(n.name for n in nodes) or "none"
        raise NodeUnavailable(f"unknown node {name!r} (known: {known})", node=name)
    if node.state != ALIVE:
        raise NodeUnavailable(f"node {name!r} is {node.state}", node=name)
    return node
