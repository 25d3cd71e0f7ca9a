"""agents/replicas.py: placement over failure domains, replica-set changes, fencing verdicts,
leases."""

from __future__ import annotations

import pytest

from agents.replicas import (
    AHEAD, APPLY, BACKUP, NOT_PRIMARY, PRIMARY, STALE, Candidate, Lease, PlacementShort,
    ReplicaSet, lease_s, place, verdict,
)

MiB = 1 << 20


def cands(*spec):
    return [Candidate(node, host, room) for node, host, room in spec]


def test_copies_go_to_distinct_hosts_most_room_first():
    c = cands(("a1", "A", 5 * MiB), ("a2", "A", 9 * MiB), ("b1", "B", 4 * MiB), ("c1", "C", 1))
    assert place(2, MiB, c).nodes == ("a2", "b1")  # a1 shares A with a2; c1 has no room
    assert place(1, MiB, c).nodes == ("a2",)


def test_two_agents_on_one_machine_are_not_two_copies():
    c = cands(("a1", "A", 9 * MiB), ("a2", "A", 9 * MiB))
    with pytest.raises(PlacementShort, match="2 hosts"):
        place(2, MiB, c)
    relaxed = place(2, MiB, c, spread="node")
    assert set(relaxed.nodes) == {"a1", "a2"} and relaxed.shared_hosts


def test_spread_over_hosts_does_not_say_shared_when_it_is_not():
    c = cands(("a1", "A", 9 * MiB), ("b1", "B", 9 * MiB))
    assert not place(2, MiB, c, spread="node").shared_hosts


def test_a_repair_keeps_away_from_the_hosts_and_nodes_of_the_survivors():
    c = cands(("a1", "A", 9 * MiB), ("a2", "A", 8 * MiB), ("b1", "B", 1 * MiB))
    got = place(1, MiB, c, exclude=frozenset({"a1"}), keep_apart=frozenset({"A"}))
    assert got.nodes == ("b1",)
    with pytest.raises(PlacementShort):
        place(1, 2 * MiB, c, exclude=frozenset({"a1"}), keep_apart=frozenset({"A"}))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        place(0, 1, [])
    with pytest.raises(ValueError):
        place(1, 1, [], spread="rack")


def test_a_set_changes_only_by_raising_its_epoch():
    s = ReplicaSet(1, ("a", "b", "c"))
    assert s.primary == "a" and s.role("a") == PRIMARY and s.role("c") == BACKUP
    assert s.role("z") is None
    assert s.without("b") == ReplicaSet(2, ("a", "c"))
    assert s.without("a") == ReplicaSet(2, ("b", "c"))  # the next one is primary
    assert s.without("z") is s
    assert s.with_member("d") == ReplicaSet(2, ("a", "b", "c", "d"), ("d",))
    with pytest.raises(ValueError):
        s.with_member("b")
    with pytest.raises(ValueError, match="only complete copy"):
        ReplicaSet(3, ("a",)).without("a")
    assert s.record() == {"epoch": 1, "nodes": ["a", "b", "c"], "syncing": []}


@pytest.mark.parametrize("epoch, members", [(0, ("a",)), (1, ()), (1, ("a", "a"))])
def test_malformed_sets_are_refused(epoch, members):
    with pytest.raises(ValueError):
        ReplicaSet(epoch, members)


def test_a_copy_takes_writes_only_from_its_epochs_primary():
    mine = ReplicaSet(5, ("a", "b"))
    assert verdict(mine, "a", 5) == APPLY
    assert verdict(mine, "b", 5) == NOT_PRIMARY
    assert verdict(mine, "a", 4) == STALE  # the old primary, fenced
    assert verdict(mine, "c", 6) == AHEAD


def test_a_paused_copy_finds_its_lease_over():
    assert lease_s(3.0) == 1.5
    lease = Lease(lease_s(3.0))
    assert not lease.holds(0.0)  # never heard: never serves
    lease.renew(10.0)
    assert lease.holds(11.0)
    assert not lease.holds(11.5)  # resumed after a pause longer than the lease
    lease.renew(9.0)  # an older message does not move it back
    assert lease.heard_at == 10.0


def test_a_syncing_copy_is_never_primary_and_counts_only_once_synced():
    s = ReplicaSet(1, ("a", "b")).with_member("c")
    assert s.current == ("a", "b") and s.syncing == ("c",)
    s2 = s.without("a")
    assert s2.primary == "b" and s2.syncing == ("c",)
    with pytest.raises(ValueError, match="only complete copy"):
        s2.without("b")  # c is incomplete: the block is lost, not handed to c
    done = s.synced("c")
    assert done.epoch == s.epoch + 1 and done.current == ("a", "b", "c")
    assert ReplicaSet.from_record(done.record()) == done
    with pytest.raises(ValueError):
        ReplicaSet(1, ("a", "b"), ("a",))  # the primary is complete by definition
    for bad in ({"epoch": True, "nodes": ["a"]}, {"epoch": 1, "nodes": "a"},
                {"epoch": 1, "nodes": ["a", "a"]}, {"epoch": 1, "nodes": [""]}):
        with pytest.raises(ValueError):
            ReplicaSet.from_record(bad)
