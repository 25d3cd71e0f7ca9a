"""A client's membership view, made from the agents' NODES answers. Pure: no sockets.

- ``newer``: of two records of one node, the one to keep (the later incarnation, then the
  fresher heartbeat).
- ``build_view``: the view after a refresh: the records heard, the nodes the client saw before
  and nobody reports now (they keep ageing into suspect, then dead), and the nodes of the
  cluster file nobody has heard of (``down``); a node whose port this client found closed
  since its last heartbeat is suspect (``mesh/client/reach.py``).
- ``nobody_listens``: the error when no agent answered because nothing listens at any address
  asked (``mesh/client/reach.py`` found it out in milliseconds, not a timeout).
- ``VersionWatch``: a warning (``MeshVersionWarning``, through ``warnings.warn``) the first time
  this process meets an agent of another version than its own, once per (node, version), as
  Dask's ``get_versions(check=True)`` does. A library warns through ``warnings`` so that its
  users filter it (``warnings.simplefilter("ignore", MeshVersionWarning)``) or make it an error
  in their tests, and ``python -W`` applies; the ``grid`` CLI shows it on stderr.

Not here: asking the agents (``Core.refresh_nodes`` in ``mesh/client/core.py``), the node
record itself (``mesh/membership.py``).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

from mesh.config import ClusterConfig, MeshSettings
from mesh.errors import NodeUnavailable
from mesh.membership import ALIVE, DOWN, SUSPECT, NodeInfo, state_for_silence, stretch


def newer(rec: dict[str, Any], prev: dict[str, Any] | None) -> bool:
    """Whether ``rec`` replaces ``prev`` (two records of one node from different agents)."""
    return prev is None or (rec["incarnation"], -rec["age_s"]) > (
        prev["incarnation"], -prev["age_s"])


def build_view(merged: dict[str, dict[str, Any]], old: dict[str, NodeInfo], silent_s: float,
               settings: MeshSettings, config: ClusterConfig | None,
               unreached: dict[str, tuple[str, float]] | None = None,
               now: float = 0.0) -> dict[str, NodeInfo]:
    """The view from ``merged`` (node -> record heard now), the ``old`` view heard
    ``silent_s`` ago, and the cluster file; sorted by node name. A live node whose address
    this client found not listening (``unreached``: address -> (why, monotonic time)) after
    its last heartbeat is suspect here: its peers have not noticed yet, the client has."""
    nodes = {name: NodeInfo.from_record(r) for name, r in merged.items()}
    for name, info in nodes.items():
        found = (unreached or {}).get(info.address)
        if found is not None and info.state == ALIVE and found[1] > now - info.age_s:
            nodes[name] = replace(info, state=SUSPECT)
    for name, was in old.items():
        # A node this client has seen that no agent reports now (it died before its peers
        # heard it) keeps ageing here, so it still turns suspect, then dead.
        if name not in nodes and was.state != DOWN:
            age = was.age_s + silent_s
            state = state_for_silence(age, settings.suspect_after_s, settings.dead_after_s,
                                      stretch(was.beat_ms, settings.heartbeat_interval_s))
            nodes[name] = replace(was, state=state, age_s=age)
    if config is not None:
        for node in config.nodes:
            if node.name not in nodes:
                nodes[node.name] = NodeInfo(
                    node.name, node.data_address, DOWN, 0, node.share_bytes or 0, 0, 0, 0, 0,
                    float("inf"), "",
                )
    return dict(sorted(nodes.items()))


def nobody_listens(tried: list[tuple[str, str | None, str]]) -> NodeUnavailable:
    """The error when every agent asked was found not listening: ``tried`` is (address, node
    name or None, why) in the order asked. Nodes with the same reason are named together."""
    by_why: dict[str, list[str]] = {}
    for address, node, why in tried:
        by_why.setdefault(why, []).append(f"{node} ({address})" if node else address)
    parts = "; ".join(f"{', '.join(where)} {why}" for why, where in by_why.items())
    return NodeUnavailable(f"no mesh agent answered: {parts}; start them with "
                           "`grid agents start`")


class MeshVersionWarning(UserWarning):
    """An agent runs another version of the mesh than this client (version skew)."""


class VersionWatch:
    """Warns once per (node, version) of agents whose version differs from ``mine``."""

    def __init__(self, mine: str):
        self.mine = mine
        self.seen: set[tuple[str, str]] = set()

    def check(self, node: str, version: str) -> bool:
        """Warn if ``node`` runs another ``version`` and this pair is new; True if it did.
        Records without a version (agents older than the field) are not warned about."""
        if not version or version == self.mine or (node, version) in self.seen:
            return False
        self.seen.add((node, version))
        warnings.warn(
            f"version skew: node {node} runs mesh {version}, this client runs {self.mine}; "
            "upgrade them to one version (`grid agents status` shows each node's)",
            MeshVersionWarning, stacklevel=2)
        return True
