"""One status per node, for ``grid agents status``: pid files, SSH and heartbeats merged.

Three sources tell about a node, and none of them alone is the whole story:

- this machine's pid files (``mesh/nodes/local.py``): is our local agent process running;
- ``nodectl status`` over SSH (``mesh/nodes/deploy.py``): is the remote agent running, since
  when, which version, or why the node could not be asked;
- the heartbeats, through the client's membership view (``MeshClient.nodes``): the node record
  ``mesh.membership.NodeInfo`` with its state, capacity, use and age.

``merge`` is the rule that joins them (pure: values in, values out); ``node_statuses`` gathers
the three and calls it. A node is listed once, in the cluster file's order, then the nodes heard
by gossip that the file does not list. ``NodeStatus.row`` is the JSON row of
``grid agents status --json`` (a stable format: scripts read it).

Not here: rendering (``mesh/cli/agents.py``), the membership rules (``mesh/membership.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh.membership import ALIVE, DOWN, NodeInfo

if TYPE_CHECKING:
    from mesh.config import ClusterConfig, NodeConfig
    from mesh.nodes.deploy import NodeResult


@dataclass(frozen=True)
class NodeStatus:
    """A node as ``grid agents status`` shows it."""

    name: str
    address: str
    local: bool  # an agent of this machine (its pid file is here)
    managed_by: str | None  # "local", "ssh"; None for a node heard by gossip only
    pid: int | None
    uptime_s: float | None  # the agent's own (STATS), else SSH's, else the local pid's
    reason: str | None  # why the node is not alive, when we can tell
    heard: NodeInfo | None  # the heartbeat record; None when no agent answered at all
    version: str | None
    metrics_url: str | None = None  # its Prometheus endpoint (from the cluster file)

    @property
    def state(self) -> str:
        return self.heard.state if self.heard is not None else DOWN

    def row(self) -> dict[str, Any]:
        n = self.heard
        up = n is not None and n.state != DOWN  # a record with figures worth showing
        return {
            "node": self.name,
            "address": self.address,
            "local": self.local,
            "managed_by": self.managed_by,
            "pid": self.pid,
            "uptime_s": self.uptime_s,
            "reason": self.reason,
            "state": self.state,
            "incarnation": n.incarnation if n is not None else None,
            "capacity": n.capacity if up else None,
            "used": n.used if up else None,
            "blocks": n.blocks if up else None,
            "host_available": n.host_available if up else None,
            "last_heard_s": round(n.age_s, 2) if up else None,
            # seconds between its heartbeats when it stretches them (mesh/membership.py:
            # stretch; its silence is timed as much longer); None: the cluster's interval
            "beat_s": n.beat_ms / 1000 if up and n.beat_ms else None,
            # keyed, loopback, or insecure (no keys, reachable beyond this machine)
            "security": (n.security or None) if up else None,
            "version": self.version,
            "metrics_url": self.metrics_url,
        }


def merge(cfg: ClusterConfig, pids: dict[str, int | None], remote: dict[str, NodeResult],
          heard: list[NodeInfo], uptimes: dict[str, float] | None = None) -> list[NodeStatus]:
    """One status per node from the three sources.

    ``pids``: the local agents' pids by node (None: not running); ``remote``: the SSH status of
    each SSH-managed node; ``heard``: the membership view (empty when no agent answered);
    ``uptimes``: seconds each agent has run, as it says (STATS) or as its local pid says.
    """
    seen = {n.name: n for n in heard}
    uptimes = uptimes or {}
    statuses = []
    for node in cfg.nodes:
        n = seen.get(node.name)
        r = remote.get(node.name)
        pid = pids.get(node.name) if r is None else r.detail.get("pid")
        reason = None
        if (n.state if n else DOWN) != ALIVE:
            if r is not None and not r.ok:
                reason = r.message
            elif r is not None or node.name in pids:
                reason = "agent not running" if not pid else "agent running but not heard"
            else:
                reason = "no agent has heard from it"
        statuses.append(NodeStatus(
            name=node.name,
            address=node.data_address,
            local=node.name in pids,
            managed_by="local" if node.name in pids or r is None else "ssh",
            pid=pid,
            uptime_s=uptimes.get(node.name,
                                 r.detail.get("uptime_s") if r is not None else None),
            reason=reason,
            heard=n,
            version=(n.version if n else None) or (r.detail.get("version") if r else None),
            metrics_url=metrics_url(node),
        ))
    listed = {node.name for node in cfg.nodes}
    for name, n in seen.items():  # agents heard by gossip that the file does not list
        if name not in listed:
            statuses.append(NodeStatus(
                name=name, address=n.address, local=False, managed_by=None, pid=None,
                uptime_s=uptimes.get(name), reason=None, heard=n, version=n.version,
            ))
    return statuses


def metrics_url(node: NodeConfig) -> str | None:
    """Where the node's agent serves Prometheus metrics (None when ``metrics_port`` is 0)."""
    return f"http://{node.mesh_host}:{node.metrics_port}/metrics" if node.metrics_port else None


def node_statuses(cfg: ClusterConfig) -> list[NodeStatus]:
    """Ask the three sources about every node of ``cfg`` (SSH-managed nodes in parallel), then
    ``merge``. Raises ``MissingExtra`` when some node is managed over SSH and Fabric is not
    installed."""
    from mesh.client import MeshClient
    from mesh.errors import MeshError, NodeUnavailable
    from mesh.nodes import deploy, local

    targets = deploy.ssh_nodes(cfg)
    mine, _ = local.local_agents(cfg)
    pids = {a.node.name: a.pid() for a in mine}
    remote = {r.node: r for r in deploy.remote(cfg, targets, "status")}
    uptimes = {name: up for name, pid in pids.items() if (up := pid_uptime_s(pid)) is not None}
    try:
        with MeshClient(cfg) as client:
            heard = client.nodes()
            try:  # each agent's own uptime; the figures above when it does not say
                uptimes.update({p["node"]: round(float(p["uptime_s"]), 1)
                                for p in client.stats()["nodes"]
                                if isinstance(p.get("uptime_s"), (int, float))})
            except MeshError:
                pass
    except NodeUnavailable:
        heard = []
    return merge(cfg, pids, remote, heard, uptimes)


def pid_uptime_s(pid: int | None) -> float | None:
    """Seconds since the local process ``pid`` started (None: no such process)."""
    import time

    import psutil

    if not pid:
        return None
    try:
        return round(time.time() - psutil.Process(pid).create_time(), 1)
    except (psutil.Error, OSError):
        return None
