"""Reservations without Ray: ``split_amount``, reservation names, which Ray node stands for which
mesh node, and a request's candidates (``mesh/balance/placement.py``'s pure parts)."""

from __future__ import annotations

import json
import socket

import pytest

from mesh.balance.reservations import (
    Reservation,
    available_from_pgs,
    check_request,
    map_ray_nodes,
    ray_start_args,
    reservations_from_table,
    split_amount,
)
from mesh.config import parse_config
from mesh.errors import CapacityError, InvalidRequest

MiB = 1024**2
GiB = 1024**3


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
    from mesh.balance.reservations import candidates

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
    from mesh.balance.reservations import candidates

    cfg = _config(w2={"max_share_cpu": 3})
    held = [_res(resource="cpu", targets=(("w2", 2.0),), amount=2.0)]
    rooms, _ = candidates(cfg, "cpu", None, _mapped("master", "w1", "w2", cpu=4.0), held, "w1")
    assert rooms == [("master", 4.0), ("w2", 1.0)]


# --- Ray stays out of processes that do not need it ---------------------------------------------
