"""How an agent connects out to another agent (``Dialing``, a base class of ``Agent`` in
``agents/server.py``): only to a node of its membership table that has spoken for itself, and on
a keyed cluster through a CURVE handshake and a sealed session (``mesh/security/link.py``).
Moves and pulls (``agents/moves.py``) dial with ``_dial_peer`` on their threads; replica links
(``agents/replica_links.py``) with ``_dial_link`` on theirs.
"""

from __future__ import annotations

import time
from typing import Any

from mesh import sockets
from mesh.errors import InvalidRequest
from mesh.security import link as links

PEER_HANDSHAKE_S = 5.0  # a handshake with a peer, at most
REPLICA_LINK_HWM = 1024  # messages queued in libzmq on a replica link


class Dialing:
    def _member_node(self, address: str) -> str | None:
        """The node (not this one) at ``address`` that has spoken for itself and is not dead,
        or None: hearsay alone never makes an agent connect out to an address."""
        node = self.members.vouched_at(address, time.monotonic())
        return node if node != self.s.node else None

    def _dial_peer(self, address: str, *, hwm: int, max_message_bytes: int) -> Any:
        """A connection to another agent (a move's target, a pull's source): only to a node of
        the membership table, and on a keyed cluster authenticated and sealed both ways."""
        node = self._member_node(address)
        if node is None:
            raise InvalidRequest(f"{address} is not the address of another agent of this mesh")
        if not self.access.keyed:
            return sockets.dealer(self.ctx, address, hwm=hwm, max_message_bytes=max_message_bytes)
        server_key = self.access.agent_public(node)
        if server_key is None:
            raise InvalidRequest(f"node {node} has no agent key in this cluster's allow-list")
        return links.BlockingPeer(links.run_blocking(links.handshake(
            self.ctx, address, server_key=server_key, public=self.access.public,
            secret=self.access.secret, key_name=self.s.node, timeout_s=PEER_HANDSHAKE_S, hwm=hwm,
            max_message_bytes=max_message_bytes, close=lambda sock: sock.close(0), node=node)))

    def _dial_link(self, node: str, address: str) -> Any:
        """A replication link to ``node`` (run on a worker thread: a handshake blocks)."""
        max_bytes = self.s.max_message_bytes + (1 << 16)
        if not self.access.keyed:
            return links.PlainLink(sockets.dealer(self.ctx, address, hwm=REPLICA_LINK_HWM,
                                                  max_message_bytes=max_bytes), None)
        server_key = self.access.agent_public(node)
        if server_key is None:
            raise InvalidRequest(f"node {node} has no agent key in this cluster's allow-list")
        return links.run_blocking(links.handshake(
            self.ctx, address, server_key=server_key, public=self.access.public,
            secret=self.access.secret, key_name=self.s.node, timeout_s=PEER_HANDSHAKE_S,
            hwm=REPLICA_LINK_HWM, max_message_bytes=max_bytes, close=lambda sock: sock.close(0), node=node))
