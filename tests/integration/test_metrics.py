"""Prometheus metrics of real agents, scraped over HTTP while operations happen
(agents/metrics.py; docs/operations.md)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mesh.errors import BlockNotFound
from support.mesh import LocalMesh, running_mesh


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def mesh2(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("metrics"), n=2) as local:
        yield local


def url_of(mesh2, name: str) -> str:
    node = mesh2.node(name)
    return f"http://{node.host}:{node.port + 2}/metrics"


def test_counters_move_as_operations_happen(mesh2):
    url = url_of(mesh2, "node1")
    before = scrape(url)
    size = 3 << 20
    with mesh2.client() as c:
        block = c.allocate(size, node="node1")
        c.write(block, b"m" * size)
        assert c.read(block, size) == b"m" * size
        with pytest.raises(BlockNotFound):
            c.stat(block[:-4] + "beef")  # same node prefix, no such block
        c.free(block)
    after = scrape(url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("mesh_requests_received_total", op="alloc") == 1
    assert grew("mesh_requests_total", op="alloc", outcome="ok") == 1
    assert grew("mesh_requests_total", op="free", outcome="ok") == 1
    assert grew("mesh_requests_total", op="stat", outcome="unknown_block") == 1
    assert grew("mesh_received_bytes_total", op="write") == size
    assert grew("mesh_sent_bytes_total", op="read") == size
    writes = grew("mesh_requests_total", op="write", outcome="ok")
    assert writes >= 1 and grew("mesh_request_seconds_count", op="write") == writes
    assert grew("mesh_request_seconds_sum", op="write") > 0
    # every answered read is in some latency bucket, and the buckets are cumulative
    reads = grew("mesh_request_seconds_count", op="read")
    assert reads >= 1 and grew("mesh_request_seconds_bucket", op="read", le="+Inf") == reads


def test_gauges_show_blocks_use_and_members(mesh2):
    url = url_of(mesh2, "node2")
    with mesh2.client() as c:
        block = c.allocate(2 << 20, node="node2")
        try:
            deadline = time.monotonic() + 5  # gauges are refreshed every heartbeat
            while True:
                samples = scrape(url)
                if value(samples, "mesh_blocks") >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert value(samples, "mesh_blocks") >= 1
            assert value(samples, "mesh_used_bytes") >= 2 << 20
            assert value(samples, "mesh_capacity_bytes") > value(samples, "mesh_used_bytes")
            assert value(samples, "mesh_host_total_bytes") > 0
            assert value(samples, "mesh_host_promised_bytes") >= 2 << 20
            assert value(samples, "mesh_members", state="alive") == 2
            assert value(samples, "mesh_gossip_sent_total") > 0
            assert value(samples, "mesh_gossip_heard_total") > 0
            assert value(samples, "mesh_agent_info", node="node2", version=_version()) == 1
        finally:
            c.free(block)


def test_stats_carry_cumulative_ops_and_the_metrics_url(mesh2):
    with mesh2.client() as c:
        first = {n["node"]: n for n in c.stats()["nodes"]}
        block = c.allocate(1 << 20, node="node1")
        c.write(block, b"s" * (1 << 20))
        c.free(block)
        second = {n["node"]: n for n in c.stats()["nodes"]}
    one, two = first["node1"], second["node1"]
    assert two["metrics_url"] == url_of(mesh2, "node1")
    assert two["ops"]["requests"] >= one["ops"]["requests"] + 3
    assert two["ops"]["bytes_in"] - one["ops"]["bytes_in"] == 1 << 20
    assert two["ops"]["by_op"]["alloc"] == one["ops"]["by_op"].get("alloc", 0) + 1
    assert two["uptime_s"] > one["uptime_s"] > 0


def test_metrics_are_bound_like_the_data_port(mesh2):
    """node2 serves on 127.0.0.2 only: the same port on 127.0.0.1 has nobody listening."""
    port = mesh2.node("node2").port + 2
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.2", port)) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_port_zero_serves_none_and_the_agent_still_works(tmp_path):
    local = LocalMesh.create(tmp_path, n=1)
    cfg = yaml.safe_load(local.config_path.read_text())
    cfg["nodes"][0]["metrics_port"] = 0
    local.config_path.write_text(yaml.safe_dump(cfg))
    local.start("node1")
    try:
        with local.client() as c:
            assert c.stats()["nodes"][0]["metrics_url"] is None
            c.free(c.allocate(4096))
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url_of(local, "node1"), timeout=2)
    finally:
        assert local.stop_all() == []


def _version() -> str:
    from mesh import __version__

    return __version__
