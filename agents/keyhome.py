"""What an agent keeps as the home of keys: claims of puts in progress and where keys live.

Every key has a home agent, chosen by the client by rendezvous hashing over the live nodes
(``mesh/client/keyclaims.py``). A put of a key first claims it at its home (KCLAIM), so two puts
of one key at once are serialised there: the second is refused with ``KeyExists`` while the
first holds the claim. When the put has published its record on the agent that holds the block
(KPUT) it settles the claim (KHOME), and the home keeps a pointer to that agent, which tells a
lookup that finds the key nowhere which node to blame when that node is not alive (KWHERE). A
failed put releases its claim (KRELEASE); a claim never settled expires after its time to live.

Pure: no sockets, no clock (callers pass ``now``, monotonic seconds). Bounded: at most
``MAX_CLAIMS`` claims and ``MAX_POINTERS`` pointers (the oldest pointers are dropped first:
they only improve error messages). The ops are drawn in ``mesh/protocol.py``; the key records
themselves live in ``agents/store.py``.
"""

from __future__ import annotations

from collections import OrderedDict

from mesh.errors import CapacityError, KeyExists

MAX_CLAIM_S = 3600.0  # the longest time to live a claim may ask for
CLAIM_KEEP_S = 600.0  # an expired claim is still honoured at settle for this long
MAX_CLAIMS = 100_000
MAX_POINTERS = 1_000_000


class KeyHomes:
    def __init__(self, node: str):
        self.node = node
        self._claims: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (token, until)
        self._where: OrderedDict[str, str] = OrderedDict()  # key -> node holding its record

    def claim(self, key: str, token: str, ttl_s: float, now: float) -> None:
        """Claim ``key`` for the put ``token``; ``KeyExists`` while another put holds it."""
        held = self._claims.get(key)
        if held is not None and held[0] != token and held[1] > now:
            raise KeyExists(f"key {key!r} is being put by another client (its home is node "
                            f"{self.node}); retry, or delete it first", node=self.node)
        self._expire(now)
        if len(self._claims) >= MAX_CLAIMS and key not in self._claims:
            raise CapacityError(f"node {self.node} holds {MAX_CLAIMS} claims of puts in "
                                "progress; retry shortly", node=self.node)
        self._claims[key] = (token, now + min(max(ttl_s, 0.0), MAX_CLAIM_S))
        self._claims.move_to_end(key)

    def release(self, key: str, token: str) -> bool:
        """Drop the claim of ``token`` (a put that failed); True if it held one."""
        held = self._claims.get(key)
        if held is not None and held[0] == token:
            del self._claims[key]
            return True
        return False

    def settle(self, key: str, token: str, node: str, replace: bool, now: float) -> None:
        """The put ``token`` published ``key`` on ``node`` (``""``: the key was deleted).

        Refused with ``KeyExists`` when the claim is no longer this put's (it expired) and
        another put holds it now, or (for a new key) has published the key meanwhile."""
        held = self._claims.get(key)
        if token and (held is None or held[0] != token):
            if held is not None and held[1] > now:
                raise KeyExists(f"key {key!r} was claimed by another put while this one ran "
                                "past its claim", node=self.node)
            if not replace and key in self._where:
                raise KeyExists(f"key {key!r} was put by another client while this put ran "
                                f"past its claim (it is on node {self._where[key]})",
                                node=self.node)
        if token and held is not None and (held[0] == token or held[1] <= now):
            del self._claims[key]
        if node:
            self._where[key] = node
            self._where.move_to_end(key)
            while len(self._where) > MAX_POINTERS:
                self._where.popitem(last=False)
        else:
            self._where.pop(key, None)

    def where(self, key: str, now: float) -> tuple[str, bool]:
        """(node the key was last published on or ``""``, whether a put holds a claim on it)."""
        held = self._claims.get(key)
        return self._where.get(key, ""), held is not None and held[1] > now

    def _expire(self, now: float) -> None:
        """Forget claims expired for longer than ``CLAIM_KEEP_S`` (oldest first)."""
        for key, (_, until) in list(self._claims.items())[:64]:
            if until + CLAIM_KEEP_S < now:
                del self._claims[key]
