"""Which node to blame when a block or a key is found nowhere (issue 10, defect 7).

A block id names the node that made it (``block_node_hint``) and a key's home names the node
it was published on (``mesh/client/keyclaims.py: where``). When that node is dead, suspect,
down or did not answer, the data is not known to be gone: say ``NodeUnavailable`` naming the
node and since when it has been silent (the membership view's age), never "deallocated or
never existed".

``down_reason``: why a node is not serving, for ``stats()``.

Pure: takes the membership view (``NodeInfo``s) and the wall clock. Not here: the lookups
(``Core.locate`` in ``mesh/client/core.py``, ``lookup`` in ``mesh/client/objects.py``).
"""

from __future__ import annotations

import time

from mesh.errors import NodeUnavailable
from mesh.membership import ALIVE, DEAD, DOWN, SUSPECT, NodeInfo


def node_state(node: NodeInfo, answered: bool, wall_now: float | None = None) -> str:
    """``"is dead since 12:01:03 (no heartbeat for 5 s)"`` and the like."""
    if node.state == DOWN:
        return "is down (in the config, but no agent has heard from it)"
    now = time.time() if wall_now is None else wall_now
    since = time.strftime("%H:%M:%S", time.localtime(now - node.age_s))
    if node.state != ALIVE:
        return f"is {node.state} since {since} (no heartbeat for {node.age_s:.0f} s)"
    if not answered:
        return f"did not answer (its last heartbeat was at {since})"
    return "is alive"


def unavailable(nodes: list[NodeInfo], name: str | None, silent: set[str], what: str,
                wall_now: float | None = None, where: str = "is on") -> NodeUnavailable | None:
    """The error for ``what`` (``"block b"``, ``"key 'k'"``) held by node ``name``, when that
    node is not alive or its address is in ``silent`` (asked, no answer); else None."""
    node = next((n for n in nodes if n.name == name), None)
    if node is None or (node.state == ALIVE and node.address not in silent):
        return None
    state = node_state(node, answered=node.address not in silent, wall_now=wall_now)
    return NodeUnavailable(
        f"{what} {where} node {node.name}, which {state}; it is not known to be freed "
        "(see `grid agents status`)", node=node.name)


def down_reason(n: NodeInfo, answered: bool) -> str | None:
    """Why a node is not serving, as far as heartbeats tell."""
    if n.state == DOWN:
        return "in the config, but no agent has heard from it"
    if n.state in (DEAD, SUSPECT):
        return f"no heartbeat for {n.age_s:.0f} s"
    if not answered:
        return "did not answer the stats request"
    return None
