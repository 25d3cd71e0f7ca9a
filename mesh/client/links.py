"""A client's links, one per agent address (``mesh/security/link.py``: plain, or sealed after a
CURVE handshake), and the public keys it knows agents by.

An agent's key comes from the client's key file (``agent.<node>`` lines, or the keys directory
on the master), and then from NODES replies of agents already authenticated: an agent we trust
tells us how to recognise its peers (``mesh/membership.py``: ``NodeInfo.key``). A client never
takes a key from anyone it has not authenticated, so a forged heartbeat or a fake endpoint
cannot make it talk to an impostor.

A link whose agent has not completed a handshake soon after it was made is probed
(``mesh/client/reach.py``): when nothing listens at its address, ``refused`` says so at once
(``NodeUnavailable``) instead of letting its requests wait their timeout, and ``unreached``
keeps why and when, for the caller's summary ("no mesh agent answered: ...") and its membership
view (a node found not listening is suspect until it is heard again).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import zmq

from mesh.client.batch import Op, Wait
from mesh.client.reach import Reach
from mesh.config import MeshSettings
from mesh.errors import AuthenticationError, MeshError, NodeUnavailable
from mesh.security import link as links


class Links:
    def __init__(self, ctx: zmq.Context, settings: MeshSettings, key: Any):
        self.ctx = ctx
        self.settings = settings
        self.key = key  # a ClientKey (mesh/security/keys.py), or None: plain links
        self.live: dict[str, links.Link] = {}
        # agent address -> its public key
        self.server_keys: dict[str, bytes] = {
            address: public for address, public in (key.agents.values() if key else ())}
        self.refused_replies = 0  # sealed replies that did not open (dropped)
        # called with each socket just before it is closed (a driver that watches sockets from
        # an event loop unhooks them there: AsyncMeshClient)
        self.before_close: Callable[[zmq.Socket], None] | None = None
        self.reach = Reach()
        self._made: dict[str, tuple[float, str | None]] = {}  # address -> (when, node name)
        # address -> (why nothing listens there, when that was found): its last link's fate
        self.unreached: dict[str, tuple[str, float]] = {}

    def learn(self, rec: dict[str, Any]) -> None:
        """A node record from an authenticated agent's NODES reply: remember its key."""
        if self.key is not None and isinstance(rec.get("key"), bytes):
            self.server_keys[rec["address"]] = rec["key"]

    def get(self, address: str, node: str | None) -> Op:
        found = self.live.get(address)
        if found is not None and not found.stale(time.monotonic()):
            return found
        self.drop(address)
        self.unreached.pop(address, None)
        self._made[address] = (time.monotonic(), node)
        hwm = max(64, 4 * self.settings.window)
        if self.key is None:
            made: links.Link = links.plain(
                self.ctx, address, hwm=hwm, max_message_bytes=self.settings.max_message_bytes)
        else:
            server_key = self.server_keys.get(address)
            if server_key is None and node is not None and node in self.key.agents:
                server_key = self.key.agents[node][1]
            if server_key is None:
                raise AuthenticationError(
                    f"no public key is known for the agent at {address}"
                    + (f" (node {node})" if node else "")
                    + f": key {self.key.name!r} lists no such agent; issue a new key "
                    "(`grid keys add`) or connect through an agent it lists", node=node)
            made = yield from self._probed(address, node, links.handshake(
                self.ctx, address, server_key=server_key, public=self.key.public,
                secret=self.key.secret, key_name=self.key.name,
                timeout_s=self.settings.connect_timeout_s, hwm=hwm,
                max_message_bytes=self.settings.max_message_bytes, close=self.close_socket,
                node=node))
            self.reach.forget(address)  # the agent answered the handshake
        self.live[address] = made
        return made

    def _probed(self, address: str, node: str | None, handshake: Op) -> Op:
        """Run ``handshake``, probing ``address`` while it has no answer: when nothing listens
        there, it stops at once with ``NodeUnavailable``."""
        made_at = time.monotonic()
        wait = next(handshake)
        try:
            while True:
                silent_s = time.monotonic() - made_at
                look = self.reach.poll_s(address, silent_s)
                ready = yield Wait(wait.sockets, wait.timeout_s if look is None
                                   else min(wait.timeout_s, look))
                error = self._unreached(address, node, time.monotonic() - made_at)
                if error is not None:
                    raise error
                wait = handshake.send(ready)
        except StopIteration as stop:
            return stop.value
        finally:
            handshake.close()  # its sockets, when it stopped early

    def _unreached(self, address: str, node: str | None, silent_s: float) -> MeshError | None:
        why = self.reach.look(address, silent_s)
        if why is None:
            return None
        self.reach.forget(address)
        self.unreached[address] = (why, time.monotonic())
        where = f"{node} ({address})" if node else address
        return NodeUnavailable(f"{where} {why}: no agent listens there", node=node)

    def poll_s(self, addresses: Any) -> float | None:
        """How long a wait for replies from ``addresses`` may last before the probes of the
        links among them that have not shaken hands need looking at (None: no limit)."""
        now = time.monotonic()
        looks = [self.reach.poll_s(a, now - self._made[a][0]) for a in addresses
                 if a in self.live and not self.live[a].sealed and not self.live[a].shaken
                 and a in self._made]
        return min((x for x in looks if x is not None), default=None)

    def close_socket(self, sock: zmq.Socket) -> None:
        if self.before_close is not None:
            self.before_close(sock)
        sock.close(0)

    def monitors(self, addresses: list[str]) -> list[zmq.Socket]:
        """The monitors of the links to ``addresses`` (``mesh/security/link.py``)."""
        return [m for a in addresses
                if (m := getattr(self.live.get(a), "monitor", None)) is not None]

    def refused(self, address: str) -> MeshError | None:
        """The error if the link to ``address`` failed its handshake (``AuthenticationError``)
        or lost its connection (``NodeUnavailable``: the agent was killed or restarted); the
        link is dropped then, and the next request makes a new one."""
        found = self.live.get(address)
        if found is None:
            return None
        error = found.refused(address, self.close_socket)
        if error is None and not found.sealed and address in self._made:
            made_at, node = self._made[address]
            if found.shaken:
                self.reach.forget(address)
                del self._made[address]
            else:
                error = self._unreached(address, node, time.monotonic() - made_at)
        if error is not None:
            self.drop(address)
        return error

    def drop(self, address: str) -> None:
        self.reach.forget(address)
        self._made.pop(address, None)
        found = self.live.pop(address, None)
        if found is not None:
            found.unwatch(self.close_socket)
            self.close_socket(found.sock)

    def close(self) -> None:
        for address in list(self.live):
            self.drop(address)
        self.reach.close()
