"""One record per block of a listing gathered from every node, fast for the common case.

``MeshClient.blocks`` asks every node for its blocks (``mesh/client/core.py``: ``listing``);
a block with replicas, or one being moved, comes back from several nodes, and
``mesh/client/locate.py`` ``merge_copies`` keeps the record of its newest replica set. Most
listings have no such block: ``one_per_block`` finds that out in one dict pass and merges only
when a block id repeats (100,000 blocks in under a second: docs/scale.md).
"""

from __future__ import annotations

from typing import Any

from mesh.client.locate import merge_copies


def one_per_block(found: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``(address, record)`` pairs, one per block id, as ``merge_copies`` chooses them."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for address, rec in found:
        if seen.setdefault(rec["block"], (address, rec))[1] is not rec:
            return merge_copies(found)
    return list(seen.values())
