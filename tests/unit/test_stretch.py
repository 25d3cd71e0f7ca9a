"""Stretched heartbeats (``mesh/membership.py``: ``stretch``, ``stretched_interval``): in a large
mesh an agent beats less often and says so in its record (``beat_ms``), and whoever times its
silence (an agent's table, a client's view) stretches its timeouts as much, no further than
``MAX_STRETCH``."""

from __future__ import annotations

import pytest

from mesh import protocol as P
from mesh.client.view import build_view
from mesh.config import MeshSettings
from mesh.errors import ConfigError, ProtocolError
from mesh.membership import (
    ALIVE, DEAD, MAX_STRETCH, SUSPECT, MembershipTable, NodeInfo, stretch, stretched_interval,
)
from unit.test_membership import _hb as heartbeat


def _hb(node, **kw):
    return heartbeat(node, 1, **kw)  # incarnation 1


def test_the_interval_stays_the_clusters_until_peers_outnumber_the_intake():
    # 0.5 s heartbeats, 100 a second taken in: 50 peers fit, 99 need 0.99 s
    assert stretched_interval(0.5, 10, 100.0) == 0.5
    assert stretched_interval(0.5, 50, 100.0) == 0.5
    assert stretched_interval(0.5, 99, 100.0) == pytest.approx(0.99)
    assert stretched_interval(0.5, 5000, 100.0) == MAX_STRETCH * 0.5  # never past the bound
    assert stretched_interval(0.5, 5000, 0.0) == 0.5  # 0: never stretch


def test_a_stretch_grows_by_at_most_half_a_beat_and_shrinks_at_once():
    # the heartbeat announcing a longer interval may be lost: the next still comes in time
    assert stretched_interval(0.5, 199, 100.0, previous_s=0.5) == pytest.approx(0.75)
    assert stretched_interval(0.5, 199, 100.0, previous_s=0.75) == pytest.approx(1.125)
    assert stretched_interval(0.5, 199, 100.0, previous_s=1.9) == pytest.approx(1.99)
    assert stretched_interval(0.5, 10, 100.0, previous_s=2.0) == 0.5


def test_the_factor_is_bounded_and_unknown_means_none():
    assert stretch(1500, 0.5) == 3.0
    assert stretch(400, 0.5) == 1.0  # a shorter beat never shortens the timeouts
    assert stretch(10**9, 0.5) == MAX_STRETCH
    assert stretch(0, 0.5) == 1.0  # an agent older than the field
    assert stretch(1500, None) == 1.0  # a table that does not know the cluster's interval


def test_a_member_announcing_a_longer_beat_is_timed_by_it():
    t = MembershipTable(1.5, 3.0, heartbeat_interval_s=0.5)
    t.observe(_hb("slow", beat_ms=1500), now=10.0)  # 3x: suspect after 4.5 s, dead after 9
    t.observe(_hb("plain"), now=10.0)
    slow, plain = t.get("slow"), t.get("plain")
    assert t.state(slow, 12.0) == ALIVE and t.state(plain, 12.0) == SUSPECT
    assert t.state(slow, 14.6) == SUSPECT and t.state(plain, 14.6) == DEAD
    assert t.state(slow, 19.1) == DEAD
    assert t.dead_after(slow) == 9.0 and t.longest_dead_after() == 9.0
    assert t.states(12.0) == {"slow": ALIVE, "plain": SUSPECT}
    assert t.states(14.6) == {"slow": SUSPECT, "plain": DEAD}
    t.heartbeat_interval_s = 1.5  # stretched against the interval the table knows now
    assert t.stretch(slow) == 1.0 and t.dead_after(slow) == 3.0


def test_its_next_heartbeat_announcing_the_plain_interval_ends_the_stretch():
    t = MembershipTable(1.5, 3.0, heartbeat_interval_s=0.5)
    t.observe(_hb("a", beat_ms=1500), now=10.0)
    t.observe(_hb("a", beat_ms=0), now=10.5)  # a stat like any other, at the same incarnation
    assert t.state(t.get("a"), 12.5) == SUSPECT


