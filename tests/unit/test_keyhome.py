"""Unit tests of a key's home (issue 10, defect 8): rendezvous hashing
(``mesh/client/keyclaims.py``) and the claims and places an agent keeps
(``agents/keyhome.py``)."""

from __future__ import annotations

import pytest

from agents.keyhome import CLAIM_KEEP_S, KeyHomes
from mesh.client.keyclaims import home_order
from mesh.errors import KeyExists

NODES = [f"w{i}" for i in range(8)]


def test_home_order_is_a_permutation_that_does_not_depend_on_the_order_given():
    order = home_order("k", NODES)
    assert sorted(order) == NODES
    assert home_order("k", list(reversed(NODES))) == order
    assert home_order("k", []) == []


def test_homes_spread_and_only_the_keys_of_a_leaving_node_move():
    keys = [f"key-{i}" for i in range(4000)]
    homes = {k: home_order(k, NODES)[0] for k in keys}
    counts = {n: list(homes.values()).count(n) for n in NODES}
    assert min(counts.values()) > 4000 / 8 / 2  # roughly even
    rest = [n for n in NODES if n != "w3"]
    for k in keys:
        new = home_order(k, rest)[0]
        assert new == homes[k] or homes[k] == "w3"
        if homes[k] == "w3":  # its keys go to their second choice
            assert new == home_order(k, NODES)[1]


def test_a_live_claim_of_another_put_is_refused_and_an_expired_one_taken_over():
    h = KeyHomes("w1")
    h.claim("k", "a", 5.0, now=0.0)
    h.claim("k", "a", 5.0, now=1.0)  # the same put may ask again
    with pytest.raises(KeyExists):
        h.claim("k", "b", 5.0, now=4.9)
    h.claim("k", "b", 5.0, now=6.0)  # a's claim expired
    assert h.where("k", 6.0) == ("", True)


def test_settle_keeps_the_place_and_ends_the_claim():
    h = KeyHomes("w1")
    h.claim("k", "a", 5.0, now=0.0)
    h.settle("k", "a", "w2", replace=False, now=1.0)
    assert h.where("k", 1.0) == ("w2", False)
    h.claim("k", "b", 5.0, now=2.0)  # the put checks the records itself (KeyExists there)
    assert not h.release("k", "a") and h.release("k", "b")
    h.settle("k", "", "", replace=True, now=3.0)  # deleted
    assert h.where("k", 3.0) == ("", False)


def test_a_put_that_lost_its_claim_cannot_settle():
    h = KeyHomes("w1")
    h.claim("k", "a", 5.0, now=0.0)
    h.claim("k", "b", 5.0, now=6.0)  # a ran past its claim; b took the key
    with pytest.raises(KeyExists):
        h.settle("k", "a", "w2", replace=False, now=7.0)
    h.settle("k", "b", "w3", replace=False, now=7.0)
    with pytest.raises(KeyExists):  # b published it: a's late settle is still refused
        h.settle("k", "a", "w2", replace=False, now=8.0)
    assert h.where("k", 8.0) == ("w3", False)


def test_an_expired_claim_nobody_took_still_settles_and_old_ones_are_forgotten():
    h = KeyHomes("w1")
    h.claim("k", "a", 5.0, now=0.0)
    h.settle("k", "a", "w2", replace=False, now=100.0)
    assert h.where("k", 100.0) == ("w2", False)
    h.claim("old", "x", 1.0, now=0.0)
    h.claim("new", "y", 1.0, now=CLAIM_KEEP_S + 2)  # claiming sweeps the long-expired ones
    assert not h.release("old", "x")
