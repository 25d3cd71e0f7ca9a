"""What a member may claim (issue 10, defect 10): only a node's own heartbeat changes what the
table knows of it; hearsay introduces and refreshes; the table is bounded; heartbeats stay
under the size limit."""

from __future__ import annotations

from mesh import protocol as P
from mesh.membership import ALIVE, DEAD, MAX_GOSSIP_PEERS, MembershipTable


def _hb(node, inc, address=None, **kw):
    address = address or f"tcp://{node}:1"
    rec = {"node": node, "address": address, "gossip": address.replace(":1", ":2"),
           "incarnation": inc, "version": "t", "capacity": 100, "used": 0,
           "host_available": 1000, "blocks": 0}
    rec.update(kw)
    return rec


def test_hearsay_cannot_change_a_known_node():
    t = MembershipTable(1.0, 3.0)
    assert t.observe(_hb("b", 5), now=0.0)
    assert not t.observe(_hb("b", 6, "tcp://evil:1"), now=1.0, vouched=False)
    assert not t.observe(_hb("b", 5, "tcp://evil:1"), now=1.0, vouched=False)
    assert not t.observe(_hb("b", 5, used=99), now=1.0, vouched=False)
    m = t.get("b")
    assert (m.info.address, m.info.incarnation, m.info.used) == ("tcp://b:1", 5, 0)
    assert m.last_heard == 1.0  # hearsay of the same record refreshes the age
    assert t.observe(_hb("b", 6), now=2.0)  # its own heartbeat after a restart
    assert t.get("b").info.incarnation == 6


def test_hearsay_introduces_and_the_node_itself_corrects_it():
    t = MembershipTable(1.0, 3.0)
    assert t.observe(_hb("c", 99, "tcp://evil:1"), now=0.0, vouched=False)
    assert t.observe(_hb("c", 3), now=0.5)  # vouched beats hearsay, whatever the incarnation
    assert (t.get("c").info.address, t.get("c").info.incarnation) == ("tcp://c:1", 3)


def test_records_with_bad_addresses_are_ignored():
    t = MembershipTable(1.0, 3.0)
    assert not t.observe(_hb("d", 1, "tcp://-:80"), now=0.0)
    assert not t.observe(_hb("x" * 300, 1), now=0.0)
    assert len(t) == 0


def test_the_table_is_bounded():
    t = MembershipTable(1.0, 3.0, max_members=10)
    for i in range(50):
        t.observe(_hb(f"fake{i}", 1), now=0.0, vouched=False)
    assert len(t) == 10 and t.refused == 40
    assert t.observe(_hb("real", 1), now=0.1)  # a node vouching for itself takes a fake's place
    assert len(t) == 10 and t.get("real") is not None
    for i in range(20):
        t.observe(_hb(f"v{i}", 1), now=0.2)
    assert len(t) == 10 and all(m.vouched for m in t._members.values())
    assert not t.observe(_hb("late", 1), now=0.3)  # full of live, vouched nodes
    assert t.observe(_hb("later", 1), now=10.0)  # once one is dead, it makes room
    assert {r["state"] for r in t.snapshot(10.0)} == {ALIVE, DEAD}


def test_gossip_is_bounded_and_fits_a_heartbeat():
    t = MembershipTable(1.0, 3.0, max_members=5000)
    for i in range(5000):
        t.observe(_hb(f"node-{i:04d}-" + "n" * 200, 1, f"tcp://h{i}.example.com:1"), now=0.0)
    peers = t.gossip_entries(0.5, exclude="me")
    assert len(peers) == MAX_GOSSIP_PEERS
    rec = {**_hb("me", 1), "peers": peers}
    assert len(P.encode_heartbeat(rec)[1]) <= P.MAX_HEARTBEAT_BYTES


def test_only_a_node_that_spoke_for_itself_is_one_an_agent_connects_to():
    """vouched_at: the address of a node known only from hearsay is no member to move a block
    to (an agent must not connect out to an address a relayed record names), nor is a dead one."""
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("c", 1, "tcp://evil:1"), now=0.0, vouched=False)
    assert t.vouched_at("tcp://evil:1", now=0.1) is None
    t.observe(_hb("b", 1), now=0.0)
    address = next(r["address"] for r in t.snapshot(0.1) if r["node"] == "b")
    assert t.vouched_at(address, now=0.1) == "b"
    assert t.vouched_at(address, now=10.0) is None  # dead by then
