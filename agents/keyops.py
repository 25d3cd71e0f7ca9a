"""The key ops of an agent: KPUT, KGET, KDEL, KLIST, KEXPIRE, and a key's home (KCLAIM,
KRELEASE, KHOME, KWHERE: claims of puts in progress and where keys were published, ``agents/keyhome.py``).

The rules of key records live in ``agents/store.py`` and ``agents/keyrecords.py``; this module
turns requests into calls on them and replies. A KPUT's record is stamped with its ``writer``:
the name of the key the agent authenticated the request with (``agents/access.py``), never what
the client says, so a reader can trust it before unpickling (``mesh/client/objects.py``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from agents.eviction import Evictor
from agents.keyhome import KeyHomes
from agents.store import BlockStore
from mesh import protocol as P
from mesh.errors import InvalidRequest, MeshError

Reply = Callable[[Any, P.Request, dict[str, Any]], None]


class KeyOps:
    def __init__(self, store: BlockStore, homes: KeyHomes, node: str, reply: Reply,
                 describe: Callable[[str], dict] = lambda block_id: {},
                 evictor: Evictor | None = None):
        self.store = store
        self.evictor = evictor or Evictor(store, node)
        self._describe = describe  # a block's copies ({nodes, epoch, ...}; {} with none)
        self.homes = homes
        self.node = node
        self._reply = reply

    def handlers(self) -> dict[str, Callable[[Any, P.Request], None]]:
        return {P.KPUT: self._kput, P.KGET: self._kget, P.KDEL: self._kdel,
                P.KLIST: self._klist, P.KEXPIRE: self._kexpire, P.KCLAIM: self._kclaim,
                P.KRELEASE: self._krelease, P.KHOME: self._khome, P.KWHERE: self._kwhere}

    def _kput(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        # who wrote it, as this agent authenticated them (never what the client says): a reader
        # unpickles only records with a writer (mesh/client/objects.py)
        f["record"]["writer"] = req.caller.name if req.caller is not None else None
        if f["record"].get("block"):
            self.store.served(f["record"]["block"])
        # short of room for the record: evictable keys make it (agents/eviction.py)
        record = self.evictor.making_room(lambda: self.store.put_key(
            f["key"], f["record"], f["replace"], time.time()))
        self.evictor.stored(f["key"], record.get("evictable") is True)
        self._reply(identity, req, self.shown(record))

    def shown(self, record: dict) -> dict:
        """A record as KPUT, KGET, KLIST and KEXPIRE answer it: with its block's copies and
        time to live."""
        if not record["block"]:
            return record
        return {**record, **self._describe(record["block"]), **self._lifetime(record)}

    def _lifetime(self, record: dict) -> dict:
        """``expires`` (epoch seconds) of a record whose own block has a time to live."""
        try:
            block = self.store.get(record["block"])
        except MeshError:
            return {}
        return {"expires": block.expires} if record["owns_block"] and block.expires else {}

    def _kget(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, self.store.get_key(req.fields["key"]))

    def _kexpire(self, identity: bytes, req: P.Request) -> None:
        """Give a key's own block a time to live from now (``ttl_s``), or none."""
        key, ttl_s = req.fields["key"], req.fields.get("ttl_s")
        if ttl_s is not None and not 0 < ttl_s < float("inf"):
            raise InvalidRequest(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        record = self.store.get_key(key)
        if not record["block"] or not record["owns_block"]:
            raise InvalidRequest(
                f"key {key!r} has no block of its own (an empty object, or one stored into "
                "another block with block_id=): only the block it names could expire")
        block = self.store.served(record["block"])
        self.store.check_still(block)
        if ttl_s is None:
            block.expires = block.expires_at = None
        else:
            self.store.set_lifetime(block, time.time() + ttl_s, pending=False)
        self._reply(identity, req, self.shown(self.store.get_key(key)))

    def _kdel(self, identity: bytes, req: P.Request) -> None:
        freed = self.store.delete_key(req.fields["key"])
        self._reply(identity, req, {"key": req.fields["key"], "freed_block": freed})

    # a key's home (agents/keyhome.py): claims of puts in progress, where keys were published

    def _kclaim(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        self.homes.claim(f["key"], f["token"], float(f["ttl_s"]), time.monotonic())
        self._reply(identity, req, {"key": f["key"], "home": self.node})

    def _krelease(self, identity: bytes, req: P.Request) -> None:
        released = self.homes.release(req.fields["key"], req.fields["token"])
        self._reply(identity, req, {"key": req.fields["key"], "released": released})

    def _khome(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        self.homes.settle(f["key"], f["token"], f["node"], f["replace"], time.monotonic())
        self._reply(identity, req, {"key": f["key"], "node": f["node"]})

    def _kwhere(self, identity: bytes, req: P.Request) -> None:
        node, claimed = self.homes.where(req.fields["key"], time.monotonic())
        self._reply(identity, req, {"key": req.fields["key"], "node": node, "claimed": claimed})

    def _klist(self, identity: bytes, req: P.Request) -> None:
        records, cursor = self.store.list_keys(*page(req), max_bytes=P.LIST_PAGE_BYTES)
        self._reply(identity, req, {"node": self.node, "next": cursor,
                                    "keys": [self.shown(r) for r in records]})


def page(req: P.Request) -> tuple[int, int]:
    """(after, limit) of a listing request: from the start and a full page by default (their
    types are checked with the request's other fields, ``mesh/protocol.py``)."""
    after = max(0, req.fields.get("after") or 0)
    limit = req.fields.get("limit") or P.LIST_PAGE_RECORDS
    return after, min(max(1, limit), P.LIST_PAGE_RECORDS)
