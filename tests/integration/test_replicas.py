"""Replicas with real agents (docs/durability.md): where copies go, writes acknowledged only once
every live copy has them, a copy lost to kill -9 or a pause, repair, and fencing of a copy the
mesh has moved on from. All agents run on this one machine, so copies are spread over nodes
(``replica_spread: node``); a cluster asked to spread over machines refuses."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mesh import protocol as P
from mesh.errors import BlockNotFound, MeshError, NotCurrent, PlacementShort, StaleEpoch
from support.mesh import running_mesh

pytestmark = pytest.mark.xdist_group("replicas")

FAST = dict(heartbeat_interval_s=0.25, suspect_after_s=0.75, dead_after_s=1.5,
            replica_spread="node")
MiB = 1 << 20


def wait_for(what, timeout_s: float = 20.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)


def call(client, address: str, op: str, fields: dict, payload: bytes | None = None):
    """One raw request (a payload for WRITE-like ops), as any process on the network could."""
    from mesh.client.batch import Batch, Call

    core = client._core
    c = Call(address, op, fields, payload=memoryview(payload) if payload is not None else None)
    calls = client._run(core.execute(Batch([c], 3.0, fail_fast=False)))
    if calls[0].error is not None:
        raise calls[0].error
    return calls[0].result


def holders(mesh, client, block_id: str) -> set[str]:
    """The nodes whose agent holds any copy of the block (LIST on each)."""
    found = set()
    for a in mesh.nodes:
        if a.proc is None or a.proc.poll() is not None:
            continue
        rows = call(client, a.address, P.LIST, {})["blocks"]
        if any(r["block"] == block_id for r in rows):
            found.add(a.name)
    return found


def full_copies(client, block_id: str, n: int = 2):
    try:
        info = client.stat(block_id)
    except Exception:
        return None
    return info if len(info.nodes) == n and not getattr(info, "syncing", ()) else None


def test_copies_go_to_distinct_nodes_and_every_one_has_each_acknowledged_write(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(3 * MiB + 5, replicas=2)
        info = c.stat(b)
        assert len(info.nodes) == 2 and len(set(info.nodes)) == 2 and info.replicas == 2
        assert info.node == info.nodes[0] and info.epoch == 1
        assert info.shared_hosts  # spread "node" on one machine: it says so
        assert holders(mesh, c, b) == set(info.nodes)
        data = os.urandom(3 * MiB + 5)
        c.write(b, data)
        # every copy has it: kill the primary and read what the backup serves
        mesh.kill(info.nodes[0])
        assert bytes(c.read(b)) == data
        listed = {x.block_id: x for x in c.blocks()}
        assert listed[b].nodes[0] == info.nodes[1]  # one row per block, the new primary first


def test_a_cluster_on_one_machine_cannot_spread_copies_over_machines(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        with pytest.raises(PlacementShort, match="hosts"):
            c.allocate(MiB, replicas=2, spread="host")
        with pytest.raises(PlacementShort):
            c.allocate(MiB, replicas=4)  # three nodes
        assert c.blocks() == []  # nothing half-made is left behind


def test_a_killed_backup_is_replaced_and_writes_go_on(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(2 * MiB, replicas=2)
        first = c.stat(b)
        backup = first.nodes[1]
        c.write(b, b"a" * (2 * MiB))
        mesh.kill(backup)
        c.write(b, b"b" * MiB)  # acknowledged once the primary has moved on from the backup
        repaired = wait_for(lambda: full_copies(c, b))
        assert backup not in repaired.nodes and repaired.epoch > first.epoch
        assert repaired.nodes[0] == first.nodes[0]
        assert bytes(c.read(b)) == b"b" * MiB + b"a" * MiB
        # the new copy is complete: with the primary gone it serves every byte (the killed
        # backup restarts first, so the survivors are a majority of the three and may move on)
        mesh.start(backup)
        mesh.kill(first.nodes[0])
        assert bytes(c.read(b)) == b"b" * MiB + b"a" * MiB


def test_a_killed_primary_fails_over_and_a_restarted_one_holds_nothing(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(MiB, replicas=2)
        first = c.stat(b)
        c.write(b, b"x" * MiB)
        mesh.kill(first.nodes[0])
        c.write(b, b"y" * 10, 0)  # to the backup, once it has taken over
        assert bytes(c.read(b, 11)) == b"y" * 10 + b"x"
        mesh.start(first.nodes[0])  # same node name, new process: its memory is gone
        repaired = wait_for(lambda: full_copies(c, b))
        assert repaired.nodes[0] == first.nodes[1]
        with mesh.client() as fresh:
            assert bytes(fresh.read(b, 11)) == b"y" * 10 + b"x"
            address = mesh.node(first.nodes[0]).address
            if first.nodes[0] not in repaired.nodes:  # not chosen for the repair
                with pytest.raises(BlockNotFound):
                    call(fresh, address, P.STAT, {"block": b})


def test_a_paused_primary_is_fenced_when_it_comes_back(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(MiB, replicas=2)
        first = c.stat(b)
        old = mesh.node(first.nodes[0])
        c.write(b, b"1" * MiB)
        old.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: (s := full_copies(c, b)) and first.nodes[0] not in s.nodes)
            c.write(b, b"2" * MiB)  # acknowledged by the new set
        finally:
            old.proc.send_signal(signal.SIGCONT)
        # the old primary's lease ran out while it was stopped: it never serves its copy again
        with mesh.client() as other:
            for _ in range(20):
                try:
                    got = bytes(call(other, old.address, P.STAT, {"block": b})["nodes"])
                except (NotCurrent, BlockNotFound):
                    got = None
                assert got is None, "a fenced copy answered"
                time.sleep(0.05)
            wait_for(lambda: first.nodes[0] not in holders(mesh, other, b)
                     or first.nodes[0] in other.stat(b).nodes)
            assert bytes(other.read(b)) == b"2" * MiB


def test_only_the_primary_takes_changes_and_only_from_its_own_epoch(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(MiB, replicas=2)
        info = c.stat(b)
        primary, backup = (mesh.node(n) for n in info.nodes)
        with pytest.raises(NotCurrent, match="primary"):
            call(c, backup.address, P.WRITE, {"block": b, "offset": 0}, b"z")
        forged = {"block": b, "from": backup.name, "inc": 1, "epoch": info.epoch, "offset": 0}
        with pytest.raises(StaleEpoch):  # not the set's primary
            call(c, primary.address, P.RWRITE, forged, b"z")
        stale = {**forged, "from": primary.name, "epoch": info.epoch - 1}
        with pytest.raises(StaleEpoch):
            call(c, backup.address, P.RWRITE, stale, b"z")
        assert bytes(c.read(b, 1)) == b"\0"


def _primary_of(client, key: str) -> str | None:
    try:
        return client.object_info(key).nodes[0]
    except MeshError:
        return None


def test_named_objects_live_with_their_block_copies(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        c.put_bytes("k", b"hello" * 1000, replicas=2)
        info = c.object_info("k")
        assert len(info.nodes) == 2
        c.put_object("obj", {"a": 1}, replicas=2)
        mesh.kill(info.nodes[0])
        assert bytes(c.get_bytes("k")) == b"hello" * 1000  # a read fails over at once
        # a change goes through the primary: the survivor takes over once the dead one is
        # dead (dead_after_s); before that a put may be told the old primary is unavailable
        assert wait_for(lambda: _primary_of(c, "k") not in (None, info.nodes[0]))
        c.put_bytes("k", b"new", replace=True, replicas=2)
        assert bytes(c.get_bytes("k")) == b"new"
        c.delete("k")
        with pytest.raises(Exception):
            c.get_bytes("k")


def test_free_frees_every_copy(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(MiB, replicas=3)
        assert len(holders(mesh, c, b)) == 3
        c.free(b)
        assert holders(mesh, c, b) == set()


def test_replicas_on_a_keyed_cluster(tmp_path):
    with running_mesh(tmp_path, n=3, keyed=True, **FAST) as mesh, \
            mesh.client(key=mesh.admin_key) as c:
        b = c.allocate(2 * MiB, replicas=2)
        info = c.stat(b)
        c.write(b, b"k" * (2 * MiB))
        mesh.kill(info.nodes[0])
        assert bytes(c.read(b)) == b"k" * (2 * MiB)
        assert wait_for(lambda: full_copies(c, b))


def test_the_readme_example_runs(tmp_path):
    import re
    import subprocess
    import sys

    from support.mesh import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Replicas: surviving the loss of an agent", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with running_mesh(tmp_path, n=3, **FAST) as mesh:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path,
                              env={**os.environ, "GRID_CONFIG": str(mesh.config_path),
                                   "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        nodes = eval(done.stdout.strip())  # the printed tuple of node names
        assert len(nodes) == 2 and len(set(nodes)) == 2
        with mesh.client() as c:
            assert c.blocks() == []


def test_moving_one_copy_makes_the_new_one_first_and_keeps_copies_apart(tmp_path):
    from mesh.errors import InvalidRequest

    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(3 * MiB, replicas=2)
        data = os.urandom(3 * MiB)
        c.write(b, data)
        first = c.stat(b)
        third = next(a.name for a in mesh.nodes if a.name not in first.nodes)
        with pytest.raises(InvalidRequest, match="already"):
            c.move(b, first.nodes[1])  # never two copies on one node
        report = c.move(b, third, source=first.nodes[1])  # a backup's copy
        assert (report["from"], report["to"]) == (first.nodes[1], third)
        moved = c.stat(b)
        assert set(moved.nodes) == {first.nodes[0], third}
        assert holders(mesh, c, b) == set(moved.nodes)
        report = c.move(b, first.nodes[1])  # the primary's own copy: it hands over
        now = c.stat(b)
        assert set(now.nodes) == {third, first.nodes[1]} and now.nodes[0] == third
        assert holders(mesh, c, b) == set(now.nodes)
        assert bytes(c.read(b)) == data


def test_draining_a_node_rebuilds_its_copies_elsewhere_first(tmp_path):
    from mesh.balance.rebalance import Rebalancer
    from mesh.config import load_cluster_config

    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        blocks = [c.allocate(MiB, "node1", replicas=2) for _ in range(3)]
        for i, b in enumerate(blocks):
            c.write(b, bytes([i + 1]) * MiB)
        report = Rebalancer(c, load_cluster_config(mesh.config_path), None).run_once(
            drain="node1")
        assert not report.failed, report.failed
        for i, b in enumerate(blocks):
            info = c.stat(b)
            assert "node1" not in info.nodes and len(info.nodes) == 2
            assert bytes(c.read(b)) == bytes([i + 1]) * MiB
        assert not any(holders(mesh, c, b) & {"node1"} for b in blocks)


def test_three_copies_and_a_backup_restarted_before_it_was_missed(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(2 * MiB, replicas=3)
        c.write(b, b"3" * (2 * MiB))
        first = c.stat(b)
        assert len(first.nodes) == 3
        mesh.kill(first.nodes[2])
        mesh.start(first.nodes[2])  # back within dead_after_s: a new incarnation, no memory
        again = wait_for(lambda: (i := full_copies(c, b, 3)) and i.epoch > first.epoch and i)
        assert set(again.nodes) == set(first.nodes)  # the restarted node was refilled
        mesh.kill(first.nodes[0])
        mesh.kill(first.nodes[1])  # (no majority is left to move on: the last copy serves
        with mesh.client() as other:  # reads only while its leases hold, then none)
            got = None
            try:
                got = bytes(other.read(b))
            except Exception:
                pass
            assert got in (None, b"3" * (2 * MiB))


def test_a_replace_put_whose_publication_times_out_never_loses_the_key(tmp_path):
    """Found by tools/chaos.py: the primary had installed the new record (and freed the old
    value's block) but could not acknowledge it yet (its backups were paused); the client timed
    out, took the put as unpublished and freed the new block: both values were gone."""
    from mesh.errors import MeshError

    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client(timeout_s=1.0) as c:
        c.put_bytes("precious", b"v1", node="node1", replicas=2)
        real_call = c._core.call
        stopped = []

        def call(address, op, *args, **kwargs):
            if op == P.KPUT and not stopped:  # the block is written: silence its backups
                for name in ("node2", "node3"):
                    mesh.kill(name, signal.SIGSTOP)
                    stopped.append(name)
            return (yield from real_call(address, op, *args, **kwargs))

        c._core.call = call
        try:
            with pytest.raises(MeshError):
                c.put_bytes("precious", b"v2", node="node1", replace=True, replicas=2)
        finally:
            c._core.call = real_call
            for name in stopped:
                mesh.kill(name, signal.SIGCONT)
        assert stopped
        value = wait_for(lambda: _value(c, "precious"))
        assert value in (b"v1", b"v2")  # old code: KeyNotFound


def _value(c, key):
    try:
        return bytes(c.get_bytes(key))
    except Exception:
        return None


def test_a_paused_node_that_was_moved_on_from_is_a_copy_target_again(tmp_path):
    with running_mesh(tmp_path, n=3, **FAST) as mesh, mesh.client() as c:
        b = c.allocate(MiB, "node1", replicas=2)
        backup = c.stat(b).nodes[1]
        mesh.kill(backup, signal.SIGSTOP)
        try:
            wait_for(lambda: (i := full_copies(c, b)) and backup not in i.nodes)
        finally:
            mesh.kill(backup, signal.SIGCONT)
        # once it has dropped what it shared, it takes copies again: three need all three
        made = wait_for(lambda: _try_allocate(c), timeout_s=20)
        assert len(c.stat(made).nodes) == 3


def _try_allocate(c):
    try:
        return c.allocate(MiB, replicas=3)
    except PlacementShort:
        return None


def test_copies_spread_over_machines_and_a_client_reads_the_copy_on_its_own(tmp_path,
                                                                            monkeypatch):
    mesh = __import__("support.mesh", fromlist=["LocalMesh"]).LocalMesh.create(
        tmp_path, 3, **FAST)
    mesh.domains = {a.name: f"machine-{a.name}" for a in mesh.nodes}
    mesh.start_all()
    try:
        with mesh.client() as c:
            b = c.allocate(MiB, "node1", replicas=2, spread="host")  # three machines now
            assert not c.stat(b).shared_hosts
            data = os.urandom(MiB)
            c.write(b, data)
            backup = c.stat(b).nodes[1]
        monkeypatch.setenv("MESH_DOMAIN", f"machine-{backup}")  # a client on the backup's
        with mesh.client() as near:

            def served(name):
                return call(near, mesh.node(name).address, P.STATS, {})["reads_served"]

            before = {n: served(n) for n in ("node1", backup)}
            for _ in range(5):
                assert bytes(near.read(b)) == data
            assert served(backup) - before[backup] >= 5  # read where it is nearest
            assert served("node1") == before["node1"]
    finally:
        assert not mesh.stop_all()
