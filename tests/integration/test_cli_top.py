"""``grid top`` against real agents: every node listed, rates that move under load and rest when
idle, stopped and never-started nodes, a paused agent (unreachable while the view goes on), the
live view ending by itself (``--count``) and on Ctrl-C (in a terminal and in JSON Lines mode),
and the rate rule itself on crafted readings (an older agent without counters, a restarted
agent), which a real process cannot give on demand.

Every ``grid`` call is a subprocess of this venv's console script.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mesh.cli.top import UNREACHABLE, Reading, rates
from mesh.membership import DOWN
from support.mesh import LocalMesh, running_mesh

GRID = Path(sys.executable).parent / "grid"
MiB = 1024**2
IDLE_BYTES_PER_S = 64 * 1024  # "about nothing": heartbeats are not requests, STATS has no payload
BUSY_BYTES_PER_S = 1024**2  # 16 times that; a 64 MiB write loop on loopback does far more


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("top-cli")) as m:
        yield m


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GRID_CONFIG", "GRID_KEY")}
    env["COLUMNS"] = "200"
    return env


def top(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRID), "top", "-c", str(config), *args], capture_output=True,
                          text=True, env=_env(), cwd=config.parent, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def sample(config: Path, *args: str) -> dict:
    """One ``grid top --once --json`` document, by node."""
    p = top(config, "--once", "--json", *args)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    doc = json.loads(p.stdout)
    return {**doc, "by_node": {r["node"]: r for r in doc["nodes"]}}


FIELDS = {"node", "address", "state", "used", "capacity", "blocks", "ops_per_s",
          "in_bytes_per_s", "out_bytes_per_s", "errors_per_s", "errors", "requests"}


def test_once_json_lists_every_node_with_numbers(mesh):
    doc = sample(mesh.config_path)
    assert [r["node"] for r in doc["nodes"]] == ["node1", "node2", "node3"]
    assert doc["interval_s"] > 0 and doc["time"] > 0
    for r in doc["nodes"]:
        assert FIELDS <= set(r), r
        assert r["state"] == "alive"
        assert r["address"] == mesh.node(r["node"]).address
        assert r["capacity"] == 1024**3 and 0 <= r["used"] <= r["capacity"]
        assert isinstance(r["blocks"], int)
        # the agents count requests: this sample's own STATS and NODES at least
        assert isinstance(r["requests"], int) and r["requests"] >= 1, r
        assert isinstance(r["errors"], int)
        for key in ("ops_per_s", "in_bytes_per_s", "out_bytes_per_s", "errors_per_s"):
            assert isinstance(r[key], (int, float)) and r[key] >= 0, (key, r)


def test_only_the_nodes_asked_for(mesh):
    doc = sample(mesh.config_path, "--node", "node2", "-n", "node3")
    assert [r["node"] for r in doc["nodes"]] == ["node2", "node3"]


def test_rates_move_under_load_and_rest_when_idle(mesh):
    stop, started = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    payload = os.urandom(64 * MiB)

    def load() -> None:
        try:
            with mesh.client() as c:
                block = c.allocate(len(payload), node="node1")
                try:
                    while not stop.is_set():
                        c.write(block, payload)
                        c.read_into(block, bytearray(len(payload)))
                        started.set()
                finally:
                    c.free(block)
        except BaseException as exc:  # the test reports it
            failures.append(exc)
            started.set()

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        assert started.wait(60) and not failures, failures
        busy = sample(mesh.config_path, "--interval", "2")["by_node"]
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive() and not failures, failures
    node1 = busy["node1"]
    assert node1["in_bytes_per_s"] > BUSY_BYTES_PER_S, node1
    assert node1["out_bytes_per_s"] > BUSY_BYTES_PER_S, node1
    assert node1["ops_per_s"] > 1, node1
    assert node1["errors_per_s"] == 0, node1
    for name in ("node2", "node3"):  # the load went to node1 only
        assert busy[name]["in_bytes_per_s"] < IDLE_BYTES_PER_S, busy[name]

    idle = sample(mesh.config_path)["by_node"]
    for name, r in idle.items():
        assert r["in_bytes_per_s"] < IDLE_BYTES_PER_S, r
        assert r["out_bytes_per_s"] < IDLE_BYTES_PER_S, r
        assert r["ops_per_s"] < 50, r  # this sample's own requests, a few a second
    assert idle["node1"]["requests"] > busy["node1"]["requests"]


def test_live_view_with_count_ends_by_itself(mesh):
    p = top(mesh.config_path, "--count", "2", "--interval", "0.3")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    # on a pipe, rich prints the last frame only: one table with every node
    assert p.stdout.count("grid top: test-mesh") == 1, p.stdout
    for name in ("node1", "node2", "node3"):
        assert name in p.stdout
    assert "alive" in p.stdout and "ops/s" in p.stdout and "GB/s in" in p.stdout


def test_json_lines_until_count(mesh):
    p = top(mesh.config_path, "--json", "--count", "3", "--interval", "0.3")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]
    assert all(len(d["nodes"]) == 3 for d in docs)
    assert docs[0]["time"] < docs[1]["time"] < docs[2]["time"]


def test_ctrl_c_in_a_terminal_ends_the_live_view_with_exit_0(mesh):
    master, slave = pty.openpty()
    p = subprocess.Popen([str(GRID), "top", "-c", str(mesh.config_path), "--interval", "0.3"],
                         stdin=slave, stdout=slave, stderr=slave, cwd=mesh.config_path.parent,
                         env={**_env(), "TERM": "xterm-256color", "LINES": "50"})
    os.close(slave)
    shown = b""

    def read(until: float) -> bool:
        nonlocal shown
        r, _, _ = select.select([master], [], [], max(0.0, until - time.monotonic()))
        if not r:
            return False
        try:
            data = os.read(master, 65536)
        except OSError:  # the other end closed
            return False
        shown += data
        return bool(data)

    try:
        deadline = time.monotonic() + 60
        while shown.count(b"Ctrl-C quits") < 3 and time.monotonic() < deadline:
            read(deadline)  # the first frame, then two refreshes
        assert shown.count(b"Ctrl-C quits") >= 3, shown[-2000:]
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=10)
        while read(time.monotonic() + 1):
            pass
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        os.close(master)
    text = shown.decode("utf-8", errors="replace")
    assert code == 0, text[-2000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    # the cursor the live view hid is shown again
    assert shown.rfind(b"\x1b[?25h") > shown.rfind(b"\x1b[?25l") >= 0


def test_ctrl_c_ends_json_lines_with_exit_0(mesh):
    p = subprocess.Popen([str(GRID), "top", "-c", str(mesh.config_path), "--json",
                          "--interval", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=_env(), cwd=mesh.config_path.parent)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()  # a sample is out: the command is in its loop
        assert json.loads(first)["nodes"]
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "Traceback" not in err.decode() and "aborted" not in err.decode()
    for line in rest.decode().splitlines():  # whole lines only
        json.loads(line)


def test_an_unknown_node_is_one_line(mesh):
    p = top(mesh.config_path, "--once", "--node", "nodeX")
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "✗ unknown node 'nodeX' (known: node1, node2, node3)"]


def test_stopped_and_never_started_nodes(tmp_path):
    m = LocalMesh.create(tmp_path, n=3, memory_gb=0.5)
    try:
        for name in ("node1", "node2"):
            m.start(name)
        nodes = sample(m.config_path)["by_node"]
        assert nodes["node3"]["state"] == "down"  # in the file, never heard of
        assert all(nodes["node3"][k] is None for k in FIELDS - {"node", "address", "state"})
        assert nodes["node1"]["state"] == nodes["node2"]["state"] == "alive"

        m.kill("node2")  # SIGKILL: no goodbye
        deadline = time.monotonic() + 60
        while True:
            node2 = sample(m.config_path)["by_node"]["node2"]
            if node2["state"] == "dead" or time.monotonic() > deadline:
                break
        assert node2["state"] == "dead", node2
        assert node2["ops_per_s"] is None and node2["used"] is None
        live = sample(m.config_path)["by_node"]["node1"]
        assert live["state"] == "alive" and live["ops_per_s"] is not None

        table = top(m.config_path, "--once")
        assert table.returncode == 0, table.stderr
        rows = {line.split()[1]: line for line in table.stdout.splitlines()
                if line.startswith("│ node")}
        assert "dead" in rows["node2"] and "down" in rows["node3"]
    finally:
        leaked = m.stop_all()
        assert not leaked, f"agents ignored SIGTERM and had to be killed: {leaked}"


def test_a_paused_agent_is_unreachable_and_the_view_goes_on(tmp_path):
    m = LocalMesh.create(tmp_path, n=2, memory_gb=0.5)
    m.start_all()
    p = None
    try:
        p = subprocess.Popen([str(GRID), "top", "-c", str(m.config_path), "--json",
                              "--interval", "1", "--count", "4"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_env(),
                             cwd=tmp_path)
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        before = {r["node"]: r for r in first["nodes"]}["node2"]
        assert before["state"] == "alive" and before["used"] is not None
        m.kill("node2", signal.SIGSTOP)  # there, but silent
        rest, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        states = [{r["node"]: r for r in json.loads(line)["nodes"]} for line in rest.splitlines()]
        assert len(states) == 3
        after = states[0]["node2"]  # the sample right after the pause: its last figures
        assert after["state"] == "unreachable", after
        assert after["used"] == before["used"] and after["ops_per_s"] is None
        assert all(s["node2"]["state"] in ("unreachable", "suspect", "dead") for s in states)
        assert all(s["node1"]["state"] == "alive" and s["node1"]["ops_per_s"] is not None
                   for s in states)
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
        if m.node("node2").proc is not None:
            m.kill("node2", signal.SIGCONT)
        leaked = m.stop_all()
        assert not leaked, f"agents ignored SIGTERM and had to be killed: {leaked}"


# --- the rate rule, on readings a real agent cannot be made to send --------------------------


def _stats(incarnation: int, uptime_s: float | None, requests: int, bytes_in: int,
           errors: int = 0) -> dict:
    rec = {"incarnation": incarnation, "used": 10, "capacity": 100, "blocks": 1,
           "ops": {"requests": requests, "errors": errors, "bytes_in": bytes_in,
                   "bytes_out": 0, "by_op": {}}}
    if uptime_s is not None:
        rec["uptime_s"] = uptime_s
    return rec


def test_rates_over_the_agents_own_time():
    prev = Reading("n", "tcp://127.0.0.1:1", "alive", _stats(1, 10.0, 100, 0), fresh=True)
    cur = Reading("n", "tcp://127.0.0.1:1", "alive", _stats(1, 12.0, 300, 4_000_000_000, 4),
                  fresh=True)
    row = rates(prev, cur, elapsed_s=5.0)  # the agent's 2 s, not this process's 5 s
    assert row["ops_per_s"] == 100 and row["in_bytes_per_s"] == 2e9
    assert row["errors_per_s"] == 2 and row["errors"] == 4 and row["requests"] == 300
    # without uptime_s, this process's time
    no_up = [Reading(r.name, r.address, r.state, {**r.stats, "uptime_s": None}, True)
             for r in (prev, cur)]
    assert rates(*no_up, elapsed_s=4.0)["ops_per_s"] == 50


def test_no_rates_across_a_restart_an_older_agent_or_an_unreachable_one():
    prev = Reading("n", "a", "alive", _stats(1, 50.0, 1000, 0), fresh=True)
    restarted = Reading("n", "a", "alive", _stats(2, 1.0, 10, 0), fresh=True)
    assert rates(prev, restarted, 1.0)["ops_per_s"] is None
    assert rates(prev, restarted, 1.0)["requests"] == 10

    older = Reading("n", "a", "alive", {"incarnation": 1, "used": 1, "capacity": 2,
                                        "blocks": 0}, fresh=True)
    row = rates(older, older, 1.0)
    assert row["used"] == 1 and row["requests"] is None and row["ops_per_s"] is None

    kept = Reading("n", "a", UNREACHABLE, prev.stats)  # last figures, not fresh
    row = rates(prev, kept, 1.0)
    assert row["used"] == 10 and row["ops_per_s"] is None

    down = rates(None, Reading("n", "a", DOWN), 1.0)
    assert down["state"] == "down" and down["used"] is None
