"""The real ``grid`` executable: agents start/status/stop, demo, and one-line errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psutil
import pytest
import yaml

from support.cli import cli_env, grid
from support.mesh import free_port_pair

@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path)


def agents_of(state_dir: Path) -> list[psutil.Process]:
    """Agent processes whose pid files live in ``state_dir`` or that name its config."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "agents.main" in cmd and str(state_dir.parent) in cmd:
            found.append(proc)
    for pid_file in state_dir.glob("*.pid"):
        try:
            found.append(psutil.Process(int(pid_file.read_text())))
        except (psutil.NoSuchProcess, ValueError):
            pass
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def write_config(tmp_path: Path, n: int = 2, extra_nodes: list | None = None) -> Path:
    nodes = []
    for i in range(n):
        host = f"127.0.0.{i + 1}"
        nodes.append({"name": f"n{i + 1}", "host": host, "memory_gb": 0.5,
                      "mesh_port": free_port_pair(host)})
    cfg = {"name": "cli-test", "nodes": nodes + (extra_nodes or []),
           "mesh": {"host_reserve_bytes": "256MiB"}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_start_status_stop_with_the_embedded_default(tmp_path, env):
    r = grid("agents", "start", env=env, cwd=tmp_path)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        for name in ("local-1", "local-2", "local-3"):
            assert f"{name}: started" in r.stdout
        r = grid("agents", "status", env=env, cwd=tmp_path)
        assert r.returncode == 0 and "local-mesh" in r.stdout and "alive" in r.stdout, r.stdout
        r = grid("agents", "status", "--json", env=env, cwd=tmp_path)
        doc = json.loads(r.stdout)
        assert doc["cluster"] == "local-mesh"
        assert {n["node"]: n["state"] for n in doc["nodes"]} == {
            "local-1": "alive", "local-2": "alive", "local-3": "alive"}
        assert all(n["capacity"] == 4 * 1024**3 or n["capacity"] > 0 for n in doc["nodes"])
    finally:
        r = grid("agents", "stop", env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("stopped") == 3, r.stdout
    assert agents_of(tmp_path / "state") == []


def test_start_is_idempotent_and_status_shows_stopped_nodes_down(tmp_path, env):
    cfg = str(write_config(tmp_path))
    try:
        assert grid("agents", "start", "-c", cfg, env=env, cwd=tmp_path).returncode == 0
        r = grid("agents", "start", "-c", cfg, env=env, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.count("already running") == 2
        assert grid("agents", "stop", "-c", cfg, "--node", "n2", env=env, cwd=tmp_path).returncode == 0
        doc = json.loads(grid("agents", "status", "-c", cfg, "--json", env=env, cwd=tmp_path).stdout)
        states = {n["node"]: n["state"] for n in doc["nodes"]}
        assert states["n1"] == "alive" and states["n2"] in ("suspect", "dead", "down")
    finally:
        grid("agents", "stop", "-c", cfg, env=env, cwd=tmp_path)
    assert agents_of(tmp_path / "state") == []


def test_demo_runs_and_leaves_nothing_behind(tmp_path, env):
    cfg = str(write_config(tmp_path, n=3))
    r = grid("demo", "-c", cfg, "--size", "8MiB", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("bytes match") == 3
    assert "stopped the agents the demo started" in r.stdout
    assert agents_of(tmp_path / "state") == []


def test_an_unreachable_remote_node_fails_alone(tmp_path, env):
    cfg = str(write_config(tmp_path, n=1, extra_nodes=[
        {"name": "far", "host": "far-away.invalid", "memory_gb": 1, "ssh": {"timeout": 2}}]))
    try:
        r = grid("agents", "start", "-c", cfg, env=env, cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "n1: started" in r.stdout
        assert "far: host unreachable" in r.stderr and "Traceback" not in r.stderr
        doc = json.loads(grid("agents", "status", "-c", cfg, "--json", env=env, cwd=tmp_path).stdout)
        far = {n["node"]: n for n in doc["nodes"]}["far"]
        assert far["state"] == "down" and far["reason"].startswith("host unreachable")
    finally:
        grid("agents", "stop", "-c", cfg, env=env, cwd=tmp_path)


def test_an_agent_that_cannot_bind_is_reported_with_its_log(tmp_path, env):
    cfg_path = write_config(tmp_path, n=1)
    port = yaml.safe_load(cfg_path.read_text())["nodes"][0]["mesh_port"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        r = grid("agents", "start", "-c", str(cfg_path), env=env, cwd=tmp_path)
    assert r.returncode == 1
    assert "n1: agent exited at start" in r.stderr and "cannot bind" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert agents_of(tmp_path / "state") == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["agents", "start", "--node", "nope"], "unknown node 'nope'"),
        (["agents", "status", "-c", "missing.yaml"], "missing.yaml"),
        (["agents", "status", "-c", "bad.yaml"], "nodes[0]: missing required field 'host'"),
        (["demo", "--size", "lots"], "invalid size"),
    ],
)
def test_user_mistakes_give_one_line_and_no_traceback(tmp_path, env, args, message):
    (tmp_path / "bad.yaml").write_text("name: x\nnodes:\n- {name: a}\n")
    r = grid(*args, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
