"""Forged gossip (``agents/gossip.py``: one SUB per peer, a heartbeat must name its link's node;
on a keyed mesh the SUB is a CURVE client of that node's own key) and the local keyed workflow
through the real ``grid`` executable.

A forger is a PUB bound at the gossip address of a node of the cluster file that is not
started (its "slot"): the agents follow that address from the file, so whatever it publishes
reaches them, as in ``tests/integration/test_hardening_agent.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
import zmq
from zmq.utils.monitor import recv_monitor_message

from mesh import protocol as P
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.membership import NodeInfo
from mesh.security.keys import KeyDir
from support.mesh import LocalMesh, free_port_pair

GRID = Path(sys.executable).parent / "grid"

# the forged records claim a version of their own: the client's skew warning is expected
pytestmark = pytest.mark.filterwarnings("ignore::mesh.client.view.MeshVersionWarning")


def _heartbeat(node: str, address: str, gossip: str, incarnation: int,
               peers: list[dict] | None = None) -> list[bytes]:
    rec = NodeInfo(name=node, address=address, gossip=gossip, incarnation=incarnation,
                   version="forged", state="alive", age_s=0.0, capacity=1 << 30, used=0,
                   room=1 << 30, host_available=1 << 30, host_total=1 << 30, blocks=0).record()
    rec["peers"] = [{**p, "age_s": 0.0} for p in peers or []]
    return P.encode_heartbeat(rec)


def _peer(node: str, address: str, gossip: str, incarnation: int) -> dict:
    frames = _heartbeat(node, address, gossip, incarnation)
    rec = P.parse_heartbeat(frames)
    rec.pop("peers", None)
    return rec


@contextlib.contextmanager
def _forger(tmp: Path, keyed: bool) -> Iterator[LocalMesh]:
    """node1 and node2 started, node3 configured but not: its slot is the forger's."""
    mesh = LocalMesh.create(tmp, n=3, keyed=keyed)
    try:
        for name in ("node1", "node2"):
            mesh.start(name)
        deadline = time.monotonic() + 15.0
        with MeshClient(mesh.config_path, timeout_s=2.0) as c:
            for a, b in (("node1", "node2"), ("node2", "node1")):
                while _table(c, mesh.node(a).address).get(b, {}).get("state") != "alive":
                    assert time.monotonic() < deadline, f"{a} never heard {b}"
                    time.sleep(0.05)
        yield mesh
    finally:
        leaked = mesh.stop_all()
        assert not leaked, f"agents ignored SIGTERM: {leaked}"


@contextlib.contextmanager
def _pub(ctx: zmq.Context, bind: str, server_key: tuple[bytes, bytes] | None = None):
    """A PUB bound at ``bind`` (a CURVE server of ``server_key`` when given) and a monitor of
    its connections."""
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    if server_key is not None:
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = server_key
    monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    sock.bind(bind)
    try:
        yield sock, monitor
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


HANDSHAKE_ENDS = {zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                  zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH}


def _table(client: MeshClient, address: str) -> dict[str, dict]:
    return {r["node"]: r for r in client._run(client._core.call(address, "nodes"))["nodes"]}


def _publish_watching(pub: zmq.Socket, frames: list[bytes], client: MeshClient, address: str,
                      until, after_s: float = 1.0, timeout_s: float = 10.0) -> list[dict]:
    """Publish ``frames`` every 50 ms, reading ``address``'s table every 250 ms, until
    ``until(table)`` holds (at most ``timeout_s``), then ``after_s`` more; returns the tables
    read. ``until`` failing to hold by the timeout fails the test."""
    tables: list[dict] = []
    start = next_look = time.monotonic()
    end = None
    while end is None or time.monotonic() < end:
        pub.send_multipart(frames)
        now = time.monotonic()
        if now >= next_look:
            tables.append(_table(client, address))
            next_look += 0.25
            if end is None and until(tables[-1]):
                end = now + after_s
            assert end is not None or now - start < timeout_s, tables[-1:]
        time.sleep(0.05)
    return tables


def _handshake_ended(monitor: zmq.Socket):
    """An ``until`` for ``_publish_watching``: the forger's PUB saw a peer's handshake end
    (succeed or fail), so node1 did reach it."""
    ended: list[int] = []

    def until(_table) -> bool:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event in HANDSHAKE_ENDS:
                ended.append(event)
        return bool(ended)

    return until


