"""Issue 13: ``grid agents start --systemd`` was silently ignored for local nodes.

Local nodes now get a systemd unit (``mesh/nodes/systemd.py``, the same one remote nodes get);
where systemd does not run, as in this container, the command refuses with one line per node
saying so, and starts nothing. The unit itself is checked without installing anything in
``tests/unit/test_systemd_unit.py``; installing units into the real system is not done here.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from support.cli import cli_env, grid
from support.mesh import cluster_file

pytestmark = pytest.mark.skipif(
    Path("/run/systemd/system").is_dir(),
    reason="this machine runs systemd; the refusal path needs one that does not")


def _config(tmp_path: Path) -> tuple[str, list[tuple[str, int]]]:
    path = cluster_file(tmp_path, 2, "units")
    nodes = yaml.safe_load(path.read_text())["nodes"]
    return str(path), [(n["host"], n["mesh_port"]) for n in nodes]


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def test_local_nodes_are_refused_clearly_without_systemd(tmp_path):
    env = cli_env(tmp_path)
    cfg, addresses = _config(tmp_path)
    try:
        r = grid("agents", "start", "--systemd", "-c", cfg, env=env, cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2, r.stderr  # one per node
        for name, line in zip(("n1", "n2"), lines):
            assert line.startswith(f"✗ {name}: this node has no running systemd"), line
            assert line.endswith("start without --systemd"), line
        for host, port in addresses:  # nothing was started behind the refusal
            assert not _listening(host, port)
        assert not list((tmp_path / "state").rglob("*.pid"))
        r = grid("agents", "start", "--systemd", "--json", "-c", cfg, env=env, cwd=tmp_path)
        assert r.returncode == 1
        doc = json.loads(r.stdout)
        assert not doc["ok"] and all("no running systemd" in n["message"] for n in doc["nodes"])
    finally:
        grid("agents", "stop", "-c", cfg, env=env, cwd=tmp_path)
