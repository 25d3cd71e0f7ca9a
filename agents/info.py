"""The agent's answers about itself (``InfoOps``, a base class of ``Agent`` in
``agents/server.py``, working on its state): HELLO, PING, STATS, NODES, SESSION, TRUST, RENEW,
and its own heartbeat record. Apart only to keep the server module readable.
"""

from __future__ import annotations

import time
from typing import Any

from mesh import protocol as P
from mesh.errors import InvalidRequest, MeshError
from mesh.membership import ALIVE, NodeInfo


class InfoOps:
    def _hello(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, {
            "node": self.s.node,
            "incarnation": self.incarnation,
            "version": self.s.version,
            "protocol": P.VERSION,
            "address": self.address,
            "max_message_bytes": self.s.max_message_bytes,
        })

    def _ping(self, identity: bytes, req: P.Request) -> None:
        self._reply(identity, req, {"node": self.s.node, "incarnation": self.incarnation})

    def _stats(self, identity: bytes, req: P.Request) -> None:
        rec = self.self_record()
        rec["reserve"] = self.s.reserve_bytes
        rec["dropped_replies"] = self.dropped_replies
        rec["loop_errors"] = self.loop_errors
        rec["connections"] = self.guard.connections
        rec["connection_unbinds"] = self.guard.unbinds
        rec["late_requests"] = self.late_requests
        rec["reads_served"] = self.reads_served
        rec["ops"] = self.metrics.ops()  # cumulative: ``grid top`` makes rates of them
        rec["uptime_s"] = self.metrics.uptime_s()
        rec["metrics_url"] = self.metrics_endpoint.url
        ev = self.evictor
        rec["evictions"] = {"policy": ev.policy, "count": ev.evictions, "bytes": ev.evicted_bytes}
        rec["replicas"] = {"copies": len(self.repl.copies), "repairs": self.repl.repairs,
                           "moved_on": self.repl.moved_on_count}
        rec["local"] = self.local.describe()  # the same-host path (agents/local.py)
        rec["direct"] = self.direct.describe()  # plain TCP (agents/direct.py)
        a = self.access
        rec["sealed_port"] = self.sealed_port
        rec["auth"] = {"rejected_handshakes": a.rejected_handshakes,
                       "refused_requests": a.refused_requests, "refused_sealed": a.refused_sealed,
                       "sessions": len(a.sessions), "gossip_heard": self.gossip.heard,
                       "gossip_rejected": self.gossip.rejected}
        self._reply(identity, req, rec)

    def _nodes(self, identity: bytes, req: P.Request) -> None:
        now = time.monotonic()
        self.members.observe(self.self_record(), now)
        nodes = self.members.snapshot(now)
        if self.access.keyed:  # each node's key, so a client can shake hands with it
            for rec in nodes:
                rec["key"] = self.access.agent_public(rec["node"])
        self._reply(identity, req, {"nodes": nodes})

    def _session(self, identity: bytes, req: P.Request) -> None:
        if not isinstance(identity, bytes) or req.caller is None:
            raise InvalidRequest("SESSION is asked over CURVE, on a keyed agent's data port")
        session_id, key = self.access.new_session(req.caller)
        self._reply(identity, req, {"node": self.s.node, "session": session_id, "key": key,
                                    "port": self.sealed_port})

    def _trust(self, identity: bytes, req: P.Request) -> None:
        count = self.access.trust(req.fields["entries"])
        self._reply(identity, req, {"node": self.s.node, "keys": count})

    def _renew(self, identity: bytes, req: P.Request) -> None:
        renewed = []
        for block_id in req.fields["blocks"][:P.LIST_PAGE_RECORDS]:
            try:
                if isinstance(block_id, str) and self.store.renew(self.store.served(block_id)):
                    renewed.append(block_id)
            except MeshError:
                continue  # not here (any more): the caller sees it missing from ``renewed``
        self._reply(identity, req, {"renewed": renewed})
    def self_record(self) -> dict[str, Any]:
        mem = self.host_memory()  # one reading for every field below
        return NodeInfo(
            name=self.s.node, address=self.address, gossip=self.gossip_address,
            incarnation=self.incarnation, version=self.s.version, state=ALIVE, age_s=0.0,
            capacity=self.store.capacity_for(mem), used=self.store.used,
            room=self.store.room(mem), host_available=int(mem.available),
            host_total=int(mem.total), blocks=len(self.store), security=self._security(),
            domain=self.s.domain, evictable=self.evictor.evictable_bytes(),
            # (0 unless it beats less often than the cluster's interval: Agent._beat)
            beat_ms=round(self.beat_s * 1000) if self.beat_s > self.s.heartbeat_interval_s
            else 0, host_key=self.host_key,
        ).record()

    def _security(self) -> str:
        if self.access.keyed:
            return "keyed"
        return "insecure" if self.s.insecure else "loopback"