def test_a_heartbeat_naming_another_node_than_its_link_is_dropped(tmp_path):
    """Without keys: from node3's slot, heartbeats saying they are node2 (a fake address, a
    higher incarnation) are dropped and counted; node1 keeps node2's real address. The same
    PUB publishing node3's own heartbeat is heard (the forger does reach node1)."""
    with _forger(tmp_path, keyed=False) as mesh:
        node1, node2, slot = mesh.nodes
        slot_gossip = f"tcp://{slot.host}:{slot.port + 1}"
        ctx = zmq.Context()
        try:
            with MeshClient(mesh.config_path, timeout_s=5.0) as c, \
                    _pub(ctx, slot_gossip) as (pub, _):
                real = _table(c, node1.address)["node2"]
                assert real["address"] == node2.address
                fake = f"tcp://127.0.0.9:{free_port_pair('127.0.0.9')}"
                forged = _heartbeat("node2", fake, slot_gossip, real["incarnation"] + 1)

                def rejected(_table) -> bool:
                    stats = c._run(c._core.call(node1.address, "stats"))
                    return stats["auth"]["gossip_rejected"] > 0

                tables = _publish_watching(pub, forged, c, node1.address, until=rejected)
                for table in tables + [_table(c, node1.address)]:
                    assert table["node2"]["address"] == node2.address
                    assert table["node2"]["incarnation"] == real["incarnation"]
                # the control: the slot speaking for itself is heard
                own = _heartbeat("node3", slot.address, slot_gossip, 1)
                _publish_watching(pub, own, c, node1.address, after_s=0.0,
                                  until=lambda t: t.get("node3", {}).get("state") == "alive")
        finally:
            ctx.term()


def test_gossip_without_the_slots_key_is_never_heard(tmp_path):
    """Keyed: a PUB in node3's slot without node3's key (no CURVE at all; CURVE with a key pair
    of its own) publishing node3's heartbeat, which relays a fake node2: node1 never lists
    node3 alive and node2 keeps its address. With node3's real secret the same PUB is heard
    (so the test can see a forger succeed)."""
    with _forger(tmp_path, keyed=True) as mesh:
        node1, node2, slot = mesh.nodes
        slot_gossip = f"tcp://{slot.host}:{slot.port + 1}"
        with MeshClient(mesh.config_path, timeout_s=5.0) as c:
            real = _table(c, node1.address)["node2"]
            fake = f"tcp://127.0.0.9:{free_port_pair('127.0.0.9')}"
            beat = _heartbeat("node3", slot.address, slot_gossip, 1, peers=[
                _peer("node2", fake, fake, real["incarnation"] + 1)])
            for server_key in (None, zmq.curve_keypair()):
                ctx = zmq.Context()
                try:
                    with _pub(ctx, slot_gossip, server_key) as (pub, monitor):
                        tables = _publish_watching(pub, beat, c, node1.address,
                                                   until=_handshake_ended(monitor))
                finally:
                    ctx.term()
                for table in tables + [_table(c, node1.address)]:
                    assert table.get("node3", {}).get("state") != "alive", table.get("node3")
                    assert table["node2"]["address"] == node2.address
                    assert table["node2"]["incarnation"] == real["incarnation"]
            # the control: node3's own secret makes the same PUB node3
            ctx = zmq.Context()
            try:
                slot_key = KeyDir(mesh.tmp / "keys").agent_key("node3")
                with _pub(ctx, slot_gossip, slot_key) as (pub, _):
                    _publish_watching(pub, beat, c, node1.address, after_s=0.0,
                                      until=lambda t: t.get("node3", {}).get("state") == "alive")
            finally:
                ctx.term()


# --- the local keyed workflow through the CLI ---------------------------------------------------


def _grid(*args: str, env: dict, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRID), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_keys_init_then_agents_run_keyed_and_the_cli_uses_the_admin_key(tmp_path, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    env = {k: v for k, v in os.environ.items() if k not in ("GRID_CONFIG", "GRID_KEY")}
    env["GRID_STATE_DIR"] = str(tmp_path / "state")
    env["COLUMNS"] = "200"
    nodes = [{"name": f"n{i}", "host": f"127.0.0.{i}", "memory_gb": 0.5,
              "mesh_port": free_port_pair(f"127.0.0.{i}")} for i in (1, 2)]
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"name": "keyed-cli", "nodes": nodes,
                                   "mesh": {"host_reserve_bytes": "256MiB"}}))
    c = str(cfg)
    r = _grid("keys", "init", "-c", c, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _grid("agents", "start", "-c", c, env=env, cwd=tmp_path)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        r = _grid("memory", "stats", "-c", c, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "n1" in r.stdout and "n2" in r.stdout
        src = tmp_path / "in.bin"
        src.write_bytes(os.urandom(4096))
        r = _grid("memory", "store", "k", str(src), "-c", c, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        out = tmp_path / "out.bin"
        r = _grid("memory", "retrieve", "k", "-o", str(out), "-c", c, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert out.read_bytes() == src.read_bytes()
        r = _grid("agents", "status", "--json", "-c", c, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert {n["node"]: (n["state"], n.get("security")) for n in doc["nodes"]} == {
            "n1": ("alive", "keyed"), "n2": ("alive", "keyed")}
        # the agents do run keyed: a client without the key is refused (at once, or, in the
        # race of test_security.py test_a_refusal_seen_before_the_monitor_is_attached_is_missed,
        # after its timeout)
        with MeshClient(address=f"tcp://127.0.0.1:{nodes[0]['mesh_port']}") as bare:
            with pytest.raises(MeshError, match="this client has none|within"):
                bare.ping()
    finally:
        r = _grid("agents", "stop", "-c", c, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("stopped") == 2, r.stdout + r.stderr
