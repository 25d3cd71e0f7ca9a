"""mesh/client/ranges.py: which read_many/write_many calls take the lean path, and how their
items are cut into messages (pure: no sockets)."""

from __future__ import annotations

from mesh import protocol as P
from mesh.client.ranges import _pieces, plan
from mesh.client.subops import MANY_ITEM_BYTES

PLACES = {"b1": ("tcp://a:1", 1 << 20), "b2": ("tcp://b:1", 8192)}


def test_plain_items_are_grouped_by_agent_in_order():
    items = [("b1", b"x" * 10, 0), ("b2", b"y", 8191), ("b1", bytearray(b"z" * 4), 100)]
    assert plan(items, PLACES, read=False) == {"tcp://a:1": [0, 2], "tcp://b:1": [1]}
    reads = [("b2", 0, 8192), ("b1", 4096, 0)]  # a read of 0 bytes is plain too
    assert plan(reads, PLACES, read=True) == {"tcp://b:1": [0], "tcp://a:1": [1]}
    near = {"b1": "tcp://near:1"}  # a copy on this machine: reads go there
    assert plan([("b1", 5, 0)], PLACES, read=True, near=near) == {"tcp://near:1": [0]}


def test_any_item_off_the_common_case_sends_the_whole_call_the_general_way():
    ok = ("b1", b"x", 0)
    for odd in [("b3", b"x", 0),  # not located
                ("b2", b"xx", 8191),  # past the end
                ("b1", b"x", -1), ("b1", b"x", 1.0), ("b1", b"x", True),  # bad offsets
                ("b1", memoryview(b"x"), 0),  # not bytes or a bytearray
                ("b1", b"", 0),  # an empty write
                ("b1", b"x" * (MANY_ITEM_BYTES + 1), 0),  # too large for a batch
                (7, b"x", 0)]:
        assert plan([ok, odd], PLACES, read=False) is None, odd
    for odd in [("b1", -1, 0), ("b1", "4", 0), ("b1", MANY_ITEM_BYTES + 1, 0),
                ("b2", 2, 8191)]:
        assert plan([("b1", 1, 0), odd], PLACES, read=True) is None, odd


def test_messages_start_small_and_double_within_the_protocol_limits():
    items = [("b1", 16, i * 16) for i in range(1000)]
    sizes = [len(p) for p in _pieces(items, list(range(1000)), read=True)]
    assert sizes == [32, 64, 128, 256, 256, 256, 8]
    big = [("b1", b"x" * (200 * 1024), 0)] * 12  # bytes each way bound a message too
    pieces = list(_pieces(big, list(range(12)), read=False))
    assert all(sum(len(big[i][1]) for i in p) <= P.MAX_MANY_BYTES for p in pieces)
    assert [i for p in pieces for i in p] == list(range(12))
