"""Unit tests of what a heartbeat relays at scale: the bounded digest of the membership table
(``mesh/membership.py`` ``gossip_digest``) and the socket-free simulation of membership at many
nodes (``tools/gossip_sim.py``)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

from mesh import protocol as P
from mesh.membership import (
    CHANGE_RELAY_S, DIGEST_RECENT, DIGEST_SAMPLE, MembershipTable,
)

ROOT = Path(__file__).resolve().parents[2]


def _sim():
    spec = importlib.util.spec_from_file_location("tools_gossip_sim", ROOT / "tools" / "gossip_sim.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tools_gossip_sim", module)
    spec.loader.exec_module(module)
    return module


def _hb(node, inc=1):
    return {"node": node, "address": f"tcp://{node}:1", "gossip": f"tcp://{node}:2",
            "incarnation": inc, "version": "t", "capacity": 100, "used": 0,
            "host_available": 1000, "blocks": 0}


def _table(n: int, now: float = 0.0) -> MembershipTable:
    t = MembershipTable(1.5, 3.0, max_members=n + 10)
    for i in range(n):
        t.observe(_hb(f"n{i:04d}"), now=now)
    return t


def test_a_heartbeat_relays_a_bounded_digest_whatever_the_table_size():
    sizes = []
    for n in (10, 100, 1000):
        t = _table(n)
        # just after every node came: the freshest changes, at most DIGEST_RECENT, and a sample
        assert len(t.gossip_digest(0.1, exclude="n0000")) <= DIGEST_RECENT + DIGEST_SAMPLE
        later = CHANGE_RELAY_S + 0.1
        for i in range(n):  # still heard, nothing changed since
            t.observe(_hb(f"n{i:04d}"), now=later)
        digest = t.gossip_digest(later, exclude="n0000")
        assert len(digest) == min(DIGEST_SAMPLE, n - 1)
        assert "n0000" not in {r["node"] for r in digest}
        sizes.append(len(P.encode_heartbeat({**_hb("n0000"), "peers": digest})[1]))
    assert sizes[2] <= sizes[1] * 1.1  # 1,000 members cost a heartbeat what 100 do


def test_a_change_is_relayed_first_then_every_member_in_turn():
    t = _table(50)
    later = CHANGE_RELAY_S + 1.0
    for i in range(50):
        t.observe(_hb(f"n{i:04d}"), now=later)
    t.observe(_hb("n0007", inc=2), now=later)  # restarted: a change to tell others
    assert t.gossip_digest(later, exclude="me")[0]["node"] == "n0007"
    seen = set()
    for k in range(50 // DIGEST_SAMPLE + 1):  # the round-robin sample covers the whole table
        now = later + CHANGE_RELAY_S + 0.5 + k * 0.01
        for i in range(50):
            t.observe(_hb(f"n{i:04d}", inc=2 if i == 7 else 1), now=now)
        seen.update(r["node"] for r in t.gossip_digest(now, exclude="me"))
    assert seen == {f"n{i:04d}" for i in range(50)}


def test_dead_members_are_never_in_a_digest():
    t = _table(5)
    assert t.gossip_digest(10.0, exclude="n0000") == []


def test_hearsay_still_cannot_change_a_known_node():
    """The quick path for records that match what is known changes no merge rule."""
    t = _table(3)
    forged = {**_hb("n0001", inc=9), "address": "tcp://evil:1"}
    assert not t.observe(forged, now=0.5, vouched=False)
    assert t.get("n0001").info.address == "tcp://n0001:1"
    assert not t.observe({**_hb("n0002"), "gossip": "tcp://-:2"}, now=0.5, vouched=False)
    assert t.get("n0002").info.gossip == "tcp://n0002:2"


def test_the_simulation_converges_and_bytes_grow_with_links_only():
    sim = _sim()
    out = sim.simulate([60, 120], [0, 8], seed=3)
    rows = {(r["nodes"], r["follow"]): r for r in out["rows"]}
    # everyone following everyone: one heartbeat; bytes per node linear in the nodes
    assert rows[(60, "all")]["join_s"] == sim.HEARTBEAT_INTERVAL_S
    assert rows[(120, "all")]["bytes_per_node_s"] == \
        rows[(60, "all")]["bytes_per_node_s"] * 119 // 59
    # a partial view: more rounds, bytes per node independent of the mesh's size
    for n in (60, 120):
        r = rows[(n, 8)]
        assert r["join_s"] is not None and r["join_s"] >= sim.HEARTBEAT_INTERVAL_S
        assert r["cold_s"] is not None
    assert rows[(60, 8)]["bytes_per_node_s"] == rows[(120, 8)]["bytes_per_node_s"]


def test_the_simulation_is_deterministic_for_a_seed():
    sim = _sim()
    a = sim.cold(80, 6, random.Random(5), 10)
    assert a == sim.cold(80, 6, random.Random(5), 10) and a is not None
