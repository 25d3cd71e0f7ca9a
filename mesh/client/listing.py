"""One record per block of a listing gathered from every node, fast for the common case.

``MeshClient.blocks`` asks every node for its blocks (``mesh/client/core.py``: ``listing``);
a block with replicas, or one being moved, comes back from several nodes, and
``mesh/client/locate.py`` ``merge_copies`` keeps the record of its newest replica set. Most
listings have no such block: ``one_per_block`` finds that out in one dict pass and merges only
when a block id repeats (100,000 blocks in under a second: docs/scale.md).

``pages`` asks every node for its pages at once. A page is milliseconds of an agent's work, so
one not answered within ``connect_timeout_s`` is news; but an agent on a busy machine (100 on
two cores: docs/scale.md) can be slower than that while its heartbeats still come. Such a page
is asked again, each time waiting twice as long, while the membership view says the node is
alive, until it has been waited for ``request_timeout_s`` in all; a node found suspect or dead by then, or
one that answers with an error, is a failed node of the listing at once.
"""

from __future__ import annotations

from typing import Any

from mesh.client.batch import Batch, Call, Op
from mesh.client.locate import merge_copies
from mesh.errors import MeshTimeout
from mesh.membership import ALIVE, SUSPECT


def one_per_block(found: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``(address, record)`` pairs, one per block id, as ``merge_copies`` chooses them."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for pair in found:
        if seen.setdefault(pair[1]["block"], pair) is not pair:
            return merge_copies(found)
    return list(seen.values())


def pages(core: Any, op: str, field: str, page: int | None = None) -> Op:
    """Every record of a paged listing (LIST, KLIST) from every live or suspect node:
    ``([(address, record), ...], failed_nodes)``, where ``failed_nodes`` maps each node that
    did not answer to why (what it sent before failing is kept). Pages are asked of all nodes
    at once, until each says there is no more."""
    settings = core.settings
    nodes = yield from core.refresh_nodes(max_age_s=settings.heartbeat_interval_s)
    cursors = {n.address: 0 for n in nodes if n.state in (ALIVE, SUSPECT)}
    names = {n.address: n.name for n in nodes}
    found: list[tuple[str, dict[str, Any]]] = []
    failed: dict[str, str] = {}
    limit = {} if page is None else {"limit": page}
    wait_s = settings.connect_timeout_s
    waited: dict[str, float] = {}  # address -> how long its unanswered page has been waited for
    while cursors:
        calls = yield from core.execute(Batch(
            [Call(a, op, {"after": c, **limit}) for a, c in cursors.items()],
            timeout_s=wait_s, fail_fast=False))
        slow: dict[str, str] = {}
        for call in calls:
            address = call.address
            if call.result is None:
                waited[address] = waited.get(address, 0.0) + wait_s
                if isinstance(call.error, MeshTimeout) and \
                        waited[address] < settings.request_timeout_s:
                    slow[address] = str(call.error)
                else:
                    failed[names[address]] = str(call.error)
                    del cursors[address]
                continue
            waited.pop(address, None)
            found.extend((address, rec) for rec in call.result.get(field, []))
            cursor = call.result.get("next")
            if cursor is None:
                del cursors[address]
            else:
                cursors[address] = cursor
        if slow:  # busy, or gone: the view says which
            view = yield from core.refresh_nodes(max_age_s=settings.heartbeat_interval_s)
            states = {n.address: n.state for n in view}
            for address, why in slow.items():
                if states.get(address) != ALIVE:
                    failed[names[address]] = f"{why}; it is {states.get(address, 'gone')} now"
                    del cursors[address]
            left = [settings.request_timeout_s - waited[a] for a in slow if a in cursors]
            wait_s = max(0.1, min(2 * wait_s, *left)) if left else wait_s
    return found, failed
