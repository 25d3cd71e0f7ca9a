"""A partition splits a replica set (needs root: network namespaces with veth pairs; skips
without). Three agents, each in its own namespace; the block's primary is cut off from the
others and from the main client. The majority side moves on (a majority has the primary dead)
and takes writes; the cut-off primary cannot: it never acknowledges a write, and stops serving
reads when its lease ends, before the others move on. After healing it drops its copy, and every
read returns what the majority side acknowledged: no two diverging versions were both readable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from support.mesh import ROOT
from support.netns import namespaces

pytestmark = pytest.mark.xdist_group("replicas")

PORT = 7710
TIMINGS = dict(heartbeat_interval_s=0.25, suspect_after_s=0.75, dead_after_s=1.5)

# Run in the hub namespace: make the block (primary node1), write A, then after the cut wait for
# the majority side to take over and acknowledge B; print when.
MAIN = r"""
import json, sys, time
from mesh.client import MeshClient
cfg, go, out = sys.argv[1:4]
with MeshClient(cfg, timeout_s=3.0) as c:
    b = c.allocate(1 << 20, "node1", replicas=2, spread="node")
    c.write(b, b"A" * (1 << 20))
    print(json.dumps({"block": b, "nodes": list(c.stat(b).nodes)}), flush=True)
    while not __import__("os").path.exists(go):
        time.sleep(0.02)
    deadline = time.monotonic() + 40
    while True:
        try:
            c.write(b, b"B" * (1 << 20))
            break
        except Exception as exc:
            assert time.monotonic() < deadline, repr(exc)
            time.sleep(0.1)
    acked = time.time()
    print(json.dumps({"b_acked": acked, "nodes": list(c.stat(b).nodes)}), flush=True)
"""

# Run in node1's namespace, talking to node1 only: for `seconds`, try to read and to write;
# report every read served (when, first byte) and every write acknowledged.
CUT_SIDE = r"""
import json, sys, time
from mesh.client import MeshClient
from mesh.client.batch import Batch, Call
from mesh import protocol as P
cfg, address, block, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
reads, writes = [], []
with MeshClient(cfg, timeout_s=0.5) as c:
    core = c._core
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out = bytearray(1)
        calls = c._run(core.execute(Batch([
            Call(address, P.READ, {"block": block, "offset": 0, "length": 1},
                 sink=memoryview(out))], 0.5, fail_fast=False)))
        if calls[0].error is None:
            reads.append([time.time(), out.decode()])
        calls = c._run(core.execute(Batch([
            Call(address, P.WRITE, {"block": block, "offset": 0},
                 payload=memoryview(b"P"))], 0.5, fail_fast=False)))
        if calls[0].error is None:
            writes.append(time.time())
        time.sleep(0.05)
print(json.dumps({"reads": reads, "writes": writes}), flush=True)
"""


def test_the_cut_off_primary_neither_acknowledges_nor_serves_once_the_others_go_on(tmp_path):
    with namespaces(3) as net:
        cfg = {
            "name": "partition", "nodes": [
                {"name": f"node{i}", "host": net.address(i), "port": 22, "role": "worker",
                 "memory_gb": 0.5, "mesh_port": PORT} for i in (1, 2, 3)],
            "mesh": {"insecure": True, "host_reserve_bytes": "256MiB",
                     "keys_dir": str(tmp_path / "keys"), **TIMINGS},
        }
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        for i in (1, 2, 3):
            log = open(tmp_path / f"node{i}.log", "wb")
            net.popen(net.ns(i), [sys.executable, "-m", "agents.main", "--config", str(path),
                                  "--node", f"node{i}"], stdout=log, stderr=log, env=env)
        time.sleep(2.0)  # the agents start and hear each other
        go = tmp_path / "go"
        main = net.popen(net.hub, [sys.executable, "-c", MAIN, str(path), str(go), ""],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        made = json.loads(main.stdout.readline() or "null") or pytest.fail(main.stderr.read())
        assert made["nodes"][0] == "node1" and len(made["nodes"]) == 2
        net.cut(1)
        cut_at = time.time()
        cut_side = net.popen(net.ns(1), [sys.executable, "-c", CUT_SIDE, str(path),
                                         f"tcp://{net.address(1)}:{PORT}", made["block"], "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        go.touch()
        after = json.loads(main.stdout.readline() or "null") or pytest.fail(main.stderr.read())
        seen = json.loads(cut_side.stdout.readline() or "null") or pytest.fail(
            cut_side.stderr.read())
        assert "node1" not in after["nodes"]
        # nothing written on the cut-off side was ever acknowledged
        assert seen["writes"] == []
        # it served reads only briefly after the cut (its lease), never once B was acknowledged
        late = [r for r in seen["reads"] if r[0] >= after["b_acked"]]
        assert late == [], f"the cut-off copy served {late[:3]} after the others went on"
        assert all(r[0] - cut_at < TIMINGS["dead_after_s"] for r in seen["reads"])
        net.heal(1)
        check = net.popen(net.hub, [sys.executable, "-c", r"""
import sys, time
from mesh.client import MeshClient
from mesh import protocol as P
cfg, block, address = sys.argv[1:4]
with MeshClient(cfg, timeout_s=3.0) as c:
    assert bytes(c.read(block, 4)) == b"BBBB"
    deadline = time.monotonic() + 20
    while True:  # node1 drops its stale copy once it hears it was moved on from
        rows = c._run(c._core.call(address, P.LIST, {}))["blocks"]
        if not any(r["block"] == block and r.get("epoch") == 1 for r in rows):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
print("ok")
""", str(path), made["block"], f"tcp://{net.address(1)}:{PORT}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        out, err = check.communicate(timeout=60)
        assert out.strip() == "ok", err
