"""Reservations through Ray placement groups, and ``grid resource-sharing``.

The pure parts are tested in ``tests/unit/test_reservations.py``. Here, the real thing: three
real agents and a real Ray
cluster on loopback (``tests/support/raycluster.py``: a head and one raylet per mesh node), every
command a separate ``grid`` process, and the placement group table read from this process
(a Ray driver) after each step. Each Ray test removes whatever reservation it leaves behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.mesh import ROOT, free_port_pair, running_mesh
from mesh.config import load_cluster_config
from mesh.errors import (
    NoRayNode,
    ReservationFailed,
    ReservationNotFound,
)
from mesh.balance.reservations import ray_start_args

GRID = Path(sys.executable).parent / "grid"
MiB = 1024**2
GiB = 1024**3
ray_test = pytest.mark.xdist_group("ray")


def test_grid_and_the_agents_do_not_import_ray():
    code = ("import sys, mesh.cli, mesh.cli.sharing, mesh.balance.placement, agents.main, agents.server;"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_ray_installed_the_commands_say_how_to_install_it(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "nodes": [{"name": "n1", "host": "127.0.0.1"}]}))
    code = ("import sys; sys.modules['ray'] = None; sys.argv[0] = 'grid';"
            "from mesh.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, "resource-sharing", "status", "-c",
                           str(cfg)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "✗ reservations need Ray, which is not installed here "
        "(`pip install 'memory-mesh[placement]'`)"]


# --- the grid command line ----------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float


def grid(config: Path, *args: str, timeout: float = 60) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in ("GRID_CONFIG", "RAY_ADDRESS")}
    env["COLUMNS"] = "200"
    started = time.monotonic()
    p = subprocess.run([str(GRID), "resource-sharing", *args, "-c", str(config)],
                       capture_output=True, text=True, env=env, cwd=config.parent,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - started)


def ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\nstdout: {run.out}\nstderr: {run.err}"
    assert run.err == "", run.err  # nothing from Ray either
    return run


def one_error(run: Run, *needles: str) -> str:
    """Exit 1, exactly one red line on stderr containing every needle, nothing on stdout."""
    assert run.code == 1, f"exit {run.code}\nstdout: {run.out}\nstderr: {run.err}"
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    if lines[0].startswith("{"):  # --json: one JSON object (tests/integration/test_cli_json.py)
        message = json.loads(lines[0])["error"]["message"]
    else:
        assert lines[0].startswith("✗ "), run.err
        message = lines[0]
    for needle in needles:
        assert needle in message, lines[0]
    assert run.out == "", run.out
    return lines[0]


def field(run: Run, name: str) -> str:
    m = re.search(rf"^{name}: (.+)$", run.out, re.M)
    assert m, run.out
    return m.group(1).strip()


def write_config(src: Path, dest: Path, **sections) -> Path:
    data = yaml.safe_load(src.read_text())
    data.update(sections)
    dest.write_text(yaml.safe_dump(data))
    return dest


def test_user_mistakes_end_in_one_line_before_ray_is_asked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "nodes": [
        {"name": "n1", "host": "127.0.0.1"}], "ray": {"address": "127.0.0.1:1"}}))
    one_error(grid(cfg, "request", "-n", "nope", "-t", "cpu", "-a", "1"),
              "unknown node 'nope'", "known: n1")
    one_error(grid(cfg, "request", "-n", "n1", "-t", "cpu", "-a", "lots"),
              "--amount: expected a number of CPUs, got 'lots'")
    one_error(grid(cfg, "request", "-n", "n1", "-t", "gpu", "-a", "-1"), "GPUs > 0")
    one_error(grid(cfg, "request", "-n", "n1", "-t", "memory", "-a", "0"), "more than 0")
    one_error(grid(cfg, "request", "-n", "n1", "-t", "memory", "-a", "3 parsecs"), "unknown unit")
    bad_type = grid(cfg, "request", "-n", "n1", "-t", "disk", "-a", "1")
    assert bad_type.code == 2 and "Traceback" not in bad_type.err  # click's usage error
    off = write_config(cfg, tmp_path / "off.yaml",
                       execution={"resource_sharing": {"enabled": False}})
    one_error(grid(off, "request", "-n", "n1", "-t", "cpu", "-a", "1"),
              "resource sharing is disabled")


def test_without_ray_running_every_command_says_so_in_one_line_quickly(tmp_path):
    port = free_port_pair("127.0.0.1")  # nobody listens there
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "nodes": [
        {"name": "n1", "host": "127.0.0.1"}, {"name": "n2", "host": "127.0.0.2"}],
        "ray": {"address": f"127.0.0.1:{port}"}}))
    for args in (["request", "-n", "n1", "-t", "memory", "-a", "1"],
                 ["request", "-n", "n1", "-t", "cpu", "-a", "1"],
                 ["status"], ["status", "--json"], ["release", "alloc_1_n1_abcd"]):
        run = grid(cfg, *args, timeout=30)
        one_error(run, f"Ray is not running at 127.0.0.1:{port}", "ray start --head")
        assert run.seconds < 10, f"{args} took {run.seconds:.1f} s"


# --- against a real Ray cluster and real agents -------------------------------------------------


@pytest.fixture(scope="module")
def mesh(ray_cluster, tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("placement"),
                      extra={"ray": {"address": ray_cluster}}) as local:
        yield local


@pytest.fixture
def table(ray_cluster):
    """Reads the placement group table; after the test, removes what the test left behind."""
    from support.raycluster import mesh_groups, remove_mesh_groups

    assert mesh_groups() == {}, "a reservation from an earlier test is still there"
    yield mesh_groups
    remove_mesh_groups()


def group_of(groups: dict[str, dict], reservation_id: str) -> tuple[str, dict]:
    found = [(pg_id, e) for pg_id, e in groups.items()
             if json.loads(e["name"][5:])["id"] == reservation_id]
    assert len(found) == 1, groups
    return found[0]


def pinned_nodes(entry: dict) -> list[str | None]:
    """The mesh node each bundle landed on, by the raylet Ray put it on."""
    from support.raycluster import node_of

    b2n = entry["bundles_to_node_id"]
    return [node_of(b2n[i]) for i in sorted(b2n)]


@ray_test
def test_request_status_release_memory(mesh, table):
    cfg = mesh.config_path
    run = ok(grid(cfg, "request", "--node", "node1", "--type", "memory", "--amount", "0.5",
                  "--priority", "high"))
    assert run.out.splitlines()[0] == "✓ Reserved 512.00 MiB of memory for node1 (priority high)"
    rid = field(run, "Allocation ID")
    assert re.fullmatch(r"alloc_\d{10}_node1_[0-9a-f]{4}", rid)
    assert re.search(r"^Expires: in (9m 5\ds|10m 0s) \(", run.out, re.M), run.out

    pg_id, entry = group_of(table(), rid)
    assert entry["state"] == "CREATED" and entry["strategy"] == "PACK"
    meta = json.loads(entry["name"][len("mesh:"):])
    assert (meta["source"], meta["resource"], meta["amount"], meta["priority"], meta["kind"]) == \
        ("node1", "memory", 512 * MiB, "high", "request")
    assert round(meta["expires"] - meta["created"]) == 600  # allocation_timeout_minutes default
    [target] = pinned_nodes(entry)
    assert target in ("node2", "node3")
    assert entry["bundles"][0] == {f"mesh_node:{target}": 0.001, "memory": float(512 * MiB)}
    assert meta["targets"] == [[target, 512 * MiB]]
    assert f"Target: {target}  512.00 MiB  (Ray node {entry['bundles_to_node_id'][0][:8]})" in run.out

    status = ok(grid(cfg, "status"))
    row = next(line for line in status.out.splitlines() if rid in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:6] == [rid, "node1", target, "MEMORY", "512.00 MiB", "high"]
    assert re.fullmatch(r"\d+s", cells[6]) and re.fullmatch(r"9m \d+s|10m 0s", cells[7]), cells
    assert "Sharing Enabled: Yes" in status.out and "3 of 3 mesh nodes have a Ray node" in status.out
    assert "Released" not in status.out
    nodes = {c[0]: c for c in (
        [x.strip() for x in line.strip("│ ").split("│")] for line in status.out.splitlines()
        if re.match(r"│ node\d ", line))}
    assert set(nodes) == {"node1", "node2", "node3"}
    for name, c in nodes.items():
        assert c[1] == "alive" and c[2] == "0 B / 1.00 GiB" and c[7] == "yes", c
        assert 0.1 <= float(c[3]) <= 1.0
        assert c[6] == ("512.00 MiB" if name == target else "-"), c

    doc = json.loads(ok(grid(cfg, "status", "--json")).out)
    [res] = doc["reservations"]
    assert res["id"] == rid and res["pg_id"] == pg_id and res["state"] == "CREATED"
    assert 0 <= res["age_s"] < 30 and 570 < res["expires_in_s"] <= 600
    assert {n["node"] for n in doc["nodes"]} == {"node1", "node2", "node3"}

    rel = ok(grid(cfg, "release", rid))
    assert rel.out.strip() == f"✓ Released {rid}: 512.00 MiB of memory on {target}"
    from ray.util.placement_group import placement_group_table

    assert placement_group_table()[pg_id]["state"] == "REMOVED"
    assert table() == {}
    assert "No active allocations" in ok(grid(cfg, "status")).out
    one_error(grid(cfg, "release", rid), f"no reservation {rid}", "grid resource-sharing status")


@ray_test
def test_memory_spreads_over_the_workers_with_most_room_never_the_source(mesh, table):
    run = ok(grid(mesh.config_path, "request", "-n", "node2", "-t", "memory", "-a", "1536MiB"))
    _, entry = group_of(table(), field(run, "Allocation ID"))
    targets = pinned_nodes(entry)
    assert sorted(targets) == ["node1", "node3"]
    amounts = sorted(b["memory"] for b in entry["bundles"].values())
    assert amounts == [512 * MiB, 1024 * MiB]  # the first node's whole room, then the rest
    assert run.out.count("Target: ") == 2


@ray_test
def test_more_memory_than_the_workers_have_is_one_line_and_no_group(mesh, table):
    line = one_error(grid(mesh.config_path, "request", "-n", "node1", "-t", "memory",
                          "-a", "100"),
                     "cannot reserve 100.00 GiB of memory", "other than node1",
                     "2.00 GiB free in total")
    assert "\n" not in line
    assert table() == {}


@ray_test
def test_cpu_request_and_release(mesh, table):
    cfg = mesh.config_path
    run = ok(grid(cfg, "request", "-n", "node3", "-t", "cpu", "-a", "2", "-p", "low"))
    assert run.out.splitlines()[0] == "✓ Reserved 2 CPUs for node3 (priority low)"
    rid = field(run, "Allocation ID")
    _, entry = group_of(table(), rid)
    assert sorted(pinned_nodes(entry)) == ["node1", "node2"]
    assert all(b["CPU"] == 1.0 for b in entry["bundles"].values())
    # every CPU but node3's is now reserved
    one_error(grid(cfg, "request", "-n", "node3", "-t", "cpu", "-a", "0.5"),
              "cannot reserve 0.5 CPUs", "0 free in total")
    assert "CPU" in ok(grid(cfg, "status")).out
    assert ok(grid(cfg, "release", rid)).out.strip() == f"✓ Released {rid}: 2 CPUs on " + \
        ", ".join(t for t, _ in json.loads(entry["name"][5:])["targets"])
    assert table() == {}


@ray_test
def test_expired_reservations_are_released_by_status(mesh, table, tmp_path):
    cfg = write_config(mesh.config_path, tmp_path / "expiring.yaml",
                       execution={"resource_sharing": {"allocation_timeout_minutes": 0.02}})
    run = ok(grid(cfg, "request", "-n", "node1", "-t", "memory", "-a", "64MiB"))
    rid = field(run, "Allocation ID")
    _, entry = group_of(table(), rid)
    meta = json.loads(entry["name"][5:])
    assert abs(meta["expires"] - meta["created"] - 1.2) < 0.01
    time.sleep(max(0.0, meta["expires"] - time.time()) + 0.3)
    status = ok(grid(cfg, "status"))
    assert f"Released 1 expired reservation: {rid}" in status.out
    assert "No active allocations" in status.out
    assert table() == {}


@ray_test
def test_status_without_agents_still_lists_reservations(mesh, table, tmp_path):
    data = yaml.safe_load(mesh.config_path.read_text())
    for node in data["nodes"]:  # the same names, but nobody listens there
        node["mesh_port"] = free_port_pair(node["host"])
    data["mesh"]["connect_timeout_s"] = 0.5
    cfg = tmp_path / "no-agents.yaml"
    cfg.write_text(yaml.safe_dump(data))
    rid = field(ok(grid(cfg, "request", "-n", "node1", "-t", "cpu", "-a", "1")), "Allocation ID")
    status = ok(grid(cfg, "status"))
    assert rid in status.out
    notes = [line for line in status.out.splitlines() if "unavailable" in line]
    assert len(notes) == 1 and notes[0].startswith("Node utilisation unavailable: "), status.out
    assert "Node Utilization" not in status.out
    # memory needs the agents' room: that request says so in one line
    one_error(grid(cfg, "request", "-n", "node1", "-t", "memory", "-a", "0.1"), "agent")
    ok(grid(cfg, "release", rid))
    assert table() == {}


@ray_test
def test_unplaceable_bundles_fail_and_leave_no_group(mesh, table):
    from ray.util.placement_group import placement_group_table

    from mesh.balance.placement import Placement

    config = load_cluster_config(mesh.config_path)
    with Placement(config) as placement:
        before = set(placement_group_table())
        with pytest.raises(ReservationFailed) as e:
            placement.reserve("node1", "cpu", [("node2", 1), ("node3", 5)], timeout_s=1.0)
        assert "Ray could not place" in str(e.value) and "5 CPUs on node3" in str(e.value)
        assert "nothing was reserved" in str(e.value) and "\n" not in str(e.value)
        [new] = set(placement_group_table()) - before
        assert placement_group_table()[new]["state"] == "REMOVED"
        assert placement.reservations() == [] and table() == {}
        with pytest.raises(ReservationNotFound):
            placement.release("alloc_1_node1_0000")


@ray_test
def test_a_node_no_raylet_stands_for_is_refused_with_the_start_line(mesh, table, tmp_path):
    from mesh.balance.placement import Placement

    data = yaml.safe_load(mesh.config_path.read_text())
    data["nodes"].append({"name": "node4", "host": "127.0.0.1", "mesh_port": 7790})
    cfg = tmp_path / "four.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with Placement(load_cluster_config(cfg)) as placement:
        assert set(placement.ray_nodes()) == {"node1", "node2", "node3"}  # 127.0.0.1 is shared
        with pytest.raises(NoRayNode) as e:
            placement.reserve("node1", "memory", [("node4", 1 * MiB)])
    assert ray_start_args("node4") in str(e.value) and "ray start --address=" in str(e.value)
    assert table() == {}


@ray_test
def test_an_app_runs_its_ray_tasks_inside_a_reservation(mesh, table, tmp_path):
    """The example in docs/placement.md, run as it is written."""
    from support.raycluster import node_of

    doc = (ROOT / "docs" / "placement.md").read_text()
    m = re.search(r"<!-- example: tasks-in-a-reservation -->\s*```python\n(.*?)```", doc, re.S)
    assert m, "the example is missing from docs/placement.md"
    app = tmp_path / "app.py"
    app.write_text(m.group(1))

    rid = field(ok(grid(mesh.config_path, "request", "-n", "node1", "-t", "memory",
                        "-a", "1536MiB")), "Allocation ID")
    _, entry = group_of(table(), rid)
    env = dict(os.environ, GRID_CONFIG=str(mesh.config_path), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(app), rid], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    targets = json.loads(entry["name"][5:])["targets"]
    assert len(lines) == len(targets) == 2
    for i, ((node, _), line) in enumerate(zip(targets, lines)):
        m = re.fullmatch(rf"bundle {i} on {node}: the task ran on Ray node ([0-9a-f]+)", line)
        assert m, line
        assert m.group(1) == entry["bundles_to_node_id"][i] and node_of(m.group(1)) == node
    ok(grid(mesh.config_path, "release", rid))
    assert table() == {}


@ray_test
def test_an_app_that_imported_ray_first_is_told_why_loopback_fails(mesh):
    """Ray rewrites 127.0.0.1 to this machine's outward IP unless told not to before import."""
    code = ("import ray, sys\n"
            "from ray._private.services import get_node_ip_address\n"
            "from mesh.config import load_cluster_config\n"
            "from mesh.errors import RayUnavailable\n"
            "from mesh.balance.placement import Placement\n"
            "if get_node_ip_address().startswith('127.'):\n"
            "    sys.exit(3)  # no outward IP: nothing to rewrite to\n"
            "try:\n"
            "    Placement(load_cluster_config(sys.argv[1])).connect()\n"
            "except RayUnavailable as exc:\n"
            "    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    done = subprocess.run([sys.executable, "-c", code, str(mesh.config_path)], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    if done.returncode == 3:
        pytest.skip("this machine has no outward IP for Ray to rewrite 127.0.0.1 to")
    assert done.returncode == 0, done.stderr
    assert "listens on loopback only" in done.stdout, done.stdout + done.stderr
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in done.stdout and "\n" not in done.stdout.strip()
