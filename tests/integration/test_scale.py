"""Membership with a dozen real agents (issue 14, item 6, at a size a test can afford): heartbeats
relay a bounded digest, not every peer's record (``mesh/membership.py`` ``gossip_digest``), and
the mesh still converges, stays converged, sees a killed agent die and its restart, with every
table alike. ``tools/bench.py scale`` measures the same at 100 agents (docs/scale.md)."""

from __future__ import annotations

import json
import signal
import time

import pytest
import zmq

from mesh import protocol as P
from mesh.membership import CHANGE_RELAY_S, DIGEST_RECENT, DIGEST_SAMPLE
from support.cli import cli_env, grid
from support.mesh import running_mesh
from support.wire import raw_call

N = 12


def _tables(mesh, names):
    return {a.name: raw_call(a.address, P.NODES, {}, timeout_ms=5000).body["nodes"]
            for a in mesh.nodes if a.name in names}


def _views(tables):
    return {name: {r["node"]: (r["incarnation"], r["state"]) for r in rows}
            for name, rows in tables.items()}


def _wait(pred, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _heartbeats(gossip_address, seconds):
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, P.HEARTBEAT_TOPIC)
    sock.connect(gossip_address)
    got, deadline = [], time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if sock.poll(200):
                got.append(P.parse_heartbeat(sock.recv_multipart()))
    finally:
        sock.close(0)
    return got


def test_a_dozen_agents_relay_a_bounded_digest_and_agree_on_who_is_alive(tmp_path):
    with running_mesh(tmp_path, n=N, memory_gb=0.05, host_reserve_bytes="16MiB") as mesh:
        names = {a.name for a in mesh.nodes}
        first = mesh.nodes[0]
        gossip = f"tcp://{first.host}:{first.port + 1}"
        time.sleep(CHANGE_RELAY_S)  # what every agent learned at start is no longer news
        beats = _heartbeats(gossip, 2.0)
        assert beats and all(b["node"] == first.name for b in beats)
        # every peer's record would be N - 1 = 11 of them; the digest is the sample
        assert max(len(b["peers"]) for b in beats) <= DIGEST_SAMPLE < N - 1
        views = _views(_tables(mesh, names))
        assert all(set(v) == names for v in views.values())
        assert all(state == "alive" for v in views.values() for _, state in v.values())
        assert len({tuple(sorted(v.items())) for v in views.values()}) == 1  # one view

        mesh.kill("node5", signal.SIGKILL)
        others = names - {"node5"}
        _wait(lambda: all(v["node5"][1] == "dead" for v in _views(_tables(mesh, others)).values()),
              timeout_s=15)
        views = _views(_tables(mesh, others))  # nobody else is suspected meanwhile
        assert all(v[n][1] == "alive" for v in views.values() for n in others)

        before = views["node1"]["node5"][0]
        mesh.start("node5")  # a new incarnation: news, relayed in the digest while it is recent
        beats = _heartbeats(gossip, 1.5)
        assert any(p["node"] == "node5" for b in beats for p in b["peers"])
        assert max(len(b["peers"]) for b in beats) <= DIGEST_RECENT + DIGEST_SAMPLE

        def everyone_knows_the_restart():
            views = _views(_tables(mesh, names))
            return all(v["node5"][0] > before and v["node5"][1] == "alive"
                       for v in views.values())

        _wait(everyone_knows_the_restart, timeout_s=15)


@pytest.mark.parametrize("bound", [
    # 3 peers each, 1.5 heartbeats a second taken in by each agent
    {"heartbeat_intake_per_s": 1.5},
    # each takes in 6 a second, under its own intake (100), but the 4 share this machine, which
    # takes in 4 x 3 / 0.5 = 24 a second: past 6, they stretch together
    {"heartbeat_host_intake_per_s": 6.0},
], ids=["own intake", "machine's intake"])
def test_agents_past_their_intake_beat_less_often_and_nobody_is_suspected(tmp_path, bound):
    # every agent stretches its 0.5 s interval to 2.0 s (4x, the most; in steps of at most
    # half), says so, and its peers time its silence by it: suspect after 3.2 s, dead after
    # 6.4. Unstretched they would find each agent suspect after 0.8 s and dead after 1.6 s of
    # every 2 s between its heartbeats.
    timings = dict(heartbeat_interval_s=0.5, suspect_after_s=0.8, dead_after_s=1.6, **bound)
    with running_mesh(tmp_path, n=4, memory_gb=0.05, host_reserve_bytes="16MiB",
                      **timings) as mesh:
        names = {a.name for a in mesh.nodes}
        first = mesh.nodes[0]
        _wait(lambda: all(set(v) == names for v in _views(_tables(mesh, names)).values()), 15)
        time.sleep(4.0)  # the stretch has reached 2.0 s (0.5, 0.75, 1.125, 1.687, 2.0)
        beats = _heartbeats(f"tcp://{first.host}:{first.port + 1}", 4.0)
        assert beats and {b["beat_ms"] for b in beats} == {2000}
        assert len(beats) <= 3  # 8 at the cluster's interval; a busy host makes fewer
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # every table, 20 times: all alive
            views = _views(_tables(mesh, names))
            assert all(state == "alive" for v in views.values() for _, state in v.values()), views
            time.sleep(0.2)
        # nor is a quiet gossip link taken for a broken one and made again
        assert not any("connected to it again" in a.log.read_text() for a in mesh.nodes)
        # grid agents status says how often each beats
        status = grid("agents", "status", "-c", str(mesh.config_path), "--json",
                      env=cli_env(tmp_path), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert {r["node"]: r["beat_s"] for r in json.loads(status.stdout)["nodes"]} == {
            name: 2.0 for name in names}
        table = grid("agents", "status", "-c", str(mesh.config_path), env=cli_env(tmp_path),
                     cwd=tmp_path)
        assert table.stdout.count(", every 2s") == len(names), table.stdout

        mesh.kill(first.name, signal.SIGKILL)  # still found dead, by its stretched timeout
        others = names - {first.name}
        _wait(lambda: all(v[first.name][1] == "dead"
                          for v in _views(_tables(mesh, others)).values()), timeout_s=20)
        views = _views(_tables(mesh, others))
        assert all(v[n][1] == "alive" for v in views.values() for n in others)
