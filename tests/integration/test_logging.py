"""Real agents log as the cluster file's ``logging:`` section says (agents/logs.py).

JSON lines at the configured level, text at WARNING with ``--log-level`` overriding it, rotation
by size with a bounded total, and ``grid agents start`` / ``logs`` with the agent's own rotated
``<node>.log`` beside its stdout/stderr in ``<node>.out``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import yaml

from support.cli import cli_env, grid
from support.mesh import ROOT, LocalMesh, agent_command, free_port_pair, running_mesh

MiB = 1024 * 1024


def _use(mesh: LocalMesh, blocks: int = 2, ttl_s: float | None = None) -> None:
    """A few requests: allocate, write, read (and free, unless a ttl frees them)."""
    with mesh.client(timeout_s=5.0) as client:
        for i in range(blocks):
            block = client.allocate(64 * 1024, ttl_s=ttl_s)
            client.write(block, bytes([i]) * 1000)
            assert client.read(block, 1000) == bytes([i]) * 1000
            if ttl_s is None:
                client.free(block)


def _json_lines(path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_a_json_configured_agent_logs_json_at_the_configured_level(tmp_path):
    log_file = tmp_path / "logs" / "{node}.log"
    section = {"format": "json", "level": "DEBUG", "file": str(log_file)}
    with running_mesh(tmp_path, n=1, extra={"logging": section}) as mesh:
        _use(mesh)
    docs = _json_lines(tmp_path / "logs" / "node1.log")
    for doc in docs:
        assert {"time", "level", "node", "logger", "event", "message"} <= doc.keys(), doc
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"]), doc
        assert doc["node"] == "node1" and doc["level"] in ("DEBUG", "INFO", "WARNING"), doc
    levels = {d["level"] for d in docs}
    assert "DEBUG" in levels and "INFO" in levels
    assert any(d["event"] == "config" and d["level"] == "DEBUG" for d in docs)
    assert any("agent node1 serving" in d["message"] for d in docs)
    assert docs[-1]["message"] == "agent node1 stopped"
    # stderr (the test's node1.log) got nothing: the log went to the file
    assert mesh.node("node1").log.read_text().strip() == ""


def test_lines_of_a_request_carry_its_request_id(tmp_path):
    section = {"format": "json", "level": "DEBUG", "file": str(tmp_path / "{node}.json")}
    with running_mesh(tmp_path, n=1, extra={"logging": section}) as mesh:
        _use(mesh)
    handled = [d for d in _json_lines(tmp_path / "node1.json") if d["event"] == "request"]
    assert {"alloc", "write", "read", "free"} <= {d["op"] for d in handled}
    assert all(isinstance(d["request_id"], int) for d in handled)


def test_a_warning_level_text_agent_logs_no_info_unless_the_command_line_says(tmp_path):
    section = {"level": "WARNING", "file": str(tmp_path / "{node}.txt")}
    mesh = LocalMesh.create(tmp_path, n=2, extra={"logging": section})
    try:
        mesh.start("node1")
        node2 = mesh.node("node2")
        with open(node2.log, "ab") as out:  # --log-level overrides the file's level
            node2.proc = subprocess.Popen(
                agent_command(mesh.config_path, "node2") + ["--log-level", "info"],
                stdout=out, stderr=out, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        mesh.started.append(node2.proc)
        mesh.wait_ready(node2)
        mesh.wait_converged()
        _use(mesh)
    finally:
        assert not mesh.stop_all()
    quiet = (tmp_path / "node1.txt").read_text()
    assert not re.search(r" (DEBUG|INFO) ", quiet), quiet
    told = (tmp_path / "node2.txt").read_text().splitlines()
    assert any(re.fullmatch(r"\S+ \S+ INFO node2 mesh\.agent: agent node2 serving .*", line)
               for line in told), told
    assert not any(" DEBUG " in line for line in told)


def test_the_log_is_rotated_by_size_and_its_total_stays_bounded(tmp_path):
    max_bytes, backups = 2048, 2
    section = {"format": "json", "level": "DEBUG", "max_bytes": max_bytes, "backups": backups,
               "file": str(tmp_path / "logs" / "{node}.log")}
    with running_mesh(tmp_path, n=1, extra={"logging": section}) as mesh:
        _use(mesh, blocks=30, ttl_s=0.2)  # a line per request, and per block its ttl frees
        base = tmp_path / "logs" / "node1.log"
        deadline = time.monotonic() + 15
        while not (tmp_path / "logs" / f"node1.log.{backups}").exists():
            assert time.monotonic() < deadline, sorted(os.listdir(tmp_path / "logs"))
            time.sleep(0.1)
    names = sorted(os.listdir(tmp_path / "logs"))
    assert names == ["node1.log", "node1.log.1", "node1.log.2"]
    sizes = [(tmp_path / "logs" / name).stat().st_size for name in names]
    longest = max(len(line) + 1 for name in names
                  for line in (tmp_path / "logs" / name).read_text().splitlines())
    # a file is rotated before a line would take it past max_bytes (one line alone may)
    assert all(size <= max(max_bytes, longest) for size in sizes), sizes
    assert sum(sizes) <= (backups + 1) * max(max_bytes, longest)
    for name in names:  # rotation never splits a line
        _json_lines(tmp_path / "logs" / name)
    assert _json_lines(base)[-1]["message"] == "agent node1 stopped"  # the newest is .log


def test_grid_agents_start_keeps_the_log_and_the_agents_stderr_apart(tmp_path):
    host = "127.0.0.1"
    cfg = {"name": "log-test", "logging": {"format": "json"},
           "nodes": [{"name": "n1", "host": host, "memory_gb": 0.5,
                      "mesh_port": free_port_pair(host)}],
           "mesh": {"host_reserve_bytes": "256MiB"}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = cli_env(tmp_path)
    r = grid("agents", "start", "-c", str(path), env=env, cwd=tmp_path)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        r = grid("agents", "logs", "-c", str(path), env=env, cwd=tmp_path)
        assert r.returncode == 0 and "agent n1 serving" in r.stdout, r.stdout + r.stderr
        r = grid("agents", "logs", "--json", "-c", str(path), env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        (node,) = doc["nodes"]
        assert doc["action"] == "logs" and doc["ok"] and node["node"] == "n1"
        assert "agent n1 serving" in node["log"] and node["out"] == ""
        assert node["log_file"].endswith("n1.log") and node["out_file"].endswith("n1.out")
    finally:
        stop = grid("agents", "stop", "-c", str(path), env=env, cwd=tmp_path)
        assert stop.returncode == 0, stop.stdout + stop.stderr
    state = tmp_path / "state"
    (log_file,) = state.rglob("n1.log")
    docs = _json_lines(log_file)
    assert docs[-1]["message"] == "agent n1 stopped" and docs[-1]["node"] == "n1"
    assert log_file.with_suffix(".out").read_text() == ""  # nothing went to stderr


def test_an_agent_that_fails_before_its_log_is_set_up_is_reported_from_its_stderr(tmp_path):
    host = "127.0.0.1"
    cfg = {"name": "log-test", "logging": {"format": "json"},
           "nodes": [{"name": "n1", "host": host, "mesh_port": free_port_pair(host),
                      "memory_gb": 0.5}], "mesh": {"host_reserve_bytes": "256MiB"}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = cli_env(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "n1.log").mkdir()  # the agent cannot open its log file
    r = grid("agents", "start", "-c", str(path), env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "n1: agent exited at start (code 2)" in r.stderr
    assert "cannot write the log file" in r.stderr and "Traceback" not in r.stderr
    r = grid("agents", "logs", "-c", str(path), env=env, cwd=tmp_path)  # shows the .out too
    assert r.returncode == 0 and "n1.out" in r.stdout, r.stdout + r.stderr
    assert "mesh-agent: cannot write the log file" in r.stdout