def test_hearsay_cannot_stretch_a_member_that_speaks_for_itself():
    t = MembershipTable(1.5, 3.0, heartbeat_interval_s=0.5)
    t.observe(_hb("a"), now=10.0)
    t.observe(_hb("a", beat_ms=2000), now=11.0, vouched=False)
    # (the relay refreshed when it was heard: 11.0)
    assert t.get("a").info.beat_ms == 0 and t.state(t.get("a"), 12.6) == SUSPECT


def test_hearsay_of_a_stretched_member_is_moot_for_longer():
    t = MembershipTable(1.5, 3.0, heartbeat_interval_s=0.5)
    t.observe(_hb("a", beat_ms=1500), now=10.0)
    # a third of its stretched suspect_after_s (4.5 s) has not passed: nothing to learn
    assert t.moot(_hb("a", age_s=0.0), now=11.4)
    t.observe(_hb("b"), now=10.0)
    assert not t.moot(_hb("b", age_s=0.0), now=11.4)


def test_a_table_that_does_not_know_the_interval_never_stretches():
    t = MembershipTable(1.5, 3.0)
    t.observe(_hb("a", beat_ms=1500), now=10.0)
    assert t.state(t.get("a"), 12.0) == SUSPECT


def test_beat_ms_travels_in_the_record_and_must_be_a_count():
    info = NodeInfo.from_record(_hb("a", beat_ms=1200))
    assert info.beat_ms == 1200 and info.record()["beat_ms"] == 1200
    assert NodeInfo.from_record(_hb("a")).beat_ms == 0
    assert P.parse_heartbeat(P.encode_heartbeat(_hb("a", beat_ms=900)))["beat_ms"] == 900
    with pytest.raises(ProtocolError):
        P.parse_heartbeat(P.encode_heartbeat(_hb("a", beat_ms="long")))


def test_a_client_ages_a_silent_stretched_node_by_its_own_beat():
    settings = MeshSettings()  # 0.5 s heartbeats, suspect after 1.5 s, dead after 3
    old = {"slow": NodeInfo.from_record(_hb("slow", beat_ms=1500), ALIVE, 1.0),
           "plain": NodeInfo.from_record(_hb("plain"), ALIVE, 1.0)}
    view = build_view({}, old, 1.0, settings, None)  # nobody reports either: 2 s silent
    assert view["slow"].state == ALIVE and view["plain"].state == SUSPECT


def test_the_intake_setting_is_checked():
    assert MeshSettings().heartbeat_intake_per_s == 100.0
    assert MeshSettings(heartbeat_intake_per_s=0).heartbeat_intake_per_s == 0
    with pytest.raises(ConfigError, match="heartbeat_intake_per_s"):
        MeshSettings(heartbeat_intake_per_s=-1)
    with pytest.raises(ConfigError, match="heartbeat_intake_per_s"):
        MeshSettings(heartbeat_intake_per_s="many")


