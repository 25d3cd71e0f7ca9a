"""Issue 13: ``grid agents status --json`` gave ``"uptime_s": null`` for local agents.

The uptime now comes from the agent itself (its STATS answer), else from SSH's ``nodectl
status`` (remote nodes), else from the local pid's start time. Real agents started by the real
``grid agents start``; a node stopped afterwards has no uptime.
"""

from __future__ import annotations

import json
import os
import time


from mesh.nodes.status import pid_uptime_s
from support.cli import cli_env, grid
from support.mesh import cluster_file


def _config(tmp_path):
    return str(cluster_file(tmp_path, 2, "uptime"))


def test_local_agents_report_their_uptime(tmp_path):
    env = cli_env(tmp_path)
    cfg = _config(tmp_path)
    started = time.monotonic()
    try:
        r = grid("agents", "start", "-c", cfg, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(0.5)
        r = grid("agents", "status", "-c", cfg, "--json", env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        rows = {n["node"]: n for n in json.loads(r.stdout)["nodes"]}
        bound = time.monotonic() - started + 1.0
        for name in ("n1", "n2"):
            up = rows[name]["uptime_s"]
            assert isinstance(up, (int, float)) and 0 < up < bound, rows[name]
        assert grid("agents", "stop", "-c", cfg, "--node", "n2", env=env,
                    cwd=tmp_path).returncode == 0
        rows = {n["node"]: n for n in json.loads(grid(
            "agents", "status", "-c", cfg, "--json", env=env, cwd=tmp_path).stdout)["nodes"]}
        assert rows["n2"]["uptime_s"] is None, rows["n2"]  # not running: no uptime
        assert isinstance(rows["n1"]["uptime_s"], (int, float))
    finally:
        grid("agents", "stop", "-c", cfg, env=env, cwd=tmp_path)


def test_the_uptime_of_a_local_pid():
    assert pid_uptime_s(os.getpid()) >= 0
    assert pid_uptime_s(None) is None
    assert pid_uptime_s(2**22 + 12345) is None  # above any pid_max: no such process
