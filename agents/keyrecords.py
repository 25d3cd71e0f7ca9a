"""Key records as the agent stores them: the fields a KPUT must carry, the limits (key length,
record size), and what a record costs against the agent's room.

Covers: ``check_key_record`` (the stored record, with its cost in ``_bytes``) and ``public``
(the record as clients see it). Does not cover where records live and how they are counted
(``agents/store.py``) or their wire format (``mesh/protocol.py``).
"""

from __future__ import annotations

import msgpack

from mesh.errors import InvalidRequest, OutOfRange

MAX_KEY_LENGTH = 1024
# A key record is metadata: at most this many bytes packed (the key, its fields and ``meta``).
MAX_KEY_RECORD_BYTES = 16 * 1024
# What a record costs the agent beyond its packed bytes (the dict and its objects, measured ~0.6
# KiB for a small record), counted against the room with them.
KEY_RECORD_OVERHEAD_BYTES = 1024

_KEY_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "block": (str,),
    "offset": (int,),
    "length": (int,),
    "content_type": (str,),
    "checksum": (str,),
    "owns_block": (bool,),
    "meta": (dict,),
}


def check_key_record(key: str, rec: dict, node: str, now: float) -> dict:
    out = {"key": key}
    for name, types in _KEY_RECORD_FIELDS.items():
        value = rec.get(name)
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise InvalidRequest(f"key record field {name!r} is missing or has the wrong type")
        out[name] = value
    if out["offset"] < 0 or out["length"] < 0:
        raise OutOfRange("key record offset and length must be >= 0")
    if not out["block"] and out["length"] != 0:
        raise InvalidRequest("only a 0-byte object may have no block")
    out["created"] = now
    out["node"] = node
    if rec.get("evictable") is True:  # may be evicted for room (agents/eviction.py)
        out["evictable"] = True
    # the authenticated key that wrote it (set by the agent that took the put, never by the
    # client; carried by a move's COMMIT); None on a cluster without keys
    writer = rec.get("writer")
    out["writer"] = writer if isinstance(writer, str) else None
    packed = len(msgpack.packb(out, use_bin_type=True))
    if packed > MAX_KEY_RECORD_BYTES:
        raise InvalidRequest(f"key record for {key!r} is {packed} bytes packed; the limit is "
                             f"{MAX_KEY_RECORD_BYTES} (keep large data in the block, not meta)")
    out["_bytes"] = packed + KEY_RECORD_OVERHEAD_BYTES
    return out


def public(record: dict) -> dict:
    """A key record as clients see it (without the store's own bookkeeping)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}