def test_the_gossip_links_are_drained_four_times_per_own_interval_and_not_before():
    """An agent beating every 2 s (stretched) takes its links' heartbeats every 0.5 s, not every
    0.1 s: the loop wakes that much less (``Gossip.pace``, ``drain_in``). A real PUB and SUB."""
    import time

    import zmq

    from agents.access import Access
    from agents.gossip import DRAIN_EVERY_S, Gossip

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    table = MembershipTable(1.5, 3.0, heartbeat_interval_s=0.5)
    gossip = Gossip(ctx, "me", "tcp://127.0.0.1:1", table, Access(ctx, None, "me"), 3.0)
    try:
        assert gossip.drain_in(0.0) >= 10  # nothing followed: nothing to wake for
        gossip.pace(0.5)
        assert gossip.drain_every_s == pytest.approx(0.125)
        gossip.pace(0.1)
        assert gossip.drain_every_s == DRAIN_EVERY_S  # never more often than before
        gossip.pace(2.0)
        assert gossip.drain_every_s == pytest.approx(0.5)
        gossip.follow(f"tcp://127.0.0.1:{port}", "peer")
        gossip.drain(None, 0.0, lambda _phase, fn, *a: fn(*a))  # the first drain is due at once
        drained = time.monotonic()
        assert 0.4 < gossip.drain_in(drained) <= 0.5
        beat = _hb("peer", gossip=f"tcp://127.0.0.1:{port}", beat_ms=2000)
        deadline = time.monotonic() + 5
        while gossip.heard == 0 and time.monotonic() < deadline:
            pub.send_multipart(P.encode_heartbeat(beat))  # until the SUB's link is up
            time.sleep(0.05)
            gossip.drain(None, 0.0, lambda _phase, fn, *a: fn(*a))
            if time.monotonic() - drained < 0.45:
                assert gossip.heard == 0  # queued, not taken before the drain is due
        assert gossip.heard >= 1 and table.get("peer") is not None
    finally:
        gossip.close()
        pub.close(0)
        ctx.term()


def test_agents_sharing_a_machine_stretch_together_within_the_same_bound():
    # 100 agents on one machine, 99 peers each: 100 x 99 / 0.5 s = 19,800 heartbeats a second
    # for its CPUs; past 2,500 they beat every 3.96 s, bounded by 4x: 2.0 s
    assert stretched_interval(0.5, 99, 100.0, None, 100, 2500.0) == MAX_STRETCH * 0.5
    assert stretched_interval(0.5, 99, 100.0, None, 1, 2500.0) == pytest.approx(0.99)  # alone
    assert stretched_interval(0.5, 49, 100.0, None, 50, 2500.0) == pytest.approx(0.98)
    assert stretched_interval(0.5, 9, 100.0, None, 10, 2500.0) == 0.5  # a test's few agents
    assert stretched_interval(0.5, 99, 100.0, None, 100, 0.0) == pytest.approx(0.99)  # 0: none
    assert stretched_interval(0.5, 99, 0.0, None, 100, 2500.0) == 0.5  # 0: never stretch
    # the step bound holds all the same
    assert stretched_interval(0.5, 99, 100.0, 0.5, 100, 2500.0) == pytest.approx(0.75)


def test_only_members_that_vouched_for_the_same_machine_count_as_sharing_it():
    t = MembershipTable(1.5, 3.0, heartbeat_interval_s=0.5)
    for name in ("me", "b", "c"):
        t.observe(_hb(name, host_key=7), now=10.0)
    t.observe(_hb("elsewhere", host_key=8), now=10.0)
    t.observe(_hb("told", host_key=7), now=10.0, vouched=False)  # hearsay: not counted
    t.observe(_hb("old", host_key=7), now=1.0)  # dead by 10.0 + anything
    assert t.co_located(7, t.states(10.5)) == 3
    assert t.co_located(8, t.states(10.5)) == 1
    assert t.co_located(0, t.states(10.5)) == 1  # an unknown machine: alone
    assert t.co_located(7, t.states(14.0)) == 1  # every one of them dead by then: at least 1


def test_host_key_travels_in_the_record_and_must_be_a_count():
    from mesh.machine import kernel_key

    assert kernel_key() == kernel_key() > 0
    info = NodeInfo.from_record(_hb("a", host_key=kernel_key()))
    assert info.host_key == kernel_key() and info.record()["host_key"] == kernel_key()
    assert NodeInfo.from_record(_hb("a")).host_key == 0
    with pytest.raises(ProtocolError):
        P.parse_heartbeat(P.encode_heartbeat(_hb("a", host_key="here")))
    assert MeshSettings().heartbeat_host_intake_per_s == 2500.0
    with pytest.raises(ConfigError, match="heartbeat_host_intake_per_s"):
        MeshSettings(heartbeat_host_intake_per_s=-5)
