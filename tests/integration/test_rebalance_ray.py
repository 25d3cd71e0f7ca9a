"""Rebalancing with a real Ray cluster (three raylets on loopback, tests/support/raycluster.py) and real
agents: real pressure moves blocks and reserves their memory through Ray, every byte reads back
through the old ids, no placement group is left behind, a move killed half-way leaves the data at
the source, and a master over its threshold (a real cgroup) gets memory reserved on the workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from mesh.errors import NodeUnavailable

from support.cgroups import memory_cgroup
from support.mesh import running_mesh
from support.raycluster import mesh_groups, node_of

pytestmark = pytest.mark.xdist_group("ray")

GRID = Path(sys.executable).parent / "grid"
MiB = 1 << 20
GiB = 1 << 30


def grid(config: Path, *args: str, timeout: float = 120, wrap=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRID_CONFIG"}
    env["COLUMNS"] = "200"
    argv = [str(GRID), *args, "-c", str(config)]
    return subprocess.run(wrap(argv) if wrap else argv, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _mesh(tmp: Path, address: str, memory_gb: float, **execution):
    """Three agents whose cluster file points at the Ray cluster (and has these
    ``execution.resource_sharing`` settings)."""
    extra: dict = {"ray": {"address": address}}
    if execution:
        extra["execution"] = {"resource_sharing": execution}
    return running_mesh(tmp, memory_gb=memory_gb, extra=extra)


def _pattern(seed: int, size: int) -> bytes:
    piece = bytes((seed * 31 + i) % 251 for i in range(4096))
    return (piece * (size // 4096 + 1))[:size]


def _groups_by_block() -> dict[str, dict]:
    out = {}
    for entry in mesh_groups().values():
        meta = json.loads(entry["name"][len("mesh:"):])
        if meta.get("kind") == "block":
            out[meta["block"]] = entry
    return out


def test_pressure_moves_blocks_reserves_their_memory_and_leaks_nothing(ray_cluster, tmp_path):
    with _mesh(tmp_path, ray_cluster, 0.25) as mesh:
        with mesh.client() as c:
            blocks = {}
            for i in range(12):  # 240 of node1's 256 MiB: score 1.0
                block = c.allocate(20 * MiB, node="node1")
                blocks[block] = _pattern(i, 20 * MiB)
                c.write(block, blocks[block])
        run = grid(mesh.config_path, "rebalance")
        assert run.returncode == 0, run.stderr
        assert run.stdout.count("✓ moved") == 4 and "reserved as alloc_" in run.stdout

        with mesh.client() as fresh:
            where = {b.block_id: b.node for b in fresh.blocks()}
            for block, data in blocks.items():  # the old ids, a client that knows nothing
                assert fresh.read(block) == data
        moved = {b: n for b, n in where.items() if n != "node1"}
        assert len(moved) == 4 and set(moved.values()) == {"node2", "node3"}

        groups = _groups_by_block()
        assert set(groups) == set(moved)  # one reservation per moved block, nothing else
        for block, entry in groups.items():
            assert entry["state"] == "CREATED"
            (bundle,) = entry["bundles"].values()
            assert bundle["memory"] == 20 * MiB
            assert [node_of(n) for n in entry["bundles_to_node_id"].values()] == [moved[block]]

        status = grid(mesh.config_path, "resource-sharing", "status")
        assert status.returncode == 0, status.stderr
        assert sum(1 for line in status.stdout.splitlines() if "alloc_" in line) == 4

        # freeing the blocks: the next pass releases their reservations
        with mesh.client() as c:
            for block in moved:
                c.free(block)
        again = grid(mesh.config_path, "rebalance")
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("released reservation") == 4
        assert mesh_groups() == {}


def test_killing_the_target_mid_move_keeps_the_data_and_releases_the_reservation(
        ray_cluster, tmp_path):
    with _mesh(tmp_path, ray_cluster, 1.5) as mesh:
        # 700 + 600 MiB = 85 % of node1's 1.5 GiB (score 0.75): the 700 MiB block must go
        sizes = {"big": 700 * MiB, "small": 600 * MiB}
        data = {name: _pattern(i, n) for i, (name, n) in enumerate(sizes.items())}
        with mesh.client() as c:
            ids = {name: c.allocate(n, node="node1") for name, n in sizes.items()}
            for name, block in ids.items():
                c.write(block, data[name])
            c.write(c.allocate(MiB, node="node3"), b"x")  # node2 is the emptier target
            node2 = mesh.node("node2").address
            base = c._run(c._core.call(node2, "stats"))["used"]

        proc = subprocess.Popen([str(GRID), "rebalance", "-c", str(mesh.config_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = threading.Event()
        try:
            with mesh.client(timeout_s=2.0) as c:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        used = c._run(c._core.call(node2, "stats"))["used"]
                    except NodeUnavailable:  # a poll that node2, taking the copy in, answered
                        continue             # late (seen under a full suite's load): poll again
                    if used > base:
                        mesh.kill("node2")  # the copy is arriving: SIGKILL the target
                        killed.set()
                        break
                    time.sleep(0.01)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert killed.is_set(), f"the move never started: {out}\n{err}"
        assert proc.returncode == 1, out + err
        assert "intact on node1" in err and "Traceback" not in err
        with mesh.client() as fresh:
            for name, block in ids.items():
                assert fresh.stat(block).node == "node1"
                assert zlib.crc32(fresh.read(block)) == zlib.crc32(data[name])
        assert mesh_groups() == {}  # the failed move's reservation is gone


def test_a_master_over_its_threshold_gets_memory_reserved_on_the_workers(ray_cluster, tmp_path):
    # high 0.5 = over 80 % full, low 0.3 = under 70 %; the master is a 3 GiB cgroup
    with _mesh(tmp_path, ray_cluster, 1.0,
               thresholds={"memory_pressure_high": 0.5, "memory_pressure_low": 0.3},
               allocation_timeout_minutes=5) as mesh:
        with memory_cgroup(3 * GiB) as group:
            ballast = subprocess.Popen(group.command([
                sys.executable, "-c",
                "import sys, time; b = bytearray(b'\\x01') * (2600 << 20); print('ready', "
                "flush=True); time.sleep(120)",
            ]), stdout=subprocess.PIPE, text=True)
            try:
                assert ballast.stdout.readline().strip() == "ready"
                run = grid(mesh.config_path, "rebalance", wrap=group.command)
            finally:
                ballast.kill()
                ballast.wait()
        assert run.returncode == 0, run.stderr
        assert "memory reserved on workers: alloc_" in run.stdout, run.stdout
        rid = run.stdout.split("memory reserved on workers: ")[1].split()[0]
        (entry,) = mesh_groups().values()
        meta = json.loads(entry["name"][len("mesh:"):])
        assert meta["id"] == rid and meta["source"] == socket.gethostname()
        assert meta["kind"] == "request" and meta["resource"] == "memory"
        assert meta["expires"] - meta["created"] == pytest.approx(300, abs=1)
        assert {node_of(n) for n in entry["bundles_to_node_id"].values()} <= {"node1", "node2",
                                                                              "node3"}
        # about what takes the master from ~88 % down to 70 % of 3 GiB
        assert 0.2 * GiB < meta["amount"] < 0.9 * GiB
        released = grid(mesh.config_path, "resource-sharing", "release", rid)
        assert released.returncode == 0, released.stderr
        assert mesh_groups() == {}


def test_drain_reserves_too_and_ray_down_is_one_line(ray_cluster, tmp_path):
    with _mesh(tmp_path, ray_cluster, 0.25) as mesh:
        with mesh.client() as c:
            blocks = [c.allocate(8 * MiB, node="node3") for _ in range(3)]
        run = grid(mesh.config_path, "agents", "drain", "node3")
        assert run.returncode == 0, run.stderr
        assert "node3 holds no blocks now (3 moved)" in run.stdout
        assert set(_groups_by_block()) == set(blocks)
        # draining again where they landed: each block's old reservation goes with it
        with mesh.client() as c:
            landed = {b.node for b in c.blocks()}
        for node in sorted(landed):
            run = grid(mesh.config_path, "agents", "drain", node)
            assert run.returncode == 0, run.stderr
        with mesh.client() as c:
            where = {b.block_id: b.node for b in c.blocks()}
        groups = _groups_by_block()
        assert set(groups) == set(blocks)
        for block, entry in groups.items():
            assert [node_of(n) for n in entry["bundles_to_node_id"].values()] == [where[block]]
        with mesh.client() as c:
            for block in blocks:
                c.free(block)
        assert grid(mesh.config_path, "rebalance").returncode == 0
        assert mesh_groups() == {}

        dead = tmp_path / "dead-ray.yaml"
        text = mesh.config_path.read_text().replace(ray_cluster, "127.0.0.1:9")
        dead.write_text(text)
        for args in (("rebalance",), ("agents", "drain", "node1")):
            t0 = time.monotonic()
            r = grid(dead, *args)
            assert r.returncode == 1 and "Ray is not running" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1 and time.monotonic() - t0 < 30


def test_the_orchestrator_reserves_and_an_app_runs_ray_tasks_inside(ray_cluster, tmp_path):
    import asyncio

    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from distributed_grid.orchestration.resource_sharing_orchestrator import ResourceSharingOrchestrator

    with _mesh(tmp_path, ray_cluster, 1.0) as mesh:
        async def main():
            async with ResourceSharingOrchestrator(mesh.config_path) as orch:
                res = await orch.request_resources("node1", "memory", "256MiB", priority="high")
                listed = [r.id for r in await orch.get_reservations()]
                pg = await orch.placement_group(res.id)
                cpu = await orch.request_resources("node1", "cpu", 1)
                return res, listed, pg, cpu

        res, listed, pg, cpu = asyncio.run(main())
        assert res.id in listed and cpu.resource == "cpu"
        assert res.source == "node1" and res.amount == 256 * MiB and res.priority == "high"
        assert all(t != "node1" for t, _ in res.targets)

        @ray.remote(num_cpus=0, memory=64 * MiB)
        def where() -> str:
            return ray.get_runtime_context().get_node_id()

        node_id = ray.get(where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=0)).remote(), timeout=60)
        assert node_of(node_id) == res.targets[0][0]  # ran inside the reservation's node

        async def release():
            async with ResourceSharingOrchestrator(mesh.config_path) as orch:
                await orch.release_resources(res.id)
                await orch.release_resources(cpu.id)

        asyncio.run(release())
        assert mesh_groups() == {}
