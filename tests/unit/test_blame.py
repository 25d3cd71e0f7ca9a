"""Unit tests of which node a missing block or key blames (``mesh/client/blame.py``)."""

from __future__ import annotations

import time

from mesh.client.blame import node_state, unavailable
from mesh.membership import NodeInfo


def _node(name, state, age_s=0.0):
    return NodeInfo(name, f"tcp://{name}:1", state, 1, 0, 0, 0, 0, 0, age_s, "")


def test_states_read_as_sentences_with_the_time_since_silent():
    now = time.mktime((2025, 1, 1, 12, 1, 8, 0, 0, -1))
    assert node_state(_node("w2", "dead", 5.0), True, now) == \
        "is dead since 12:01:03 (no heartbeat for 5 s)"
    assert node_state(_node("w2", "down"), True, now).startswith("is down")
    assert node_state(_node("w2", "alive", 0.0), False, now).startswith("did not answer")


def test_only_a_node_not_alive_or_silent_is_blamed():
    nodes = [_node("w1", "alive"), _node("w2", "dead", 9.0)]
    err = unavailable(nodes, "w2", set(), "block b")
    assert err is not None and err.node == "w2" and "w2, which is dead" in str(err)
    assert unavailable(nodes, "w1", set(), "block b") is None
    assert unavailable(nodes, "w1", {"tcp://w1:1"}, "block b").node == "w1"
    assert unavailable(nodes, "w9", set(), "block b") is None
    assert unavailable(nodes, None, set(), "block b") is None
