"""A key's home agent, seen from the client: which node it is, and the claim a put holds there.

Every key has a home: the live node ranked first for it by rendezvous (highest random weight)
hashing, ``home_order``. Each node scores ``blake2b(node NUL key)``; the highest score wins, so
every client with the same view of the live nodes picks the same home without asking anyone,
and a node joining or leaving moves only the keys whose home it is (or becomes).

A put of a named key (``_put`` in ``mesh/client/objects.py``) runs inside a claim:

1. ``claim``: KCLAIM at the home, with a random token and a time to live that grows with the
   object's size. Another put of the key holding a live claim makes it fail with ``KeyExists``
   (a ``replace`` waits for that put instead, up to the request timeout). A home that does not
   answer gives way to the next node in the order, once.
2. The put checks that the key exists nowhere (unless ``replace``), writes the block and
   publishes the key record on the block's agent (KPUT).
3. ``settle``: KHOME tells the home where the key now lives and ends the claim. If the claim
   was lost meanwhile (it expired and another put took the key) the home refuses, and the put
   removes its own record again and raises ``KeyExists``. A put that fails anywhere else gives
   its claim back (``release``).

``where`` asks the home where a key was last published (lookups that find a key nowhere use it
to name the node to blame); ``forget`` drops that after a delete.

Limits (docs/objects-api.md): two clients whose views of the live nodes differ (a node that
just died or joined, for up to a few heartbeats) may pick different homes and both succeed; a
home that dies takes its claims and places with it (its keys' new home knows none of them,
which only weakens error messages: lookups ask every live agent anyway).

Pure apart from the calls it makes through ``core``. Not here: key records and the put
pipeline (``mesh/client/objects.py``), the agent's side (``agents/keyhome.py``), frames
(``mesh/protocol.py``).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh import protocol as P
from mesh.client.batch import Op
from mesh.errors import KeyExists, MeshError, NodeUnavailable

if TYPE_CHECKING:
    from mesh.client.core import Core

CLAIM_RETRY_S = 0.02  # how soon a replace asks again for a key another put holds
# A claim lives long enough for the put to write its bytes at this slow a rate.
CLAIM_BYTES_PER_S = 20e6


def _score(key: str, node: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def home_order(key: str, nodes: list[str]) -> list[str]:
    """``nodes`` from the key's home on, by rendezvous hashing (ties broken by name)."""
    return sorted(nodes, key=lambda n: (_score(key, n), n), reverse=True)


@dataclass(frozen=True)
class Claim:
    key: str
    token: str
    home: str  # the node's name
    address: str  # its data address


def claim_ttl_s(core: Core, length: int) -> float:
    return 3 * core.settings.request_timeout_s + length / CLAIM_BYTES_PER_S


def claim(core: Core, key: str, replace: bool, length: int) -> Op:
    """Claim ``key`` at its home for one put; returns the ``Claim``."""
    nodes = {n.name: n for n in (yield from core.alive_nodes())}
    order = home_order(key, list(nodes))
    if not order:
        raise NodeUnavailable(f"no live node to be the home of key {key!r}")
    token = os.urandom(12).hex()
    fields = {"key": key, "token": token, "ttl_s": claim_ttl_s(core, length)}
    give_up = time.monotonic() + core.settings.request_timeout_s
    last: MeshError | None = None
    for name in order[:2]:  # the home; the next node only when the home does not answer
        node = nodes[name]
        while True:
            try:
                yield from core.call(node.address, P.KCLAIM, fields,
                                     timeout_s=core.settings.connect_timeout_s)
                return Claim(key, token, name, node.address)
            except KeyExists:
                if not replace or time.monotonic() > give_up:
                    raise
                yield from core.pause(CLAIM_RETRY_S)  # a replace waits for the other put
            except NodeUnavailable as exc:
                last = exc
                break
    assert last is not None
    raise last


def settle(core: Core, claim: Claim, node: str, replace: bool) -> Op:
    """The put published ``claim.key`` on ``node``: end the claim, keep the place."""
    yield from core.call(claim.address, P.KHOME, {
        "key": claim.key, "token": claim.token, "node": node, "replace": replace,
    }, timeout_s=core.settings.connect_timeout_s)


def release(core: Core, claim: Claim) -> Op:
    """Give back the claim of a put that failed (best effort: it expires anyway)."""
    try:
        yield from core.call(claim.address, P.KRELEASE,
                             {"key": claim.key, "token": claim.token},
                             timeout_s=core.settings.connect_timeout_s)
    except MeshError:
        pass


def _home(core: Core, key: str) -> Op:
    nodes = yield from core.alive_nodes()
    order = home_order(key, [n.name for n in nodes])
    return next((n for n in nodes if order and n.name == order[0]), None)


def where(core: Core, key: str) -> Op:
    """(home's name, node the key was last published on) as far as its home knows; names are
    ``""`` when unknown (no live home, or it does not answer)."""
    home = yield from _home(core, key)
    if home is None:
        return "", ""
    try:
        result = yield from core.call(home.address, P.KWHERE, {"key": key},
                                      timeout_s=core.settings.connect_timeout_s)
    except MeshError:
        return home.name, ""
    return home.name, str(result.get("node") or "")


def forget(core: Core, key: str) -> Op:
    """Tell the key's home it was deleted (best effort: a stale place only names a node)."""
    home = yield from _home(core, key)
    if home is None:
        return
    try:
        yield from core.call(home.address, P.KHOME,
                             {"key": key, "token": "", "node": "", "replace": True},
                             timeout_s=core.settings.connect_timeout_s)
    except MeshError:
        pass
