"""``grid memory`` with replicas: the real executable against three real agents on this machine.

The agents all run on one machine, so the cluster file says ``mesh.replica_spread: node`` (copies
on distinct nodes); ``--spread host`` asks for distinct machines, which this mesh cannot give.
Every call is a separate ``grid`` process; the tests share the mesh and each frees what it made.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.cli import cli_env, grid
from support.mesh import running_mesh

NODES = {"node1", "node2", "node3"}

pytestmark = pytest.mark.xdist_group("cli-replicas")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("cli-replicas"), n=3,
                      replica_spread="node") as m:
        yield m


def memory(mesh, tmp: Path, *args: str):
    return grid("memory", *args, "-c", str(mesh.config_path), env=cli_env(tmp), cwd=tmp)


def ok(run):
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr
    return run


def one_line_error(run, *needles: str) -> str:
    """Exit 1, one red line on stderr (no traceback, no usage text), nothing on stdout."""
    assert run.returncode == 1, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("✗ "), run.stderr
    assert run.stdout == "", run.stdout
    for needle in needles:
        assert needle in run.stderr, run.stderr
    return lines[0]


def listed_blocks(mesh, tmp: Path) -> dict[str, dict]:
    doc = json.loads(ok(memory(mesh, tmp, "list-blocks", "--json")).stdout)
    assert doc["failed_nodes"] == {}
    return {row["block_id"]: row for row in doc["blocks"]}


def test_allocate_two_copies_lists_both_nodes(mesh, tmp_path):
    doc = json.loads(ok(memory(mesh, tmp_path, "allocate", "1MiB", "--replicas", "2",
                               "--json")).stdout)
    block = doc["block_id"]
    try:
        assert doc["replicas"] == 2
        assert len(doc["nodes"]) == 2 and set(doc["nodes"]) <= NODES, doc
        assert len(set(doc["nodes"])) == 2 and doc["node"] == doc["nodes"][0], doc

        row = listed_blocks(mesh, tmp_path)[block]  # copies merged: one row for the block
        assert row["nodes"] == doc["nodes"] and row["node"] == doc["nodes"][0], row
        assert row["replicas"] == 2 and row["size"] == 1024**2

        table = ok(memory(mesh, tmp_path, "list-blocks")).stdout
        assert "Nodes" in table
        assert ", ".join(doc["nodes"]) in table, table
        assert table.count(block) == 1, table

        run = ok(memory(mesh, tmp_path, "allocate", "1MiB", "--replicas", "2"))
        lines = run.stdout.splitlines()
        assert lines[0] == "✓ Allocated 1.00 MiB x 2 copies", run.stdout
        other = lines[1].removeprefix("Block ID: ")
        nodes = lines[3].removeprefix("Nodes: ").split(", ")
        assert len(set(nodes)) == 2 and lines[2] == f"Node: {nodes[0]}", run.stdout
        assert lines[4].startswith("Note: some copies share a machine"), run.stdout  # one here
        assert doc["shared_hosts"] is True
        ok(memory(mesh, tmp_path, "deallocate", other))
    finally:
        ok(memory(mesh, tmp_path, "deallocate", block))
    assert block not in listed_blocks(mesh, tmp_path)


def test_a_block_without_replicas_lists_its_one_node(mesh, tmp_path):
    doc = json.loads(ok(memory(mesh, tmp_path, "allocate", "64KiB", "--node", "node3",
                               "--json")).stdout)
    try:
        assert doc["nodes"] == ["node3"] and doc["replicas"] == 1
        row = listed_blocks(mesh, tmp_path)[doc["block_id"]]
        assert row["nodes"] == ["node3"] and row["replicas"] == 1
    finally:
        ok(memory(mesh, tmp_path, "deallocate", doc["block_id"]))


def test_store_two_copies_lists_both_nodes_and_reads_back(mesh, tmp_path):
    src, back = tmp_path / "in.bin", tmp_path / "out.bin"
    data = os.urandom(3 * 1024**2 + 7)
    src.write_bytes(data)
    stored = json.loads(ok(memory(mesh, tmp_path, "store", "twice", str(src), "--replicas", "2",
                                  "--json")).stdout)
    try:
        assert len(set(stored["nodes"])) == 2 and set(stored["nodes"]) <= NODES, stored

        doc = json.loads(ok(memory(mesh, tmp_path, "list-objects", "--json")).stdout)
        mine = [o for o in doc["objects"] if o["key"] == "twice"]
        assert len(mine) == 1, mine  # one row, however many copies
        assert len(set(mine[0]["nodes"])) == 2 and set(mine[0]["nodes"]) <= NODES, mine
        assert mine[0]["length"] == len(data)

        table = ok(memory(mesh, tmp_path, "list-objects")).stdout
        assert "Nodes" in table and ", ".join(mine[0]["nodes"]) in table, table
        assert listed_blocks(mesh, tmp_path)[mine[0]["block_id"]]["nodes"] == mine[0]["nodes"]

        ok(memory(mesh, tmp_path, "retrieve", "twice", "-o", str(back)))
        assert back.read_bytes() == data
    finally:
        ok(memory(mesh, tmp_path, "delete", "twice"))


def test_store_without_replicas_lists_its_one_node(mesh, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("once\n")
    stored = json.loads(ok(memory(mesh, tmp_path, "store", "once", str(src), "--node", "node2",
                                  "--json")).stdout)
    try:
        assert stored["nodes"] == ["node2"]
        doc = json.loads(ok(memory(mesh, tmp_path, "list-objects", "--json")).stdout)
        assert next(o for o in doc["objects"] if o["key"] == "once")["nodes"] == ["node2"]
    finally:
        ok(memory(mesh, tmp_path, "delete", "once"))


def test_spread_host_on_one_machine_fails_in_one_line(mesh, tmp_path):
    before = set(listed_blocks(mesh, tmp_path))
    one_line_error(memory(mesh, tmp_path, "allocate", "1MiB", "--replicas", "2",
                          "--spread", "host"), "hosts")
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(4096))
    one_line_error(memory(mesh, tmp_path, "store", "nowhere", str(src), "--replicas", "2",
                          "--spread", "host"), "hosts")
    # nothing left behind: no block, no key
    assert set(listed_blocks(mesh, tmp_path)) == before
    one_line_error(memory(mesh, tmp_path, "retrieve", "nowhere", "-o", str(tmp_path / "x")),
                   "nowhere")


@pytest.mark.parametrize("args, needle", [
    (("allocate", "1MiB", "--replicas", "0"), "--replicas '0'"),
    (("allocate", "1MiB", "--replicas", "two"), "--replicas 'two'"),
    (("allocate", "1MiB", "--replicas", "17"), "1 to 16"),
    (("allocate", "1MiB", "--replicas", "2", "--spread", "rack"), "--spread 'rack'"),
    (("store", "k", "-", "--replicas", "0"), "--replicas '0'"),
    (("store", "k", "-", "--replicas", "2", "--block-id", "block_0_node1_x"), "--block-id"),
])
def test_bad_values_fail_in_one_line(mesh, tmp_path, args, needle):
    before = set(listed_blocks(mesh, tmp_path))
    one_line_error(memory(mesh, tmp_path, *args), needle)
    assert set(listed_blocks(mesh, tmp_path)) == before
