"""What monitoring tools need to watch a cluster: a Prometheus scrape config made from the cluster
file, and a Grafana dashboard built on the agents' metrics (``agents/metrics.py``).

``scrape_config`` gives one job whose targets are every node's ``mesh_host:metrics_port``, each
labelled with its node name (``node``), so panels can say which node a figure is from. ``grid
agents scrape-config`` prints it; docs/operations.md shows it. ``dashboard`` is the dashboard
kept in ``tools/grafana-dashboard.json`` (``python -m mesh.nodes.monitoring`` writes it again;
a test keeps the file equal to this function's output and checks every metric it names against
a real agent's scrape).

Pure: values in, values out; nothing here talks to an agent.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.config import ClusterConfig

JOB = "memory-mesh"


def scrape_config(cfg: ClusterConfig, interval_s: float = 15) -> dict[str, Any]:
    """A Prometheus ``scrape_configs`` entry for every node of ``cfg`` that serves metrics."""
    targets = [{"targets": [f"{n.mesh_host}:{n.metrics_port}"],
                "labels": {"node": n.name, "cluster": cfg.name}}
               for n in cfg.nodes if n.metrics_port]
    return {"scrape_configs": [{
        "job_name": JOB, "scrape_interval": f"{interval_s:g}s", "metrics_path": "/metrics",
        "static_configs": targets,
    }]}


# (title, unit, [(PromQL, legend)]): the dashboard's panels, in order
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Requests per second by op", "reqps",
     [("sum by (op) (rate(mesh_requests_total[1m]))", "{{op}}")]),
    ("Errors per second by op and code", "reqps",
     [('sum by (op, outcome) (rate(mesh_requests_total{outcome!="ok"}[1m]))',
       "{{op}} {{outcome}}")]),
    ("Bytes in and out per node", "Bps",
     [("sum by (node) (rate(mesh_received_bytes_total[1m]))", "{{node}} in"),
      ("sum by (node) (rate(mesh_sent_bytes_total[1m]))", "{{node}} out")]),
    ("Latency p50 / p99 by op", "s",
     [("histogram_quantile(0.5, sum by (le, op) (rate(mesh_request_seconds_bucket[5m])))",
       "p50 {{op}}"),
      ("histogram_quantile(0.99, sum by (le, op) (rate(mesh_request_seconds_bucket[5m])))",
       "p99 {{op}}")]),
    ("Memory used / capacity per node", "percentunit",
     [("mesh_used_bytes / mesh_capacity_bytes", "{{node}}")]),
    ("Blocks per node", "short", [("mesh_blocks", "{{node}}")]),
    ("Host RAM available / promised", "bytes",
     [("mesh_host_available_bytes", "{{node}} available"),
      ("mesh_host_promised_bytes", "{{node}} promised")]),
    ("Members by state (as each agent sees them)", "short",
     [("sum by (state) (mesh_members)", "{{state}}")]),
    ("Replicas: copies, repairs, move-ons", "short",
     [("sum(mesh_replica_copies)", "copies"),
      ("sum(increase(mesh_replica_repairs_total[5m]))", "repairs (5m)"),
      ("sum(increase(mesh_replica_moved_on_total[5m]))", "members left out (5m)")]),
    ("Trouble: dropped replies, refusals, loop errors", "short",
     [("sum by (node) (increase(mesh_dropped_replies_total[5m]))", "{{node}} dropped"),
      ("sum by (node) (increase(mesh_rejected_handshakes_total[5m]))", "{{node}} handshakes"),
      ("sum by (node) (increase(mesh_refused_requests_total[5m]))", "{{node}} refused"),
      ("sum by (node) (increase(mesh_loop_errors_total[5m]))", "{{node}} loop errors")]),
    ("Gossip messages per second", "short",
     [("sum by (node) (rate(mesh_gossip_heard_total[1m]))", "{{node}} heard"),
      ("sum by (node) (rate(mesh_gossip_sent_total[1m]))", "{{node}} sent")]),
    ("Moves per minute", "short",
     [("sum by (node) (increase(mesh_moves_total[1m]))", "{{node}}")]),
]


def dashboard() -> dict[str, Any]:
    """A Grafana dashboard (JSON model) of ``PANELS``, on a Prometheus data source chosen at
    import (``${DS_PROMETHEUS}``)."""
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}}
                        for j, (expr, legend) in enumerate(queries)],
        })
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "Memory mesh", "uid": "memory-mesh", "tags": ["memory-mesh"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "panels": panels,
    }


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression of ``PANELS`` reads (``mesh_`` names)."""
    return set(re.findall(r"\bmesh_[a-z_]+", expr))


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":  # python -m mesh.nodes.monitoring > tools/grafana-dashboard.json
    print(dashboard_json(), end="")
