"""The Prometheus scrape config made from a cluster file and the Grafana dashboard in tools/,
checked against what real agents serve (mesh/nodes/monitoring.py, docs/operations.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import yaml
from prometheus_client.parser import text_string_to_metric_families

from mesh.config import load_cluster_config
from mesh.nodes import monitoring
from support.mesh import ROOT, running_mesh


def test_the_dashboard_file_is_the_one_the_module_makes():
    on_disk = (ROOT / "tools" / "grafana-dashboard.json").read_text()
    assert on_disk == monitoring.dashboard_json(), \
        "run: python -m mesh.nodes.monitoring > tools/grafana-dashboard.json"
    board = json.loads(on_disk)
    assert len(board["panels"]) == len(monitoring.PANELS)
    assert all(p["targets"] and p["gridPos"]["w"] == 12 for p in board["panels"])


def test_every_metric_the_dashboard_and_the_docs_name_is_served(tmp_path):
    named = set()
    for _, _, queries in monitoring.PANELS:
        for expr, _ in queries:
            named |= monitoring.metric_names(expr)
    table = [line for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
             if line.startswith("| `mesh_")]  # the rows of the metrics table
    documented = {line.split("`")[1] for line in table}
    with running_mesh(tmp_path, n=2) as local:
        node = local.node("node1")
        with local.client() as c:  # one of each kind of answer, so every family has samples
            block = c.allocate(1 << 20, node="node1")
            c.write(block, b"d" * (1 << 20))
            c.read(block, 1 << 20)
            c.free(block)
        text = urllib.request.urlopen(f"http://{node.host}:{node.port + 2}/metrics",
                                      timeout=5).read().decode()
    served = set()
    for family in text_string_to_metric_families(text):
        served.add(family.name)
        served |= {s.name for s in family.samples}
    assert named - served == set(), "the dashboard reads metrics no agent serves"
    assert documented - served == set(), "docs/operations.md names metrics no agent serves"
    families = {f.name for f in text_string_to_metric_families(text)}
    undocumented = {f for f in families if f.startswith("mesh_")} - {
        n.removesuffix("_total").removesuffix("_bucket") for n in documented}
    assert undocumented == set(), "served but not described in docs/operations.md"


def test_scrape_config_lists_every_node_with_its_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "prod", "nodes": [
        {"name": "a", "host": "10.0.0.1"},
        {"name": "b", "host": "10.0.0.2", "mesh_port": 7800},
        {"name": "c", "host": "10.0.0.3", "metrics_port": 0},  # serves none: not a target
        {"name": "d", "host": "h4", "mesh_host": "10.1.0.4", "metrics_port": 9100},
    ]}))
    cfg = load_cluster_config(path)
    job = monitoring.scrape_config(cfg)["scrape_configs"][0]
    assert [(t["targets"], t["labels"]) for t in job["static_configs"]] == [
        (["10.0.0.1:7702"], {"node": "a", "cluster": "prod"}),
        (["10.0.0.2:7802"], {"node": "b", "cluster": "prod"}),
        (["10.1.0.4:9100"], {"node": "d", "cluster": "prod"}),
    ]
    assert job["metrics_path"] == "/metrics" and job["job_name"] == "memory-mesh"
    # the CLI prints the same document as YAML
    done = subprocess.run([sys.executable, "-m", "mesh", "agents", "scrape-config", "-c",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == monitoring.scrape_config(cfg)
