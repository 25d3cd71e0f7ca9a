"""Who may speak to this agent, and what they may do: the agent's side of a keyed cluster.

A cluster with keys (``grid keys init``, ``mesh/security/keys.py``) runs every agent socket
authenticated:

- the data ROUTER and the gossip PUB are CURVE servers holding this node's key; a ZAP handler
  (pyzmq's ``zmq.auth.ThreadAuthenticator``, with ``credentials`` below as its callback) lets in
  only keys of the allow-list (the public certificates under the keys directory), and on the
  gossip domain only agents' keys;
- every request names its sender (the ``User-Id`` libzmq attaches after the handshake, the z85
  public key), looked up again for each request, so a revoked key is refused from the moment the
  allow-list is reloaded (``reload``: once a second, when the key files change; or at once on an
  admin's TRUST), not only at its next handshake;
- a client opens a *session* over CURVE (SESSION) and then talks on the sealed ROUTER, where every
  message is AES-256-GCM under that session's key (``mesh/security/seal.py``): ``Sessions``.

``OP_ROLE`` is the one table of the least role each op needs. Roles rank
reader < writer < admin < agent; only agents may send PULL, COMMIT, ABORT and the replica ops (and gossip).

An agent without keys serves everyone who reaches its port, as before (loopback only unless
``--insecure``); ``Access.keyed`` is False and nothing here runs.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import zmq

from mesh import protocol as P
from mesh.errors import AuthenticationError, Forbidden, ProtocolError
from mesh.security import seal

log = logging.getLogger("mesh.agent")

RANK = {"reader": 0, "writer": 1, "admin": 2, "agent": 3}
OP_ROLE: dict[str, str] = {
    **{op: "reader" for op in (P.HELLO, P.PING, P.SESSION, P.READ, P.STAT, P.LIST, P.STATS,
                               P.NODES, P.KGET, P.KLIST, P.KWHERE, P.LOCAL,
                               P.DIRECT)},
    **{op: "writer" for op in (P.ALLOC, P.FREE, P.WRITE, P.KPUT, P.KDEL, P.KEXPIRE, P.KCLAIM, P.KRELEASE,
                               P.KHOME, P.RENEW)},
    P.MOVE: "admin",
    P.MANY: "reader",  # and each of its sub-ops what that op needs (agents/many.py)
    P.RANGES: "reader",  # and its op's role, as MANY's sub-ops
    P.TRUST: "admin",
    **{op: "agent" for op in (P.PULL, P.COMMIT, P.ABORT, P.RSET, P.RWRITE, P.RFREE, P.RKEYS,
                              P.LEASE, P.SUSPECT, P.FENCE)},
}
DATA_DOMAIN = "mesh"
GOSSIP_DOMAIN = "gossip"
RELOAD_EVERY_S = 1.0
MAX_SESSIONS = 16384  # the least recently used goes first
SESSION_IDLE_S = 3600.0  # a client idle this long shakes hands again (mesh/security/link.py)


@dataclass(frozen=True)
class Caller:
    """The authenticated sender of a request."""

    name: str
    role: str
    public: bytes


@dataclass
class Session:
    session_id: bytes
    public: bytes  # the client's key: its role is looked up again for every request
    name: str  # the key's name when the session was made (for errors once it is revoked)
    opener: seal.Opener
    sealer: seal.Sealer
    identity: bytes | None = None  # the sealed ROUTER's identity of its connection, once seen
    used_at: float = field(default_factory=time.monotonic)


class Access:
    """The allow-list, the ZAP handler, role checks and sessions of one agent."""

    def __init__(self, ctx: zmq.Context, keydir: Any | None, node: str):
        self.ctx = ctx
        self.node = node
        self.keydir = keydir
        self.keyed = keydir is not None
        self.allow: dict[bytes, Any] = {}  # public (z85) -> KeyEntry
        self._agents: dict[str, bytes] = {}  # node -> its agent key, from ``allow``
        self.rejected_handshakes = 0
        self.refused_requests = 0  # authenticated, but the role (or a revocation) forbids it
        self.refused_sealed = 0  # sealed messages that did not open
        self.sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._auth = None
        self._stamp: Any = None
        self._checked_at = 0.0
        if self.keyed:
            self.public, self.secret = keydir.agent_key(node)
            self._load()

    # --- the allow-list -------------------------------------------------------------------

    def _load(self) -> None:
        self._stamp = self.keydir.stamp()
        allow = self.keydir.allow_list()
        self._agents = {e.name: public for public, e in allow.items() if e.role == "agent"}
        self.allow = allow  # replaced whole: the ZAP thread reads it

    def reload(self, now: float, force: bool = False) -> None:
        """Reload the allow-list if its files changed (checked at most once a second)."""
        if not self.keyed or (not force and now - self._checked_at < RELOAD_EVERY_S):
            return
        self._checked_at = now
        if force or self.keydir.stamp() != self._stamp:
            before = set(self.allow)
            self._load()
            gone = before - set(self.allow)
            # sessions of keys no longer allowed stay (bounded, they expire): each request of
            # theirs is refused as such (``check``), which tells the client what happened
            log.info("allow-list reloaded: %d keys (%d no longer allowed)", len(self.allow),
                     len(gone))

    def trust(self, entries: list[dict[str, Any]]) -> int:
        """An admin's new allow-list (TRUST): written to this node's key files, then used."""
        if not self.keyed:
            raise ProtocolError(f"node {self.node} runs without keys: nothing to trust",
                                node=self.node)
        self.keydir.write_allow_list(entries)
        self.reload(time.monotonic(), force=True)
        return len(self.allow)

    def agent_public(self, node: str) -> bytes | None:
        return self._agents.get(node)

    # --- the ZAP handler (runs in the authenticator's thread) ------------------------------

    def start(self) -> None:
        if not self.keyed:
            return
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("mesh.agent.zap"))
        self._auth.start()
        for domain in (DATA_DOMAIN, GOSSIP_DOMAIN):
            self._auth.configure_curve_callback(domain, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        entry = self.allow.get(key)
        ok = entry is not None and (domain != GOSSIP_DOMAIN or entry.role == "agent")
        if not ok:
            self.rejected_handshakes += 1
        return ok

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # --- sockets ---------------------------------------------------------------------------

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        """Make ``sock`` (before its bind) a CURVE server of this node's key."""
        if not self.keyed:
            return
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.zap_domain = domain.encode()

    def dial(self, sock: zmq.Socket, server_public: bytes) -> None:
        """Make ``sock`` (before its connect) a CURVE client of ``server_public`` with this
        node's key (gossip SUBs, pulls from peers)."""
        if not self.keyed:
            return
        sock.curve_serverkey = server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    # --- requests --------------------------------------------------------------------------

    def caller_of(self, frame: Any) -> Caller | None:
        """Who sent this frame over a CURVE socket (None: no longer allowed)."""
        try:
            user = frame.get("User-Id")
        except (zmq.ZMQError, AttributeError):
            return None
        return self._caller(user.encode() if isinstance(user, str) else user)

    def caller(self, public: bytes | None) -> Caller | None:
        """Who ``public`` is now (None: no key, or one no longer allowed): the same-host path
        looks its session's key up again for every operation (``agents/local.py``)."""
        return None if public is None else self._caller(public)

    def _caller(self, public: bytes) -> Caller | None:
        entry = self.allow.get(public)
        return None if entry is None else Caller(entry.name, entry.role, public)

    def check(self, op: str, caller: Caller | None, route: Any = None) -> None:
        """``AuthenticationError`` for a key no longer allowed, ``Forbidden`` for a role too
        low; nothing on an agent without keys. ``route``: the request's session, if sealed."""
        if not self.keyed:
            return
        if caller is None:
            self.refused_requests += 1
            name = f"key {route.name!r}" if isinstance(route, Session) else "this client's key"
            raise AuthenticationError(f"node {self.node} refused {name}: it was revoked, or is "
                                      "not (any longer) allowed here", node=self.node)
        need = OP_ROLE.get(op, "agent")
        if RANK[caller.role] < RANK[need]:
            self.refused_requests += 1
            raise Forbidden(f"node {self.node}: {op} needs the {need} role; key {caller.name!r} "
                            f"is a {caller.role}", node=self.node)

    # --- sessions --------------------------------------------------------------------------

    def new_session(self, caller: Caller) -> tuple[bytes, bytes]:
        """A session for ``caller`` (SESSION over CURVE): (session id, key)."""
        session_id, key = seal.new_session()
        self.sessions[session_id] = Session(
            session_id, caller.public, caller.name,
            seal.Opener(session_id, key, seal.TO_AGENT),
            seal.Sealer(session_id, key, seal.TO_CLIENT),
        )
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session_id, key

    def open(self, identity: bytes, frames: list[Any]) -> tuple[Session, Caller | None, list[Any]]:
        """A sealed message from ``identity``: (its session, its caller, [header, payload?]).
        ``seal.SessionLost`` for a session this agent does not know; ``SealError`` for anything
        that does not open (counted; the caller drops it)."""
        session_id = seal.session_of(frames)
        session = self.sessions.get(session_id) if session_id is not None else None
        if session is None or (session.identity is not None and session.identity != identity):
            self.refused_sealed += 1
            if session_id is not None and session is None:
                raise seal.SessionLost("unknown session")
            raise seal.SealError("not a session of this connection")
        try:
            header, payload = session.opener.open(frames)
        except seal.SealError:
            self.refused_sealed += 1
            raise
        now = time.monotonic()
        session.identity = identity  # bound to the connection that first used it
        session.used_at = now
        self.sessions.move_to_end(session_id)
        return session, self._caller(session.public), [header] if payload is None else [
            header, payload]

    def expire_sessions(self, now: float) -> None:
        while self.sessions:
            sid, oldest = next(iter(self.sessions.items()))
            if now - oldest.used_at < SESSION_IDLE_S:
                break
            del self.sessions[sid]
