"""Unit tests of membership: heartbeat frames (``mesh/protocol.py``) and the membership table
(``mesh/membership.py``): states, incarnations, gossip."""

from __future__ import annotations

import msgpack
import pytest

from mesh import protocol as P
from mesh.errors import ProtocolError
from mesh.membership import ALIVE, DEAD, SUSPECT, MembershipTable


def _hb(node, inc, **kw):
    rec = {"node": node, "address": f"tcp://{node}:1", "gossip": f"tcp://{node}:2",
           "incarnation": inc, "version": "t", "capacity": 100, "used": 0,
           "host_available": 1000, "blocks": 0}
    rec.update(kw)
    return rec


def test_heartbeat_drops_malformed_peers():
    good = _hb("b", 1, age_s=0.1)
    bad = {"node": "c"}
    rec = P.parse_heartbeat(P.encode_heartbeat({**_hb("a", 1), "peers": [good, bad, "junk"]}))
    assert [p["node"] for p in rec["peers"]] == ["b"]
    with pytest.raises(ProtocolError):
        P.parse_heartbeat([b"hb", msgpack.packb({"node": 1})])


def test_membership_states_over_time():
    t = MembershipTable(suspect_after_s=1.5, dead_after_s=3.0)
    assert t.observe(_hb("a", 1), now=10.0)
    assert t.snapshot(11.0)[0]["state"] == ALIVE
    assert t.snapshot(11.6)[0]["state"] == SUSPECT
    assert t.snapshot(13.1)[0]["state"] == DEAD


def test_membership_new_incarnation_replaces_and_stale_is_ignored():
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("a", 5, used=10), now=0.0)
    assert not t.observe(_hb("a", 4, used=99), now=1.0)
    assert t.get("a").info.used == 10
    assert t.observe(_hb("a", 6, used=1), now=20.0)
    assert t.get("a").info.incarnation == 6 and t.snapshot(20.0)[0]["state"] == ALIVE


def test_relayed_age_never_makes_a_node_fresher():
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("a", 1), now=10.0)
    t.observe(_hb("a", 1), now=14.0, age_s=3.5)  # a relay heard it 3.5 s ago: older than ours
    assert t.get("a").last_heard == pytest.approx(10.5)
    # dead nodes are not relayed, so gossip cannot revive them
    assert t.gossip_entries(now=14.0) == []


def test_hearsay_that_could_change_nothing_is_moot_and_left_out_unchecked():
    t = MembershipTable(suspect_after_s=1.5, dead_after_s=3.0)
    t.observe(_hb("a", 2), now=10.0)  # a spoke for itself at 10.0
    assert t.moot(_hb("a", 1, age_s=0.0), now=10.1)  # another incarnation: stale
    assert t.moot(_hb("a", 2, age_s=0.3), now=10.2)  # heard by the relay before we heard it
    assert t.moot(_hb("a", 2, age_s=0.0), now=10.4)  # we heard it within suspect_after_s / 3
    assert not t.moot(_hb("a", 2, age_s=0.1), now=11.0)  # ours is 1 s old, the relay's fresher
    assert not t.moot(_hb("b", 1, age_s=0.0), now=10.1)  # unknown: an introduction
    for junk in ("x", None, [], {"node": ["unhashable"]}, {"node": "a", "incarnation": "2"},
                 {"node": "a", "incarnation": 2, "age_s": float("nan")}, _hb("a", True)):
        assert not t.moot(junk, now=11.0)  # cannot judge it: checked as before
    # a hearsay-only member is refreshed by hearsay (its stats too): never moot at its incarnation
    t.observe(_hb("c", 1, age_s=0.0), now=10.0, vouched=False)
    assert not t.moot(_hb("c", 1, age_s=0.0), now=10.1)

    frames = P.encode_heartbeat({**_hb("b", 1), "peers": [
        _hb("a", 2, age_s=0.0), _hb("c", 1, age_s=0.0), {"node": "a"}, "junk"]})
    peers = P.parse_heartbeat(frames, lambda p: t.moot(p, 10.2))["peers"]
    assert [p["node"] for p in peers] == ["c"]  # a: moot; the malformed ones: dropped as before
    # what was left out would at most have moved a's last word by less than a third of
    # suspect_after_s, heard directly that recently: no state changes for it, now or later
    before = t.get("a").last_heard
    for p in P.parse_heartbeat(frames)["peers"]:
        if p["node"] == "a":
            t.observe(p, 10.2, p["age_s"], vouched=False)
    assert 0 < t.get("a").last_heard - before < 1.5 / 3


def test_a_stat_that_did_not_change_keeps_the_record():
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("a", 1, used=5), now=10.0)
    info = t.get("a").info
    t.observe(_hb("a", 1, used=5), now=10.5)
    assert t.get("a").info is info and t.get("a").last_heard == 10.5
    t.observe(_hb("a", 1, used=7), now=11.0)
    assert t.get("a").info.used == 7 and t.get("a").info.incarnation == 1


def test_a_record_whose_room_is_nil_is_merged_as_one_without_room():
    # found by tools/fuzz.py (heartbeat_intake): the check lets an optional count be nil, and
    # NodeInfo.from_record raised TypeError on it, dropping the rest of the heartbeat
    t = MembershipTable(1.5, 3.0)
    frames = P.encode_heartbeat({**_hb("a", 1, room=None, used=30),
                                 "peers": [_hb("b", 1, room=None, age_s=0.1)]})
    rec = P.parse_heartbeat(frames)
    assert t.observe(rec, now=10.0)
    assert t.observe(rec["peers"][0], now=10.0, age_s=0.1, vouched=False)
    assert t.get("a").info.room == 70 and t.get("b").info.room == 100


def test_merge_heartbeat_says_what_was_new_and_leaves_the_taker_out():
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("me", 1), now=10.0)
    rec = P.parse_heartbeat(P.encode_heartbeat({**_hb("a", 1), "peers": [
        _hb("b", 1, age_s=0.2), _hb("me", 9, age_s=0.0)]}))
    assert [r["node"] for r in t.merge_heartbeat(rec, 10.0, 0.1, skip="me")] == ["a", "b"]
    assert t.get("b").last_heard == pytest.approx(10.0 - 0.3) and not t.get("b").vouched
    assert t.get("me").info.incarnation == 1  # what it relayed of the taker was not merged
    assert t.merge_heartbeat(rec, 10.5, skip="me") == []  # nothing new the second time
