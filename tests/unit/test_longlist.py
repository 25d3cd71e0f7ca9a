"""``grid memory list-blocks`` past ``LARGE_LISTING_ROWS`` (``mesh/cli/longlist.py``): rows made
straight from the agents' records are what ``blocks()`` (one ``BlockInfo`` each) makes, in its
order; the JSON is one block a line and reads back as the same document."""

from __future__ import annotations

import json

from mesh.cli import longlist
from mesh.client.locate import block_info


def _records():
    plain = {"block": "block_2_a_x", "node": "a", "size": 10, "lazy": True, "created": 5.0,
             "expires": None, "pending": False}
    return [
        plain,
        {**plain, "block": "block_1_b_x", "node": "b", "created": 1.0, "expires": 99,
         "pending": True},
        {**plain, "block": "block_3_b_x", "node": "b", "nodes": ["a", "b"], "epoch": 3,
         "replicas": 2, "syncing": [], "shared_hosts": True, "created": 2.5},
        {"block": "block_0_a_x", "node": "a", "size": 7, "lazy": 0, "created": 2},  # sparse
    ]


def _row_of(info, keys):
    return {"block_id": info.block_id, "node": info.node, "nodes": list(info.nodes),
            "replicas": info.replicas, "size": info.size, "lazy": info.lazy,
            "created": info.created, "expires": info.expires, "pending": info.pending,
            "keys": keys.get(info.block_id, [])}


def test_rows_from_records_are_what_block_infos_make_in_the_same_order():
    keys = {"block_3_b_x": ["k1", "k2"]}
    infos = sorted(map(block_info, _records()), key=lambda b: (b.node, b.created, b.block_id))
    rows = longlist.block_rows(_records(), keys)
    assert rows == [_row_of(i, keys) for i in infos]
    assert [type(r["created"]) for r in rows] == [float] * 4 and rows[0]["lazy"] is False


def test_the_long_json_is_one_block_a_line_and_the_same_document(capsys, monkeypatch):
    monkeypatch.setattr(longlist, "_CHUNK_ROWS", 500)  # made and encoded in three chunks
    records = _records() * 300  # past LARGE_LISTING_ROWS
    rows = longlist.block_rows(records, {"block_0_a_x": ["k"]})
    longlist.print_blocks(records, {"block_0_a_x": ["k"]}, {"c": "timed out"}, True, str)
    text = capsys.readouterr().out
    assert json.loads(text) == {"blocks": rows, "failed_nodes": {"c": "timed out"}}
    assert text.count('\n    {"block_id"') == len(rows) == 1200


def test_the_long_table_shows_each_rows_size_and_times_to_the_second(capsys):
    import time as _time

    def when(ts):
        return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ts))

    recs = [{"block": f"block_{i}_a_x", "node": "a", "size": i % 3 * 1024, "lazy": True,
             "created": 1795756875.0 + i * 0.37, "expires": 1795800000.9 if i % 2 else None,
             "pending": False} for i in range(1200)]
    rows = longlist.block_rows(recs, {"block_7_a_x": ["seven"]})
    longlist.print_blocks(recs[::-1], {"block_7_a_x": ["seven"]}, {}, False, when)
    lines = capsys.readouterr().out.splitlines()[3:]
    assert len(lines) == len(rows)
    for row, text in zip(rows, lines):
        cells = text.split()
        assert cells[0] == row["block_id"] and " ".join(cells[2:4]) == \
            longlist.human(row["size"])
        assert when(row["created"]) in text
        assert (when(row["expires"]) in text) == (row["expires"] is not None)
    assert "seven" in lines[[r["block_id"] for r in rows].index("block_7_a_x")]
