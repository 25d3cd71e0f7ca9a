"""Rebalancing and draining: which blocks leave which node, and the moves that carry them out.

Covers: ``plan_moves`` (pure: from node loads and block sizes to a list of moves), ``loads_from``
(turn ``MeshClient.stats()`` into ``NodeLoad``s), ``master_load`` (this machine, cgroup-aware),
and ``Rebalancer``, which makes one pass: release reservations whose block is gone, plan, and for
each move reserve the memory on the target through Ray, have the agents copy the block peer to
peer (``MeshClient.move``: checksum-verified, same id, keys follow), and keep the reservation while
the block lives there. A move that fails leaves the original at the source and releases its
reservation. When this machine (the master) is over its threshold, it asks for memory on the
workers as ``grid resource-sharing request`` does.

Does not cover: the copy itself (``agents/server.py``), Ray (``mesh/balance/placement.py``), the
score (``mesh/balance/pressure.py``), output (``mesh/cli/rebalance.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mesh.config import ClusterConfig
from mesh.errors import MeshError
from mesh.balance.pressure import NodeLoad, usage_for_score
from mesh.hostmem import host_memory


@dataclass(frozen=True)
class Move:
    block: str
    size: int
    source: str
    target: str


@dataclass
class Plan:
    moves: list[Move]
    unplaced: list[tuple[str, int, str]]  # (block, size, source) with no target that fits
    # node -> pressure now, and once the moves are done; None for a node that is not alive (no
    # agent answers for it: its figures are not known, and it takes no block)
    before: dict[str, float | None]
    after: dict[str, float | None]


def plan_moves(
    loads: Iterable[NodeLoad],
    blocks: dict[str, list[tuple[str, int]]],
    high: float,
    low: float,
    drain: str | None = None,
    targets: Iterable[str] | None = None,
) -> Plan:
    """Moves that bring every node over ``high`` under ``low`` (or empty ``drain``).

    Biggest blocks first, each to the node that stays least loaded after taking it; a target
    must have room and stay at or under ``high`` (when draining, any room will do if no node
    can take a block under ``high``). ``targets`` limits where blocks may go.
    """
    nodes = {n.name: n for n in loads}
    # a block listed on several nodes has copies there: never two on one node
    holders: dict[str, set[str]] = {}
    for node, listed in blocks.items():
        for block, _ in listed:
            holders.setdefault(block, set()).add(node)
    allowed = set(nodes) if targets is None else set(targets) & set(nodes)
    before = _pressures(nodes)
    moves: list[Move] = []
    unplaced: list[tuple[str, int, str]] = []
    if drain is not None:
        sources = [drain] if drain in nodes else []
    else:
        sources = sorted((name for name, n in nodes.items() if n.alive and n.pressure > high),
                         key=lambda name: -nodes[name].pressure)
    for source in sources:
        for block, size in sorted(blocks.get(source, []), key=lambda b: -b[1]):
            if drain is None and nodes[source].pressure < low:
                break
            candidates = [
                nodes[t] for t in allowed
                if t != source and t not in sources and nodes[t].alive
                and nodes[t].available >= size and t not in holders.get(block, ())
            ]
            fitting = [n for n in candidates if n.moved(size).pressure <= high]
            if not fitting and drain is not None:
                fitting = candidates
            if not fitting:
                unplaced.append((block, size, source))
                continue
            best = min(fitting, key=lambda n: (n.moved(size).pressure, -n.available, n.name))
            moves.append(Move(block, size, source, best.name))
            holders.setdefault(block, set()).add(best.name)
            nodes[best.name] = best.moved(size)
            nodes[source] = nodes[source].moved(-size)
    return Plan(moves, unplaced, before, _pressures(nodes))


def _pressures(nodes: dict[str, NodeLoad]) -> dict[str, float | None]:
    return {name: n.pressure if n.alive else None for name, n in nodes.items()}


def loads_from(stats: dict[str, Any]) -> list[NodeLoad]:
    """``NodeLoad``s from ``MeshClient.stats()``."""
    return [NodeLoad.from_stats(n) for n in stats["nodes"]]


def master_load(config: ClusterConfig) -> NodeLoad:
    """This machine as a node: its host (or cgroup) memory is both its share and its host."""
    mem = host_memory()
    return NodeLoad(config.master_name(), mem.used, mem.total, mem.used, mem.total)


def master_shortfall(load: NodeLoad, high: float, low: float) -> int:
    """Bytes the master must shed to get under ``low``; 0 while it is not over ``high``."""
    if load.pressure <= high:
        return 0
    return max(0, load.host_used - int(usage_for_score(low) * load.host_total))


@dataclass
class MoveResult:
    move: Move
    ok: bool
    seconds: float = 0.0
    reservation: str = ""
    error: str = ""


@dataclass
class PassReport:
    plan: Plan
    results: list[MoveResult] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # reservations of blocks that are gone
    master: dict[str, Any] = field(default_factory=dict)  # pressure, request made (if any)

    @property
    def failed(self) -> list[MoveResult]:
        return [r for r in self.results if not r.ok]


class Rebalancer:
    """One mesh client and, unless ``placement`` is None, a Ray connection (``Placement``)."""

    def __init__(self, client: Any, config: ClusterConfig, placement: Any | None = None,
                 on_move: Callable[[MoveResult], None] | None = None):
        self.client = client
        self.config = config
        self.placement = placement
        self.on_move = on_move
        self.high = config.execution.memory_pressure_high
        self.low = config.execution.memory_pressure_low
        self._held: dict[str, list[str]] = {}  # block -> its reservations at the pass start

    # the pieces of a pass

    def snapshot(self) -> tuple[list[NodeLoad], dict[str, list[tuple[str, int]]],
                                dict[str, set[str]]]:
        """Loads, the blocks on each node (a replicated block under each node with a copy),
        and where each block has a copy."""
        loads = loads_from(self.client.stats())
        where: dict[str, set[str]] = {}
        by_node: dict[str, list[tuple[str, int]]] = {}
        for b in self.client.blocks():
            where[b.block_id] = set(b.nodes or (b.node,))
            for node in where[b.block_id]:
                by_node.setdefault(node, []).append((b.block_id, b.size))
        return loads, by_node, where

    def release_stale(self, where: dict[str, set[str]]) -> list[str]:
        """Block reservations whose block was freed or left the reserved node; expired ones.
        Remembers the live block reservations, so a move can release the one it leaves."""
        self._held = {}
        if self.placement is None:
            return []
        released = [r.id for r in self.placement.sweep_expired()]
        for r in self.placement.reservations():
            if r.kind != "block":
                continue
            targets = {t for t, _ in r.targets}
            if not where.get(r.block, set()) & targets:
                self.placement.release(r.id)
                released.append(r.id)
            else:
                self._held.setdefault(r.block, []).append(r.id)
        return released

    def _release_left_behind(self, block: str) -> None:
        """After a block moved on, the reservation on the node it left holds nothing."""
        for rid in self._held.pop(block, []):
            try:
                self.placement.release(rid)
            except MeshError:
                pass  # already gone; the next pass sweeps whatever is left

    def carry_out(self, move: Move) -> MoveResult:
        reservation = ""
        started = time.monotonic()
        try:
            if self.placement is not None:
                reservation = self.placement.reserve(
                    move.source, "memory", [(move.target, float(move.size))],
                    kind="block", block=move.block,
                ).id
            self.client.move(move.block, move.target, source=move.source)
        except MeshError as exc:
            if reservation:
                try:
                    self.placement.release(reservation)
                except MeshError:
                    pass
            result = MoveResult(move, False, time.monotonic() - started, "", str(exc))
        else:
            result = MoveResult(move, True, time.monotonic() - started, reservation)
            if self.placement is not None:
                self._release_left_behind(move.block)
        if self.on_move is not None:
            self.on_move(result)
        return result

    def relieve_master(self) -> dict[str, Any]:
        """If this machine is over its threshold, reserve memory on the workers for it."""
        load = master_load(self.config)
        info: dict[str, Any] = {"node": load.name, "pressure": load.pressure, "request": None}
        need = master_shortfall(load, self.high, self.low)
        if need <= 0 or self.placement is None:
            return info
        if any(r.source == load.name and r.kind == "request" and r.resource == "memory"
               for r in self.placement.reservations()):
            info["request"] = "already reserved"
            return info
        from mesh.balance.placement import reserve_for

        res = reserve_for(self.placement, self.config, load.name, "memory", float(need),
                          self.client.stats()["nodes"], priority="high")
        info["request"] = res.id
        return info

    # a whole pass

    def run_once(self, drain: str | None = None, dry_run: bool = False) -> PassReport:
        loads, by_node, where = self.snapshot()
        released = [] if dry_run else self.release_stale(where)
        if drain is not None and drain not in {n.name for n in loads}:
            known = ", ".join(n.name for n in loads)
            raise MeshError(f"unknown node {drain!r} (known: {known})", node=drain)
        plan = plan_moves(loads, by_node, self.high, self.low, drain=drain)
        report = PassReport(plan, released=released)
        if not dry_run:
            for move in plan.moves:
                report.results.append(self.carry_out(move))
        if drain is None:
            if dry_run:
                load = master_load(self.config)
                report.master = {"node": load.name, "pressure": load.pressure, "request": None}
            else:
                report.master = self.relieve_master()
        return report

