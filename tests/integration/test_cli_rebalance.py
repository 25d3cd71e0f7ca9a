"""`grid rebalance` and `grid agents drain` without Ray (--no-ray, --dry-run): real agents, the
real `grid` executable, real pressure from a ballast of blocks on a node with a small share.
The Ray-backed runs are in tests/integration/test_rebalance_ray.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from support.mesh import LocalMesh, running_mesh

GRID = Path(sys.executable).parent / "grid"
MiB = 1 << 20


def grid(*args: str, config: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRID_CONFIG"}
    env["COLUMNS"] = "200"
    return subprocess.run([str(GRID), *args, "-c", str(config)], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def small_mesh(tmp_path):
    """Three agents with a 256 MiB share each."""
    with running_mesh(tmp_path, memory_gb=0.25) as mesh:
        yield mesh


def _ballast(mesh: LocalMesh, node: str, count: int, size: int = 20 * MiB) -> dict[str, bytes]:
    blocks = {}
    with mesh.client() as c:
        for i in range(count):
            block = c.allocate(size, node=node)
            data = bytes([i + 1]) * size
            c.write(block, data)
            blocks[block] = data
    return blocks


@contextlib.contextmanager
def _watching(mesh: LocalMesh, interval: str) -> Iterator[subprocess.Popen]:
    """`grid rebalance --watch --no-ray` running in the background; killed if still running."""
    env = {k: v for k, v in os.environ.items() if k != "GRID_CONFIG"}
    proc = subprocess.Popen([str(GRID), "rebalance", "--watch", "--no-ray", "--interval",
                             interval, "-c", str(mesh.config_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _interrupt(proc: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C, as a person stops a watch; its output."""
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=30)


def _where(mesh: LocalMesh) -> dict[str, str]:
    with mesh.client() as c:
        return {b.block_id: b.node for b in c.blocks()}


def test_rebalance_without_ray_relieves_the_hot_node_and_keeps_every_byte(small_mesh):
    blocks = _ballast(small_mesh, "node1", 12)  # 240 of 256 MiB: score 1.0
    dry = grid("rebalance", "--dry-run", config=small_mesh.config_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would move") == 4 and "node1" in dry.stdout
    assert set(_where(small_mesh).values()) == {"node1"}  # a dry run moves nothing

    run = grid("rebalance", "--no-ray", config=small_mesh.config_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("✓ moved") == 4
    where = _where(small_mesh)
    assert sum(1 for n in where.values() if n == "node1") == 8  # 160 MiB: 62 %, under low
    assert {n for n in where.values()} == {"node1", "node2", "node3"}
    with small_mesh.client() as fresh:
        for block, data in blocks.items():
            assert fresh.read(block) == data

    again = grid("rebalance", "--no-ray", config=small_mesh.config_path)
    assert again.returncode == 0 and "nothing to move" in again.stdout


def test_drain_moves_every_block_and_names_what_could_not_go(small_mesh):
    blocks = _ballast(small_mesh, "node2", 5)
    run = grid("agents", "drain", "node2", "--no-ray", config=small_mesh.config_path)
    assert run.returncode == 0, run.stderr
    assert "node2 holds no blocks now (5 moved)" in run.stdout
    assert "node2" not in set(_where(small_mesh).values())
    with small_mesh.client() as fresh:
        for block, data in blocks.items():
            assert fresh.read(block) == data

    # more than the other two nodes can take: what fits moves, the rest stays, exit 1
    _ballast(small_mesh, "node1", 3)  # node1 and node3 keep under 200 MiB of room each
    _ballast(small_mesh, "node3", 3)
    big = _ballast(small_mesh, "node2", 1, size=200 * MiB)
    small = _ballast(small_mesh, "node2", 1, size=10 * MiB)
    run = grid("agents", "drain", "node2", "--no-ray", config=small_mesh.config_path)
    assert run.returncode == 1
    assert "no node has room for" in run.stderr and "1 block(s) are still on node2" in run.stderr
    where = _where(small_mesh)
    assert [b for b, n in where.items() if n == "node2"] == list(big)
    assert where[next(iter(small))] != "node2"


def test_user_mistakes_are_one_line(small_mesh):
    for args, message in [
        (("agents", "drain", "nope", "--no-ray"), "unknown node 'nope'"),
        (("rebalance", "--watch", "--interval", "0"), "--interval must be > 0"),
    ]:
        run = grid(*args, config=small_mesh.config_path)
        assert run.returncode == 1, run
        assert message in run.stderr and "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


def test_watch_runs_passes_and_stops_on_its_own_or_on_a_signal(small_mesh):
    run = grid("rebalance", "--watch", "--no-ray", "--interval", "0.2", "--passes", "3",
               config=small_mesh.config_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("Memory pressure") == 3

    with _watching(small_mesh, "0.2") as proc:
        # a block put on a hot node while it watches is moved by a later pass
        time.sleep(1.5)
        blocks = _ballast(small_mesh, "node3", 12)
        deadline = time.monotonic() + 30
        # moves may start while the ballast is still being written (node3 crosses 84 % at its
        # 11th block); in the end node3 must be back under the high threshold (<= 10 blocks)
        while True:
            on3 = sum(1 for b, n in _where(small_mesh).items() if n == "node3" and b in blocks)
            if on3 < len(blocks) and on3 <= 10:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                out, err = proc.communicate(timeout=30)
                pytest.fail(f"the watch never moved the ballast:\n{out}\n{err}")
            time.sleep(0.2)
        out, err = _interrupt(proc)
    assert proc.returncode == 0, err
    assert "✓ moved" in out and "Traceback" not in err


def test_a_watch_outlives_a_pass_that_fails(small_mesh):
    with _watching(small_mesh, "0.3") as proc:
        time.sleep(1.0)
        small_mesh.stop_all()  # every agent gone: passes fail (3 s connect timeout), it goes on
        time.sleep(7.0)
        assert proc.poll() is None, proc.communicate()
        for agent in small_mesh.nodes:
            small_mesh.start(agent.name, wait=False)
        for agent in small_mesh.nodes:
            small_mesh.wait_ready(agent)
        time.sleep(1.5)
        out, err = _interrupt(proc)
    assert proc.returncode == 0, err
    assert "stopped: no mesh agent answered" in err and "Traceback" not in err
    assert out.count("Memory pressure") >= 2  # before and after the agents were away
