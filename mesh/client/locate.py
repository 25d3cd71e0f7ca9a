"""Where a block is: ``BlockInfo`` (a block record as the client sees it, one row per block
however many copies it has), ``find_block`` (the agent to send a block's requests to) and ``merge_copies``
(one listing row per block, however many copies it has).

A replicated block (``docs/durability.md``) answers STAT on every copy that may serve, with
``nodes``: the nodes holding a current copy, primary first. Changes go to the primary, and so
do reads (its copy is never behind an acknowledged write; nor is any other current copy). A
copy that cannot serve now (its lease lapsed, it is being filled, or it is a backup asked to
change the block) answers ``NotCurrent``, which the callers' ``follow`` treats like a block
being handed over: wait a moment and find it again. So is a copy's answer that names a primary
which has just failed to answer this lookup (killed: its port refuses at once): the copies take
over once the mesh declares it dead.

Not here: the sockets and the location cache (``mesh/client/core.py``), following a block that
moves (``mesh/client/transfer.py: follow``), who to blame when a block is found nowhere
(``mesh/client/blame.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh import protocol as P
from mesh.client.batch import Batch, Call, Op
from mesh.client.blame import unavailable
from mesh.errors import BlockNotFound, NotCurrent
from mesh.machine import machine_id
from mesh.membership import ALIVE, DEAD, DOWN

if TYPE_CHECKING:
    from mesh.client.core import Core


@dataclass(frozen=True)
class BlockInfo:
    block_id: str
    node: str
    size: int
    lazy: bool
    created: float
    expires: float | None = None  # epoch seconds when a block made with a ttl is freed
    pending: bool = False  # made for a put whose key is not published yet (a lease holds it)
    nodes: tuple[str, ...] = ()  # with replicas: the nodes holding a current copy, primary first
    epoch: int = 0  # with replicas: its replica set's epoch
    replicas: int = 1  # the copies asked for
    shared_hosts: bool = False  # some of its copies share a machine (only with spread "node")


def block_info(rec: dict[str, Any]) -> BlockInfo:
    expires = rec.get("expires")
    nodes = tuple(rec.get("nodes") or (rec["node"],))
    return BlockInfo(rec["block"], nodes[0], int(rec["size"]), bool(rec["lazy"]),
                     float(rec["created"]), None if expires is None else float(expires),
                     bool(rec.get("pending", False)), nodes, int(rec.get("epoch") or 0),
                     int(rec.get("replicas") or 1), bool(rec.get("shared_hosts")))


def primary_address(core: Core, address: str, rec: dict[str, Any]) -> str:
    """Where a block's changes go, given ``rec`` as the agent at ``address`` described it: its
    primary's address when another node is primary (and we know that node's address)."""
    nodes = rec.get("nodes") or []
    if not nodes or nodes[0] == rec.get("node"):
        return address
    info = core.node_info(nodes[0])
    return info.address if info is not None and info.state not in (DEAD, DOWN) else address


def nearest(core: Core, rec: dict[str, Any]) -> str | None:
    """The address of a current copy on this machine (``mesh/machine.py``), other than the
    primary's, to read from; None when there is none."""
    here = machine_id()
    for name in (rec.get("nodes") or [])[1:]:
        info = core.node_info(name)
        if info is not None and info.domain == here and info.state == ALIVE:
            return info.address
    return None


def find_block(core: Core, block_id: str, hint: str | None) -> Op:
    """(address, size, replicated, near) of ``block_id``: the primary's address, and a copy on
    this machine to read from (or None). Asked first of the node that made it (``hint``),
    then of every other live node at once."""
    nodes = yield from core.refresh_nodes(max_age_s=1.0)
    live = [n for n in nodes if n.state != DEAD and n.state != DOWN]
    live.sort(key=lambda n: n.name != hint)  # the node that made it first
    silent: set[str] = set()  # addresses asked that did not answer
    not_current: NotCurrent | None = None
    for group in (live[:1], live[1:]):
        if not group:
            continue
        calls = yield from core.execute(Batch(
            [Call(n.address, P.STAT, {"block": block_id}) for n in group],
            timeout_s=core.settings.connect_timeout_s,
            fail_fast=False,
        ))
        for call in calls:
            if isinstance(call.error, NotCurrent):
                not_current = call.error  # a copy is there, not serving this instant
            elif call.error is not None and not isinstance(call.error, BlockNotFound):
                silent.add(call.address)
        for call in calls:
            if call.result is not None:
                replicated = len(call.result.get("nodes") or []) > 1 or \
                    int(call.result.get("replicas") or 1) > 1
                primary = primary_address(core, call.address, call.result)
                if primary in silent:  # a copy names a primary that just failed to answer us
                    not_current = NotCurrent(
                        f"block {block_id}: its primary {core.node_name(primary) or primary} "
                        "does not answer; another copy takes over once it is declared dead")
                    continue
                near = nearest(core, call.result)
                return (primary, int(call.result["size"]), replicated,
                        None if near == primary else near)
    if not_current is not None:
        raise not_current  # the caller waits and looks again
    # its node dead, paused or silent: the block is not known to be gone (issue 10, #7)
    blamed = unavailable(nodes, hint, silent, f"block {block_id}")
    if blamed is not None:
        raise blamed
    raise BlockNotFound(
        f"Block ID not found: {block_id} (it was deallocated or never existed; "
        "list current blocks with `grid memory list-blocks`)"
    )


def merge_copies(found: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """One (address, record) per block: of its copies, the record of the newest replica set,
    the primary's when it answered."""
    best: dict[str, tuple[tuple, str, dict[str, Any]]] = {}
    for address, rec in found:
        nodes = rec.get("nodes") or []
        rank = (int(rec.get("epoch") or 0), bool(nodes) and nodes[0] == rec.get("node"))
        held = best.get(rec["block"])
        if held is None or rank > held[0]:
            best[rec["block"]] = (rank, address, rec)
    return [(address, rec) for _, address, rec in best.values()]
