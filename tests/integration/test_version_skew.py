"""Issue 13: a client or agent that meets an agent of another version warns once (version skew).

One real agent runs with ``MESH_VERSION_OVERRIDE`` (the testing hook in ``mesh/__init__.py``)
and so claims another version in its HELLO and heartbeats. The client warns with
``MeshVersionWarning`` once for that node however often it asks; the other agent logs one
warning about that peer, and the odd one logs one about it.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

import mesh
from mesh.client.view import MeshVersionWarning
from support.cli import cli_env, grid
from support.mesh import ROOT, LocalMesh

OTHER = "0.0.0+skew"


def _skew_lines(log_text: str, peer: str) -> list[str]:
    return [line for line in log_text.splitlines()
            if "version skew" in line and f"peer {peer} " in line]


def test_client_and_agents_warn_once_per_node_and_version(tmp_path, monkeypatch):
    assert mesh.__version__ != OTHER
    cluster = LocalMesh.create(tmp_path, n=2)
    try:
        cluster.start("node1")
        monkeypatch.setenv("MESH_VERSION_OVERRIDE", OTHER)
        cluster.start("node2")
        monkeypatch.delenv("MESH_VERSION_OVERRIDE")
        cluster.wait_converged()
        with cluster.client() as client:
            assert client.ping(cluster.node("node2").address)["node"] == "node2"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # the client's own "once", not Python's
                for _ in range(3):
                    nodes = {n.name: n for n in client.nodes()}
                client.stats()
        skew = [w for w in caught if issubclass(w.category, MeshVersionWarning)]
        assert len(skew) == 1, [str(w.message) for w in caught]
        message = str(skew[0].message)
        assert "node2" in message and OTHER in message and mesh.__version__ in message
        assert nodes["node2"].version == OTHER and nodes["node1"].version == mesh.__version__
        # grid says it in one line on stderr (JSON with --json), and the command still works
        env = cli_env(tmp_path)
        text = grid("memory", "stats", "-c", str(cluster.config_path), env=env, cwd=tmp_path)
        assert text.returncode == 0, text.stderr
        (line,) = text.stderr.splitlines()
        assert line.startswith("grid: warning: version skew: node node2 runs mesh " + OTHER)
        as_json = grid("memory", "stats", "--json", "-c", str(cluster.config_path), env=env,
                       cwd=tmp_path)
        assert as_json.returncode == 0, as_json.stderr
        (line,) = as_json.stderr.splitlines()
        warning = json.loads(line)["warning"]
        assert warning["type"] == "MeshVersionWarning" and OTHER in warning["message"]
        json.loads(as_json.stdout)  # stdout stays one JSON document
        time.sleep(4 * 0.5)  # several heartbeats each way (heartbeat_interval_s 0.5)
    finally:
        assert not cluster.stop_all()
    first = _skew_lines(cluster.node("node1").log.read_text(), "node2")
    assert len(first) == 1 and OTHER in first[0], first
    second = _skew_lines(cluster.node("node2").log.read_text(), "node1")
    assert len(second) == 1 and mesh.__version__ in second[0], second


BEFORE_RANGES = "ace5274"  # the last commit whose agents do not know RANGES (mesh/batchwire.py)


def _old_tree(dest: Path) -> Path:
    """``mesh/`` and ``agents/`` of ``BEFORE_RANGES``, from this checkout's history."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e",
                            f"{BEFORE_RANGES}^{{commit}}"], capture_output=True, timeout=60)
    if known.returncode != 0:
        pytest.skip(f"needs the git history of this checkout ({BEFORE_RANGES})")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_RANGES, "mesh",
                              "agents"], capture_output=True, timeout=120, check=True)
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_batches_reach_an_agent_of_the_version_before_ranges(tmp_path):
    """A rolling upgrade: this client's read_many/write_many send RANGES, which an agent of the
    version before refuses as an unknown op; those items go again as MANY's sub-ops, and every
    item on both agents is done."""
    old = _old_tree(tmp_path / "old")
    (tmp_path / "mesh").mkdir()
    cluster = LocalMesh.create(tmp_path / "mesh", n=2)
    try:
        cluster.start("node1")  # this version
        cluster.start("node2", root=old)  # the version before RANGES
        cluster.wait_converged()
        with cluster.client() as client:
            new_block = client.allocate(64 * 1024, node="node1")
            old_block = client.allocate(64 * 1024, node="node2")
            items = [(b, bytes([i + 1]) * 4096, i * 4096) for i in range(16)
                     for b in (new_block, old_block)]
            assert client.write_many(items) == [4096] * 32
            got = client.read_many([(b, 4096, off) for b, _, off in items])
            assert [bytes(g) for g in got] == [data for _, data, _ in items]
            assert bytes(client.read(old_block, 4096, 15 * 4096)) == bytes([16]) * 4096
        node2 = cluster.node("node2")
        metrics = urllib.request.urlopen(f"http://{node2.host}:{node2.port + 2}/metrics",
                                         timeout=5).read().decode()
        assert 'op="ranges",outcome="unknown_op"' in metrics  # it was asked, and refused
    finally:
        assert not cluster.stop_all()
