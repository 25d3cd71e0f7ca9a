"""Reservations through Ray placement groups, and ``grid resource-sharing``.

Pure parts first (``split_amount``, reservation names, which Ray node is which mesh node, the
request's candidates), with no Ray. Then the real thing: three real agents and a real Ray
cluster on loopback (``tests/raycluster.py``: a head and one raylet per mesh node), every
command a separate ``grid`` process, and the placement group table read from this process
(a Ray driver) after each step. Each Ray test removes whatever reservation it leaves behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port_pair, running_mesh
from mesh.config import load_cluster_config, parse_config
from mesh.errors import (
    CapacityError,
    InvalidRequest,
    NoRayNode,
    ReservationFailed,
    ReservationNotFound,
)
from mesh.placement import (
    Reservation,
    available_from_pgs,
    check_request,
    map_ray_nodes,
    ray_start_args,
    reservations_from_table,
    split_amount,
)

pytest_plugins = ["raycluster"]

GRID = Path(sys.executable).parent / "grid"
MiB = 1024**2
GiB = 1024**3
ray_test = pytest.mark.xdist_group("ray")


# --- split_amount -------------------------------------------------------------------------------


def test_split_takes_most_room_first_in_as_few_pieces_as_possible():
    rooms = [("a", 2 * GiB), ("b", 5 * GiB), ("c", 3 * GiB)]
    assert split_amount(4 * GiB, rooms, "x") == [("b", 4 * GiB)]
    assert split_amount(7 * GiB, rooms, "x") == [("b", 5 * GiB), ("c", 2 * GiB)]
    assert split_amount(10 * GiB, rooms, "x") == [("b", 5 * GiB), ("c", 3 * GiB), ("a", 2 * GiB)]
    # ties keep the given order
    assert split_amount(1, [("p", 1), ("q", 1)], "x") == [("p", 1)]


def test_split_skips_the_excluded_node_and_nodes_without_room():
    rooms = [("master", 100), ("a", 0), ("b", -5), ("c", 3), ("d", 2)]
    assert split_amount(4, rooms, exclude="master") == [("c", 3), ("d", 1)]
    assert all(isinstance(a, int) for _, a in split_amount(4, rooms, "master"))


def test_split_of_fractions_leaves_no_crumbs():
    assert split_amount(1.5, [("a", 1.0), ("b", 1.0)], "x") == [("a", 1.0), ("b", 0.5)]
    pieces = split_amount(0.3, [("a", 0.1), ("b", 0.1), ("c", 0.1)], "x")
    assert len(pieces) == 3 and abs(sum(a for _, a in pieces) - 0.3) < 1e-9


def test_split_short_of_room_says_how_much_is_free_in_total():
    with pytest.raises(CapacityError) as e:
        split_amount(10 * GiB, [("a", 2 * GiB), ("b", 3 * GiB), ("m", 50 * GiB)], "m",
                     resource="memory")
    assert str(e.value) == ("cannot reserve 10.00 GiB of memory: the nodes other than m have "
                            "5.00 GiB free in total")
    with pytest.raises(CapacityError, match="3 CPUs: .* have 2 free in total"):
        split_amount(3, [("a", 1), ("b", 1)], "m", resource="cpu")
    with pytest.raises(CapacityError, match="have 0 free"):
        split_amount(1, [], "m")


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "1"])
def test_split_refuses_amounts_that_are_not_positive_numbers(bad):
    with pytest.raises(InvalidRequest):
        split_amount(bad, [("a", 10)], "m")


# --- reservations and their names ---------------------------------------------------------------


def _res(**kw) -> Reservation:
    base = dict(id="alloc_1700000000_gpu-master_ab12", source="gpu-master",
                targets=(("gpu1", 6 * GiB), ("gpu2", 4 * GiB)), resource="memory",
                amount=10 * GiB, priority="high", created=1700000000.5, expires=1700000600.5)
    base.update(kw)
    return Reservation(**base)


def test_reservation_name_round_trips_and_is_compact_json():
    r = _res()
    name = r.pg_name()
    assert name.startswith("mesh:{") and " " not in name
    assert json.loads(name[5:])["targets"] == [["gpu1", 6 * GiB], ["gpu2", 4 * GiB]]
    back = Reservation.from_pg_name(name, "ab" * 18, "CREATED")
    assert back == Reservation(**{**r.__dict__, "pg_id": "ab" * 18, "state": "CREATED"})
    block = _res(kind="block", block="block_3_gpu1", expires=None)
    assert Reservation.from_pg_name(block.pg_name()).block == "block_3_gpu1"


@pytest.mark.parametrize("name", [
    "mesh:", "mesh:not json", "mesh:[1,2]", 'mesh:{"id":"x"}', "other:{}",
    'mesh:{"id":"a","source":"s","targets":[],"resource":"memory","amount":1}',
    'mesh:{"id":"a","source":"s","targets":[["n",1]],"resource":"disk","amount":1}',
    'mesh:{"id":"a","source":"s","targets":[["n",1]],"resource":"cpu","amount":"1"}',
])
def test_unparseable_names_are_refused(name):
    with pytest.raises(ValueError):
        Reservation.from_pg_name(name)


def test_reservations_from_the_table_skip_removed_foreign_and_unparseable_groups():
    old, new = _res(id="alloc_1_a_0001", created=1.0), _res(id="alloc_2_a_0002", created=2.0)
    table = {
        "p2": {"placement_group_id": "p2", "name": new.pg_name(), "state": "CREATED",
               "bundles_to_node_id": {1: "n2", 0: "n1"}},
        "p1": {"placement_group_id": "p1", "name": old.pg_name(), "state": "PENDING",
               "bundles_to_node_id": {0: "", 1: ""}},
        "p3": {"placement_group_id": "p3", "name": old.pg_name(), "state": "REMOVED"},
        "p4": {"placement_group_id": "p4", "name": "someone-else", "state": "CREATED"},
        "p5": {"placement_group_id": "p5", "name": "mesh:{broken", "state": "CREATED"},
    }
    found = reservations_from_table(table)
    assert [(r.id, r.pg_id, r.state) for r in found] == [
        ("alloc_1_a_0001", "p1", "PENDING"), ("alloc_2_a_0002", "p2", "CREATED")]
    assert found[1].bundle_nodes == ("n1", "n2")


def test_age_and_expiry():
    r = _res(created=100.0, expires=160.0)
    assert r.age_s(130.0) == 30.0 and r.expires_in_s(130.0) == 30.0
    assert not r.expired(159.9) and r.expired(160.0)
    assert not _res(expires=None).expired(1e12)


def test_requests_ray_should_never_see_are_refused_in_one_line():
    ok = [("n2", 1.0)]
    for args, needle in [
        (("disk", ok, "normal", "request"), "unknown resource type 'disk'"),
        (("cpu", ok, "urgent", "request"), "unknown priority"),
        (("cpu", ok, "normal", "other"), "unknown reservation kind"),
        (("cpu", [], "normal", "request"), "at least one target"),
        (("cpu", [("n2", 0)], "normal", "request"), "on n2 must be a number > 0"),
        (("gpu", [("n2", -1)], "normal", "request"), "must be a number > 0"),
        (("memory", [("n2", 0.2)], "normal", "request"), "at least one byte"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            check_request(*args)
        assert needle in str(e.value) and "\n" not in str(e.value)


# --- which Ray node stands for which mesh node --------------------------------------------------


def _ray_node(node_id: str, ip: str, alive: bool = True, **resources: float) -> dict:
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": ip,
            "Resources": {"CPU": 1.0, f"node:{ip}": 1.0, **resources}}


def test_ray_start_args_is_the_resources_flag():
    assert ray_start_args("gpu1") == """--resources='{"mesh_node:gpu1": 1}'"""


def test_mapping_prefers_the_custom_resource_then_a_unique_ip():
    nodes = [
        _ray_node("r1", "10.0.0.1", **{"mesh_node:gpu1": 1.0}),
        _ray_node("r2", "10.0.0.2"),
        _ray_node("r3", "10.0.0.3"), _ray_node("r3b", "10.0.0.3"),  # two raylets, one IP
        _ray_node("r4", "10.0.0.4", alive=False),
        _ray_node("r5", "10.0.0.5", **{"mesh_node:other": 1.0}),  # stands for someone else
        # node:10.0.0.6 would match the head too: no unique pin on a shared IP
        _ray_node("r6", "10.0.0.6", **{"mesh_node:gpu8": 1.0}), _ray_node("head", "10.0.0.6"),
    ]
    hosts = {"gpu1": "10.0.0.9", "gpu2": "10.0.0.2", "gpu3": "10.0.0.3", "gpu4": "10.0.0.4",
             "gpu5": "10.0.0.5", "gpu6": "no-such-host.invalid", "gpu7": "10.0.0.6"}

    def resolve(host: str) -> str:
        if host.endswith(".invalid"):
            raise socket.gaierror("unknown host")
        return host

    m = map_ray_nodes(hosts.items(), nodes, resolve=resolve,
                      available={"r2": {"CPU": 0.5}})
    assert set(m) == {"gpu1", "gpu2"}
    assert m["gpu1"]["pin"] == "mesh_node:gpu1" and m["gpu1"]["node_id"] == "r1"
    assert m["gpu2"]["pin"] == "node:10.0.0.2" and m["gpu2"]["available"] == {"CPU": 0.5}
    assert m["gpu1"]["available"] == m["gpu1"]["total"]  # no availability given: the totals


def test_available_from_placement_groups_subtracts_their_bundles():
    totals = {"r1": {"CPU": 4.0, "memory": 8.0}, "r2": {"CPU": 2.0}}
    table = {
        "a": {"state": "CREATED", "bundles": {0: {"CPU": 1.0, "memory": 3.0}, 1: {"CPU": 2.0}},
              "bundles_to_node_id": {0: "r1", 1: "r2"}},
        "b": {"state": "REMOVED", "bundles": {0: {"CPU": 3.0}}, "bundles_to_node_id": {0: "r1"}},
        "c": {"state": "PENDING", "bundles": {0: {"CPU": 1.0}}, "bundles_to_node_id": {0: ""}},
    }
    assert available_from_pgs(totals, table) == {"r1": {"CPU": 3.0, "memory": 5.0},
                                                 "r2": {"CPU": 0.0}}


# --- which nodes a request may use --------------------------------------------------------------


def _config(**sharing) -> object:
    nodes = [{"name": "master", "host": "10.0.0.1", "role": "master"}]
    for i, name in enumerate(("w1", "w2", "w3"), start=2):
        node = {"name": name, "host": f"10.0.0.{i}"}
        if name in sharing:
            node["resource_sharing"] = sharing[name]
        nodes.append(node)
    return parse_config({"name": "c", "nodes": nodes}, "<test>")


def _stats(**rooms) -> list[dict]:
    return [{"node": n, "state": "alive", "room": r, "used": u, "capacity": r + u}
            for n, (r, u) in rooms.items()]


def _mapped(*names: str, memory: float = 100 * GiB, cpu: float = 4.0) -> dict[str, dict]:
    return {n: {"node_id": n.upper(), "alive": True,
                "available": {"memory": memory, "CPU": cpu}} for n in names}


def test_memory_candidates_respect_sharing_limits_ray_and_other_requests():
    from mesh.placement import candidates

    cfg = _config(w1={"can_share": False}, w2={"max_share_memory_gb": 4})
    stats = _stats(master=(50 * GiB, 0), w1=(8 * GiB, 0), w2=(8 * GiB, 1 * GiB),
                   w3=(8 * GiB, 0))
    held = [_res(source="master", targets=(("w3", 2 * GiB),), amount=2 * GiB),
            _res(kind="block", block="b", targets=(("w2", 1 * GiB),), amount=1 * GiB)]
    rooms, unmapped = candidates(cfg, "memory", stats, _mapped("master", "w1", "w2", "w3"),
                                 held, exclude="master")
    # w1 does not share; w2: 4 GiB limit less 1 GiB of blocks; w3: 8 GiB less a 2 GiB request
    assert rooms == [("w2", 3 * GiB), ("w3", 6 * GiB)] and unmapped == []

    rooms, _ = candidates(cfg, "memory", stats, _mapped("w2", "w3", memory=1 * GiB), [], "master")
    assert rooms == [("w2", 1 * GiB), ("w3", 1 * GiB)]  # Ray's free memory caps it

    rooms, unmapped = candidates(cfg, "memory", stats, _mapped("w2"), [], "master")
    assert rooms == [("w2", 3 * GiB)] and unmapped == ["w3"]


def test_cpu_candidates_come_from_ray_within_max_share_cpu():
    from mesh.placement import candidates

    cfg = _config(w2={"max_share_cpu": 3})
    held = [_res(resource="cpu", targets=(("w2", 2.0),), amount=2.0)]
    rooms, _ = candidates(cfg, "cpu", None, _mapped("master", "w1", "w2", cpu=4.0), held, "w1")
    assert rooms == [("master", 4.0), ("w2", 1.0)]


# --- Ray stays out of processes that do not need it ---------------------------------------------


def test_grid_and_the_agents_do_not_import_ray():
    code = ("import sys, mesh.cli, mesh.cli_sharing, mesh.placement, agents.main, agents.server;"
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
    assert len(lines) == 1 and lines[0].startswith("✗ "), run.err
    for needle in needles:
        assert needle in lines[0], lines[0]
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
    from raycluster import mesh_groups, remove_mesh_groups

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
    from raycluster import node_of

    b2n = entry["bundles_to_node_id"]
    return [node_of(b2n[i]) for i in sorted(b2n)]


@ray_test
def test_request_status_release_memory(mesh, table):
    cfg = mesh.config_path
    run = ok(grid(cfg, "request", "--node", "node1", "--type", "memory", "--amount", "0.5",
                  "--priority", "high"))
    assert run.out.splitlines()[0] == "✓ Reserved 512.00 MB of memory for node1 (priority high)"
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
    assert f"Target: {target}  512.00 MB  (Ray node {entry['bundles_to_node_id'][0][:8]})" in run.out

    status = ok(grid(cfg, "status"))
    row = next(line for line in status.out.splitlines() if rid in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:6] == [rid, "node1", target, "MEMORY", "512.00 MB", "high"]
    assert re.fullmatch(r"\d+s", cells[6]) and re.fullmatch(r"9m \d+s|10m 0s", cells[7]), cells
    assert "Sharing Enabled: Yes" in status.out and "3 of 3 mesh nodes have a Ray node" in status.out
    assert "Released" not in status.out
    nodes = {c[0]: c for c in (
        [x.strip() for x in line.strip("│ ").split("│")] for line in status.out.splitlines()
        if re.match(r"│ node\d ", line))}
    assert set(nodes) == {"node1", "node2", "node3"}
    for name, c in nodes.items():
        assert c[1] == "alive" and c[2] == "0 B / 1.00 GB" and c[7] == "yes", c
        assert 0.1 <= float(c[3]) <= 1.0
        assert c[6] == ("512.00 MB" if name == target else "-"), c

    doc = json.loads(ok(grid(cfg, "status", "--json")).out)
    [res] = doc["reservations"]
    assert res["id"] == rid and res["pg_id"] == pg_id and res["state"] == "CREATED"
    assert 0 <= res["age_s"] < 30 and 570 < res["expires_in_s"] <= 600
    assert {n["node"] for n in doc["nodes"]} == {"node1", "node2", "node3"}

    rel = ok(grid(cfg, "release", rid))
    assert rel.out.strip() == f"✓ Released {rid}: 512.00 MB of memory on {target}"
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

    from mesh.placement import Placement

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
    from mesh.placement import Placement

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
    from raycluster import node_of

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
            "from mesh.placement import Placement\n"
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
