"""Orphans do not live forever (issue 10, defect 5), with real agents and real client processes.

A block made for a named put is pending until its key is published; when its client stops
renewing it (here: SIGKILL mid-``put_file``), its agent frees it within ``mesh.lease_s`` (2 s
here) plus a heartbeat, with no client involved. A block made with a time to live goes when it
is up; a plain ``grid memory allocate`` outlives its process, and so does a finished put."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support.mesh import ROOT, running_mesh

GRID = Path(sys.executable).parent / "grid"
LEASE_S = 2.0
GIVE_UP_S = 60.0  # only so a broken agent cannot hang the test; the bound is LEASE_S + a beat

PUTTER = textwrap.dedent("""
    import sys, time
    from mesh.client import MeshClient
    config, path = sys.argv[1], sys.argv[2]
    started = False
    def progress(n):
        global started
        if not started:
            started = True
            print("writing", flush=True)
        time.sleep(0.05)  # a slow writer: still at it when it is killed
    with MeshClient(config) as client:
        client.put_file("big-file", path, progress=progress)
    print("finished", flush=True)
""")


def _grid(config: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GRID_CONFIG"}
    run = subprocess.run([str(GRID), "memory", *args, "--json", "-c", str(config)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _wait_until_gone(client, block_id: str) -> None:
    deadline = time.monotonic() + GIVE_UP_S
    while block_id in {b.block_id for b in client.blocks()}:
        assert time.monotonic() < deadline, f"{block_id} was never reclaimed"
        time.sleep(0.2)


def test_a_killed_put_leaves_nothing_and_plain_blocks_stay(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    with running_mesh(tmp_path, n=2, lease_s=LEASE_S) as mesh:
        plain = _grid(mesh.config_path, "allocate", "4096")["block_id"]  # its process is gone
        with mesh.client() as client:
            kept = client.put_bytes("kept", b"published puts stay")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        child = subprocess.Popen([sys.executable, "-c", PUTTER, str(mesh.config_path), str(big)],
                                 stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert child.stdout.readline().strip() == "writing"
            with mesh.client() as client:
                pending = [b for b in client.blocks() if b.pending]
                assert [b.size for b in pending] == [256 * 1024 * 1024]
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            child.stdout.close()
        with mesh.client() as client:
            _wait_until_gone(client, pending[0].block_id)
            left = {b.block_id for b in client.blocks()}
            assert left == {plain, kept.block_id}  # only the orphan went
            assert [k.key for k in client.keys()] == ["kept"]
            assert client.get_bytes("kept") == b"published puts stay"
            stats = client.stats()
            assert stats["total_used"] - 4096 - kept.length < 64 * 1024  # ~the key record


def test_a_block_with_a_ttl_goes_when_it_is_up(tmp_path):
    with running_mesh(tmp_path, n=1, lease_s=LEASE_S) as mesh:
        made = _grid(mesh.config_path, "allocate", "4096", "--ttl", "1s")
        assert made["expires"] is not None
        listed = _grid(mesh.config_path, "list-blocks")["blocks"]
        assert [r["expires"] for r in listed] == [made["expires"]]
        with mesh.client() as client:
            forever = client.allocate(4096)
            brief = client.allocate(4096, ttl_s=0.5)
            assert client.stat(brief).expires is not None and client.stat(forever).expires is None
            _wait_until_gone(client, made["block_id"])
            _wait_until_gone(client, brief)
            assert [b.block_id for b in client.blocks()] == [forever]


def test_a_move_keeps_a_blocks_lease_and_time_to_live(tmp_path):
    """A pending block moved to another node stays pending there (an orphan is reclaimed all the
    same), and a block with a time to live keeps what it has left: a move never makes a block
    permanent."""
    with running_mesh(tmp_path, n=2, lease_s=LEASE_S) as mesh:
        with mesh.client() as client:
            brief = client.allocate(4096, node="node1", ttl_s=3.0)
            expires = client.stat(brief).expires
            orphan = client._run(client._core.allocate(4096, "node1", pending=True))
            forever = client.allocate(4096, node="node1")
            for block in (brief, orphan, forever):
                client.move(block, "node2")
            moved = client.stat(brief)
            assert moved.node == "node2" and abs(moved.expires - expires) < 0.5
            _wait_until_gone(client, orphan)
            _wait_until_gone(client, brief)
            assert [(b.block_id, b.node) for b in client.blocks()] == [(forever, "node2")]
