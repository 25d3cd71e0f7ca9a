"""Long listings printed fast: ``grid memory list-blocks`` past ``LARGE_LISTING_ROWS`` blocks.

json's indenting encoder is pure Python (~30 us a row) and rich lays a table out cell by cell
(~80 us a row), so 100,000 blocks took seconds to print (docs/scale.md). Past the bound,
``--json`` is the same document with one block a line (orjson, else json's C encoder), and the
table is plain fixed-width text with the same columns, sizes on the right. Shorter listings
keep the rich table and the indented JSON (``mesh/cli/memory.py``).

The rows are made from the agents' records (``block_rows``), with no ``BlockInfo`` for each,
and the process ends without tearing down its 100,000s of objects (``common.skip_teardown``).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable, Iterator

from mesh.cli.common import human, skip_teardown

LARGE_LISTING_ROWS = 1000
_CHUNK_ROWS = 4096  # a long listing's rows are made, encoded and let go this many at a time
_NO_KEYS: list[str] = []  # (shared by the rows of blocks without keys: never changed)


def _order(rec: dict[str, Any]) -> tuple[str, float, str]:
    """A record's place in ``blocks()``'s order: its row's node, created, block_id."""
    return ((rec.get("nodes") or (rec["node"],))[0], float(rec["created"]), rec["block"])


def _row(rec: dict[str, Any], keys: dict[str, list[str]]) -> dict[str, Any]:
    nodes = list(rec.get("nodes") or (rec["node"],))
    expires = rec.get("expires")
    return {
        "block_id": rec["block"], "node": nodes[0], "nodes": nodes,
        "replicas": int(rec.get("replicas") or 1), "size": int(rec["size"]),
        "lazy": bool(rec["lazy"]), "created": float(rec["created"]),
        "expires": None if expires is None else float(expires),
        "pending": bool(rec.get("pending", False)), "keys": keys.get(rec["block"], _NO_KEYS),
    }


def block_rows(records: list[dict[str, Any]], keys: dict[str, list[str]]
               ) -> list[dict[str, Any]]:
    """``list-blocks`` rows of the agents' block records (``MeshClient.block_records``): what
    ``mesh/client/locate.py`` ``block_info`` makes of each, in the order of ``blocks()``."""
    return [_row(rec, keys) for rec in sorted(records, key=_order)]


def _row_chunks(records: list[dict[str, Any]], keys: dict[str, list[str]]
                ) -> Iterator[list[dict[str, Any]]]:
    """``block_rows`` of ``records`` (sorted in place), ``_CHUNK_ROWS`` at a time: a long
    listing never holds a row per block besides its records (100,000 blocks: 183 -> 122 MB
    of peak memory, each new page of it zeroed by the kernel)."""
    records.sort(key=_order)
    for start in range(0, len(records), _CHUNK_ROWS):
        yield [_row(rec, keys) for rec in records[start : start + _CHUNK_ROWS]]


def _dumps(value: Any) -> bytes:
    """Compact JSON, no space between items (orjson's, 3x faster than json's C encoder)."""
    try:
        import orjson
    except ImportError:  # (it comes with the cli extra; an older install may lack it)
        return json.dumps(value, separators=(",", ":")).encode()
    return orjson.dumps(value)


def _emit(*parts: bytes) -> None:
    """Write straight to stdout's bytes: ``click.echo`` runs a regex over the whole text when
    stdout is not a terminal (to strip colours the listing does not have), 0.1-0.2 s for
    100,000 blocks."""
    sys.stdout.flush()  # whatever was written as text first stays first
    out = getattr(sys.stdout, "buffer", None)
    for part in parts:
        if out is None:  # a text-only stream (an embedding's): as text then
            sys.stdout.write(part.decode())
        else:
            out.write(part)
    (out or sys.stdout).flush()


def print_blocks(records: list[dict[str, Any]], keys: dict[str, list[str]],
                 failed: dict[str, str], as_json: bool, when: Callable[[float], str]) -> None:
    """A long listing of ``records`` (``block_rows``'s rows), fast: JSON one block a line (C
    encoder), or a plain text table."""
    skip_teardown()
    if as_json:  # encoded a chunk at a time, then a line break before each block (no string
        # holds '},{"block_id"': JSON escapes the quotes inside strings)
        parts = [b'{\n  "blocks": [\n    ']
        for chunk in _row_chunks(records, keys):
            if len(parts) > 1:
                parts.append(b',\n    ')
            parts.append(_dumps(chunk)[1:-1].replace(b'},{"block_id"', b'},\n    {"block_id"'))
        parts.append(b'\n  ],\n  "failed_nodes": ' + json.dumps(failed).encode() + b"\n}\n")
        _emit(*parts)
        return
    heads = ("Block ID", "Nodes", "Size", "Key", "Created", "Expires")
    sizes: dict[int, str] = {}
    times: dict[int, str] = {}  # (a time is shown to the second: one string per second)

    def size_of(n: int) -> str:
        text = sizes.get(n)
        if text is None:
            text = sizes[n] = human(n)
        return text

    def time_of(ts: float) -> str:
        second = math.floor(ts)
        text = times.get(second)
        if text is None:
            text = times[second] = when(second)
        return text

    cells = [(r["block_id"], ", ".join(r["nodes"]), size_of(r["size"]),
              ", ".join(r["keys"]) or ("(put in progress)" if r["pending"] else "-"),
              time_of(r["created"]), time_of(r["expires"]) if r["expires"] else "-")
             for chunk in _row_chunks(records, keys) for r in chunk]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    right = {2}  # sizes line up on the right, as in the rich table
    lines = ["Allocated Memory Blocks",
             "  ".join(h.rjust(w) if i in right else h.ljust(w)
                       for i, (h, w) in enumerate(zip(heads, widths))).rstrip(),
             "  ".join("-" * w for w in widths)]
    for c in cells:
        lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w)
                               for i, (v, w) in enumerate(zip(c, widths))).rstrip())
    lines.append("")
    _emit("\n".join(lines).encode())
