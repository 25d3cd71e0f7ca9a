"""The wire protocol: the only module that builds or parses mesh frames.

Data plane (client DEALER -> agent ROUTER; the ROUTER adds/strips the identity frame)::

    request  = [header, *payload]
    header   = msgpack [VERSION, op, request_id, fields]       (a few hundred bytes at most)
    payload  = raw bytes frames, never inside msgpack (only WRITE carries one)

    reply    = [header, *payload]
    header   = msgpack [VERSION, op, request_id, OK,    result]
             | msgpack [VERSION, op, request_id, ERROR, {"code": str, "message": str}]
    payload  = raw bytes frames (only READ carries one)

Ops and their fields (all sizes and offsets are byte counts, ints >= 0)::

    HELLO  {}                                 -> {node, incarnation, version, address}
    PING   {}                                 -> {node, incarnation}
    ALLOC  {size, lazy, [pending], [ttl_s]}   -> block record
    FREE   {block}                            -> {block, size}
    WRITE  {block, offset}      + 1 payload   -> {block, offset, length}
    READ   {block, offset, length}            -> {block, offset, length}   + 1 payload
    STAT   {block}                            -> block record
    LIST   {[after], [limit]}                 -> {node, blocks: [block record, ...], next}
    STATS  {}                                 -> node record (see heartbeat)
    NODES  {}                                 -> {nodes: [node record with "state", ...]}
    KPUT   {key, record, replace}             -> key record
    KGET   {key}                              -> key record
    KDEL   {key}                              -> {key, freed_block}
    KEXPIRE {key, [ttl_s]}                    -> key record: its block expires ttl_s from now
                                                 (no ttl_s: never); the key must own its block
    KLIST  {[after], [limit]}                 -> {node, keys: [key record, ...], next}
    RENEW  {blocks: [block id, ...]}          -> {renewed: [block id, ...]}
    LOCAL  {}                                 -> {name, [ticket]}: the same-host path's socket
                                                 and, on a keyed cluster, a one-use ticket for
                                                 it (mesh/localwire.py)
    DIRECT {}                                 -> {port}: the direct path's TCP port on the
                                                 data host, 0 when none (mesh/directwire.py)
    MANY   {ops: [[op, fields], ...]}  + 1 payload  -> {results: [[OK, result] |
           [ERROR, {code, message}], ...]}  + 1 payload
    RANGES {op, blocks: [block id, ...], at}  + 1 payload  -> {done: n} | MANY's  + 1 payload

MANY carries up to ``MAX_MANY_OPS`` small operations in one message, answered by one message;
RANGES as many READs, or as many WRITEs, of ranges packed in one ``at`` field, answered
``{done: n}`` when each went as asked (else as MANY is). Their frames and checks:
``mesh/batchwire.py``.

A keyed cluster (``agents/access.py``, ``mesh/security/``): a client shakes hands over CURVE on
the data port and then sends everything, sealed, to the session's endpoint::

    SESSION {}                  (CURVE only)  -> {node, session (8 bytes), key (32 bytes),
                                                  port: the sealed ROUTER's, on the host the
                                                  client reached the data port at}
    TRUST   {entries: [{name, role, public, kind}, ...]}   (admin) -> {node, keys}: the new
                                                  allow-list; revoked keys are refused at once

A key's home agent (rendezvous hashing over the live nodes, ``mesh/client/keyclaims.py``;
``agents/keyhome.py``) serialises puts of the key and remembers where it was published::

    KCLAIM   {key, token, ttl_s}              -> {key, home}      KeyExists while another put
                                                                   (token) holds a live claim
    KRELEASE {key, token}                     -> {key, released}  a failed put gives it back
    KHOME    {key, token, node, replace}      -> {key, node}      the put published the key on
                                                 node: settle its claim, remember node (node ""
                                                 and token "": the key was deleted)
    KWHERE   {key}                            -> {key, node, claimed}    node "" when unknown

Moving a block peer to peer (rebalancing, draining); the master sends only MOVE::

    MOVE   {block, target, timeout_s}  to the source  -> {block, from, to, size, checksum, seconds}
           (a replicated block: to its primary, with [source], the node whose copy moves;
           the target gets a copy first, then the set leaves the source out)
    PULL   {block, source, size, created, lazy[, pending, ttl_s, checksum_algorithm]}  source
                                      -> target: the target makes an incoming block with the
                                      same id (still pending, and with the time to live it has
                                      left, if any), READs it from the source in chunks and
                                      answers {block, size, checksum}: its copy's checksum by
                                      checksum_algorithm ("xxh3"; absent: "crc32", a source of
                                      the previous version), "xxh3:<16 hex>" (mesh/checksum.py)
    COMMIT {block, keys}               source -> target: the copy is verified; the target takes the
                                      key records and serves the block -> {block}
    ABORT  {block}                     source -> target: drop an incoming copy -> {block, dropped}

Replicas (``agents/replication.py``, ``docs/durability.md``), agent to agent; ``from`` and
``inc`` name the sender and its incarnation, ``epoch`` the replica set it writes in::

    RSET   {block, from, inc, set: {epoch, nodes, syncing}, size, lazy, created, want, spread,
            keys[, expires, pending, incs: {member: its incarnation}]}      the primary -> each member: install the set (making
                                           the copy when this member is new to it); a member
                                           it leaves out drops its copy -> {block, epoch}
    RWRITE {block, from, inc, epoch, offset} + 1 payload   a forwarded write, or a chunk of a
                                           repair's copy -> {block, offset, length}
    RFREE  {block, from, inc, epoch}       -> {block}
    RKEYS  {block, from, inc, epoch, keys[, expires]} the block's key records, all of them,
                                           and its time to live (0: none) -> {block}
    LEASE  {from, inc}                     -> {node, ok}: ok false once this agent has moved
                                           on from that incarnation (it must drop every copy
                                           it shares with this agent)
    SUSPECT {node, inc}                    -> {node, dead}: whether this agent, too, has that
                                           incarnation of node dead (a majority must, before
                                           any agent moves on from a silent node)
    FENCE   {from, inc}                    -> {node}: the sender moved on from this agent, which
                                           drops every copy it shares with the sender (then
                                           the sender takes it as a copy target again)

A member refuses a change from an older epoch or from a sender that is not its set's primary
with ``stale_epoch``; a copy that cannot serve answers ``not_current`` (the client retries at
the primary). ALLOC takes ``replicas`` (copies, 1 by default) and ``spread`` ("host" or "node").

While a block moves, the source refuses writes, frees and key changes on it with code "moving"
(clients retry); reads go on until the source sends COMMIT, and are refused the same way from
then until the source has freed its copy (a few ms), so no one reads the old copy once the new
one may take writes.

A key record names a range of one of this agent's blocks plus metadata::

    {key, block ("" for a 0-byte object), offset, length, content_type, checksum, owns_block,
     meta, created, node}

Every request may carry ``deadline`` in its fields (float, wall-clock epoch seconds): when the
client gives up on it, less ``mesh.clock_skew_s``. The agent checks it before applying the
request (again when a deferred write is retried) and answers a late one with ERROR
``deadline_exceeded``, having applied nothing, so a write that timed out at its client never
lands later. Clocks must agree within ``clock_skew_s``.

Listings are paged (``agents/paging.py``): ``after`` is a cursor (0, the default, to start),
``limit`` at most ``LIST_PAGE_RECORDS``; a reply holds at most that many records (KLIST: also at
most ``LIST_PAGE_BYTES`` of them) and ``next``, the cursor to ask with for the rest, or nil at
the end. A client lists a node by asking until ``next`` is nil.

Leases and lifetimes (``agents/store.py``): ALLOC ``pending: true`` makes a block for a named
put; it lives while its client renews it (any WRITE, STAT or RENEW naming it) within the
cluster's ``mesh.lease_s``, until a KPUT publishes a key naming it. ALLOC ``ttl_s`` (seconds > 0)
frees the block that long after it was made. The agent frees both on its heartbeat timer.

A block record is ``{block, node, size, lazy, created, expires (epoch seconds or nil), pending}``. A request whose header cannot be
parsed gets an ERROR reply with ``request_id`` 0 and op "?" when the agent can still reply.

Gossip plane (agent PUB -> peer SUB), one message of two frames::

    [b"hb", msgpack {node, address, gossip, incarnation, version, capacity, used,
                     host_available, host_total, blocks, security,
                     peers: [{...same fields..., age_s}, ...]}]

What this module does not do: sockets, timers, block memory. The agent (``agents/``) and the
client (``mesh/client/drivers.py``) drive sockets and call these functions; ``mesh/errors.py`` maps error
codes to exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import msgpack

from mesh.errors import ProtocolError, VersionMismatch, error_from_wire, MeshError

VERSION = 1

HELLO = "hello"
PING = "ping"
ALLOC = "alloc"
FREE = "free"
WRITE = "write"
READ = "read"
STAT = "stat"
LIST = "list"
STATS = "stats"
NODES = "nodes"
KPUT = "kput"
KGET = "kget"
KDEL = "kdel"
KEXPIRE = "kexpire"
KLIST = "klist"
KCLAIM = "kclaim"
KRELEASE = "krelease"
KHOME = "khome"
KWHERE = "kwhere"
RENEW = "renew"
SESSION = "session"
TRUST = "trust"
MOVE = "move"
PULL = "pull"
COMMIT = "commit"
ABORT = "abort"
RSET = "rset"
RWRITE = "rwrite"
RFREE = "rfree"
RKEYS = "rkeys"
LEASE = "lease"
SUSPECT = "suspect"
FENCE = "fence"
MANY = "many"
RANGES = "ranges"
LOCAL = "local"
DIRECT = "direct"

OK = 0
ERROR = 1

DEADLINE = "deadline"  # optional field of any request (see the docstring)

HEARTBEAT_TOPIC = b"hb"

# A request header is tiny; anything bigger is garbage and is refused before unpacking.
MAX_HEADER_BYTES = 64 * 1024
# Replies to LIST/NODES can be large on a big mesh, but never unbounded.
MAX_REPLY_HEADER_BYTES = 64 * 1024 * 1024
MAX_HEARTBEAT_BYTES = 1024 * 1024
# One page of a listing (LIST, KLIST): at most this many records, KLIST at most ~this many bytes.
LIST_PAGE_RECORDS = 1000
LIST_PAGE_BYTES = 1024 * 1024
# A MANY (or RANGES) request: at most this many sub-ops (ranges; its header, like every one, at
# most MAX_HEADER_BYTES), and this many payload bytes each way.
MAX_MANY_OPS = 256
MAX_MANY_BYTES = 1024 * 1024

_INT = (int,)

# op -> (required fields with their types, number of payload frames)
_REQUEST_SCHEMA: dict[str, tuple[dict[str, tuple[type, ...]], int]] = {
    HELLO: ({}, 0),
    PING: ({}, 0),
    ALLOC: ({"size": _INT, "lazy": (bool,)}, 0),
    FREE: ({"block": (str,)}, 0),
    WRITE: ({"block": (str,), "offset": _INT}, 1),
    READ: ({"block": (str,), "offset": _INT, "length": _INT}, 0),
    STAT: ({"block": (str,)}, 0),
    LIST: ({}, 0),
    STATS: ({}, 0),
    NODES: ({}, 0),
    KPUT: ({"key": (str,), "record": (dict,), "replace": (bool,)}, 0),
    KGET: ({"key": (str,)}, 0),
    KDEL: ({"key": (str,)}, 0),
    KEXPIRE: ({"key": (str,)}, 0),
    KLIST: ({}, 0),
    KCLAIM: ({"key": (str,), "token": (str,), "ttl_s": (int, float)}, 0),
    KRELEASE: ({"key": (str,), "token": (str,)}, 0),
    KHOME: ({"key": (str,), "token": (str,), "node": (str,), "replace": (bool,)}, 0),
    KWHERE: ({"key": (str,)}, 0),
    MOVE: ({"block": (str,), "target": (str,), "timeout_s": (int, float)}, 0),
    PULL: ({"block": (str,), "source": (str,), "size": _INT, "created": (int, float),
            "lazy": (bool,)}, 0),
    COMMIT: ({"block": (str,), "keys": (list,)}, 0),
    ABORT: ({"block": (str,)}, 0),
    RENEW: ({"blocks": (list,)}, 0),
    RSET: ({"block": (str,), "from": (str,), "inc": _INT, "set": (dict,), "size": _INT,
            "lazy": (bool,), "created": (int, float), "want": _INT, "spread": (str,),
            "keys": (list,)}, 0),
    RWRITE: ({"block": (str,), "from": (str,), "inc": _INT, "epoch": _INT, "offset": _INT}, 1),
    RFREE: ({"block": (str,), "from": (str,), "inc": _INT, "epoch": _INT}, 0),
    RKEYS: ({"block": (str,), "from": (str,), "inc": _INT, "epoch": _INT, "keys": (list,)}, 0),
    LEASE: ({"from": (str,), "inc": _INT}, 0),
    SUSPECT: ({"node": (str,), "inc": _INT}, 0),
    FENCE: ({"from": (str,), "inc": _INT}, 0),
    SESSION: ({}, 0),
    TRUST: ({"entries": (list,)}, 0),
    MANY: ({"ops": (list,)}, 1),
    RANGES: ({"op": (str,), "blocks": (list,), "at": (bytes,)}, 1),
    LOCAL: ({}, 0),
    DIRECT: ({}, 0),
}
OPS = frozenset(_REQUEST_SCHEMA)
MANY_OPS = frozenset({READ, WRITE, STAT, ALLOC, FREE, KPUT, KGET, KDEL, KCLAIM, KRELEASE,
                      KHOME, KWHERE})
# op -> optional fields with their types (checked when present)
_OPTIONAL_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    ALLOC: {"pending": (bool,), "ttl_s": (int, float), "replicas": _INT, "spread": (str,)},
    RSET: {"expires": (int, float), "pending": (bool,), "incs": (dict,)},
    MOVE: {"source": (str,)},
    LIST: {"after": _INT, "limit": _INT},
    KLIST: {"after": _INT, "limit": _INT},
    KEXPIRE: {"ttl_s": (int, float)},
    RKEYS: {"expires": (int, float)},
}


@dataclass(slots=True)
class Request:
    op: str
    request_id: int
    fields: dict[str, Any]
    payload: list[Any] = field(default_factory=list)  # zmq.Frame or bytes-like
    caller: Any = None  # who sent it, on a keyed agent (agents/access.py: Caller)
    arrived: float = 0.0  # when the agent took it in (time.perf_counter; for its metrics)


@dataclass(slots=True)
class Reply:
    op: str
    request_id: int
    ok: bool
    body: dict[str, Any]
    payload: list[Any] = field(default_factory=list)

    def raise_for_error(self, node: str | None = None) -> None:
        if not self.ok:
            raise error_from_wire(
                str(self.body.get("code", "internal")), str(self.body.get("message", "")), node
            )


class BadRequest(Exception):
    """Raised by ``parse_request``; carries what the agent needs to answer anyway."""

    def __init__(self, code: str, message: str, op: str = "?", request_id: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.op = op
        self.request_id = request_id


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpackb(data: bytes, limit: int) -> Any:
    if len(data) > limit:
        raise ValueError(f"header of {len(data)} bytes is over the {limit}-byte limit")
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def _frame_bytes(frame: Any) -> bytes:
    """A header frame's bytes (zmq.Frame or bytes-like); headers are small, so copying is fine."""
    b = getattr(frame, "bytes", None)
    if b is not None:
        return b
    return bytes(frame)


def frame_len(frame: Any) -> int:
    buf = getattr(frame, "buffer", None)
    if buf is not None:
        return buf.nbytes
    return memoryview(frame).nbytes


def frame_view(frame: Any) -> memoryview:
    """A zero-copy view of a payload frame."""
    buf = getattr(frame, "buffer", None)
    if buf is not None:
        return buf
    return memoryview(frame).cast("B")


def chunk_ranges(length: int, chunk_bytes: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """(offset, length) of each chunk of a transfer of ``length`` bytes from ``start``: every
    large READ and WRITE is cut by this one rule (the client's ``mesh/client/transfer.py`` and
    the agent's pull in ``agents/moves.py``), so no message is over one chunk."""
    for i in range(0, length, chunk_bytes):
        yield start + i, min(chunk_bytes, length - i)


# --- requests -----------------------------------------------------------------------------------


def encode_request(op: str, request_id: int, fields: dict[str, Any] | None = None) -> bytes:
    return _packb([VERSION, op, request_id, fields or {}])


def parse_request(frames: Sequence[Any]) -> Request:
    """Check a request's frames (identity already stripped); raise ``BadRequest`` if wrong."""
    if not frames:
        raise BadRequest("bad_frame", "empty message")
    try:
        header = _unpackb(_frame_bytes(frames[0]), MAX_HEADER_BYTES)
    except Exception as exc:  # msgpack raises many types for garbage
        raise BadRequest("bad_frame", f"unreadable header: {exc}") from None
    if not isinstance(header, list) or len(header) != 4:
        raise BadRequest("bad_frame", "header must be [version, op, request_id, fields]")
    version, op, request_id, fields = header
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise BadRequest("bad_frame", "request_id must be an integer")
    if not isinstance(op, str):
        raise BadRequest("bad_frame", "op must be a string", "?", request_id)
    if version != VERSION:
        raise BadRequest(
            "version_mismatch",
            f"protocol version {version!r} is not supported (this agent speaks {VERSION})",
            op,
            request_id,
        )
    schema = _REQUEST_SCHEMA.get(op)
    if schema is None:
        raise BadRequest("unknown_op", f"unknown op {op!r}", op, request_id)
    if not isinstance(fields, dict):
        raise BadRequest("bad_frame", "fields must be a map", op, request_id)
    required, n_payload = schema
    _check_fields(op, fields, required, request_id)
    payload = list(frames[1:])
    if len(payload) != n_payload:
        raise BadRequest(
            "bad_frame",
            f"{op}: expected {n_payload} payload frame(s), got {len(payload)}",
            op,
            request_id,
        )
    return Request(op, request_id, fields, payload)


def _check_fields(op: str, fields: dict[str, Any], required: dict[str, tuple[type, ...]],
                  request_id: int) -> None:
    """``BadRequest`` unless ``fields`` has every required field, and every optional one
    present, of its type (a bool is never taken for a number)."""
    for name, types in required.items():
        value = fields.get(name)
        if value is None:
            raise BadRequest("bad_request", f"{op}: missing field {name!r}", op, request_id)
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise BadRequest(
                "bad_request",
                f"{op}: field {name!r} has the wrong type ({type(value).__name__})",
                op,
                request_id,
            )
    deadline = fields.get(DEADLINE)
    if deadline is not None and (not isinstance(deadline, (int, float))
                                 or isinstance(deadline, bool)):
        raise BadRequest("bad_request", f"{op}: field 'deadline' must be a number", op,
                         request_id)
    for name, types in _OPTIONAL_FIELDS.get(op, {}).items():
        value = fields.get(name)
        if value is not None and (not isinstance(value, types) or
                                  (bool not in types and isinstance(value, bool))):
            raise BadRequest("bad_request", f"{op}: field {name!r} has the wrong type "
                             f"({type(value).__name__})", op, request_id)


def check_fields(op: str, fields: dict[str, Any], request_id: int) -> None:
    """``BadRequest`` unless ``fields`` are right for ``op`` (a sub-op's: ``mesh/batchwire.py``)."""
    _check_fields(op, fields, _REQUEST_SCHEMA[op][0], request_id)


def deadline_for(wall_now: float, timeout_s: float, clock_skew_s: float) -> float:
    """The ``deadline`` of a request sent at ``wall_now`` whose client gives up after
    ``timeout_s``: that moment less the clock skew allowed between client and agent (at most
    half the timeout, so a short request still has time to be served)."""
    return wall_now + timeout_s - min(clock_skew_s, timeout_s / 2)


def past_deadline(fields: dict[str, Any], wall_now: float) -> bool:
    """Whether a request with these fields must be refused at ``wall_now`` (agent's clock)."""
    deadline = fields.get(DEADLINE)
    return deadline is not None and wall_now > deadline


# --- replies ------------------------------------------------------------------------------------


def encode_reply(op: str, request_id: int, result: dict[str, Any] | None = None) -> bytes:
    return _packb([VERSION, op, request_id, OK, result or {}])


def encode_error(op: str, request_id: int, code: str, message: str) -> bytes:
    return _packb([VERSION, op, request_id, ERROR, {"code": code, "message": message}])


def encode_exception(op: str, request_id: int, exc: MeshError) -> bytes:
    return encode_error(op, request_id, exc.code, exc.message)


def parse_reply(frames: Sequence[Any]) -> Reply:
    """Parse a reply; raise ``ProtocolError`` for frames no agent of ours would send."""
    if not frames:
        raise ProtocolError("empty reply")
    try:
        header = _unpackb(_frame_bytes(frames[0]), MAX_REPLY_HEADER_BYTES)
    except Exception as exc:
        raise ProtocolError(f"unreadable reply header: {exc}") from None
    if not isinstance(header, list) or len(header) != 5:
        raise ProtocolError("reply header must be [version, op, request_id, status, body]")
    version, op, request_id, status, body = header
    if version != VERSION:
        raise VersionMismatch(f"agent speaks protocol {version!r}, this client speaks {VERSION}")
    if not isinstance(body, dict) or status not in (OK, ERROR):
        raise ProtocolError("malformed reply body")
    if type(request_id) is not int or not isinstance(op, str):
        raise ProtocolError("a reply's request id must be an integer and its op a string")
    return Reply(op, request_id, status == OK, body, list(frames[1:]))


# --- gossip -------------------------------------------------------------------------------------


def encode_heartbeat(record: dict[str, Any]) -> list[bytes]:
    return [HEARTBEAT_TOPIC, _packb(record)]


_HEARTBEAT_FIELDS: dict[str, tuple[type, ...]] = {
    "node": (str,),
    "address": (str,),
    "gossip": (str,),
    "incarnation": _INT,
    "capacity": _INT,
    "used": _INT,
    "host_available": _INT,
    "blocks": _INT,
}

_RECORD_STRS = tuple(name for name, types in _HEARTBEAT_FIELDS.items() if types == (str,))
_RECORD_INTS = tuple(name for name, types in _HEARTBEAT_FIELDS.items() if types == _INT)
_RECORD_OPTIONAL_INTS = ("room", "host_total", "evictable", "beat_ms", "host_key")


def _valid_record(rec: Any) -> bool:
    """``_HEARTBEAT_FIELDS`` present with exact types (msgpack makes exact str and int; a bool
    is no int here), the optional counts ints or absent. Runs for every record heard."""
    if type(rec) is not dict:
        return False
    get = rec.get
    if any(type(get(name)) is not str for name in _RECORD_STRS) or \
            any(type(get(name)) is not int for name in _RECORD_INTS):
        return False
    for name in _RECORD_OPTIONAL_INTS:
        value = get(name)
        if value is not None and type(value) is not int:
            return False
    return True


def parse_heartbeat(frames: Sequence[Any],
                    moot: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """A heartbeat's record with only well-formed peer entries; ``ProtocolError`` if malformed.

    ``moot(entry)`` is asked first about each relayed entry, whatever its shape: True leaves it
    out unchecked (it could change nothing for the caller: ``MembershipTable.moot``)."""
    if len(frames) != 2 or _frame_bytes(frames[0]) != HEARTBEAT_TOPIC:
        raise ProtocolError("not a heartbeat")
    try:
        rec = _unpackb(_frame_bytes(frames[1]), MAX_HEARTBEAT_BYTES)
    except Exception as exc:
        raise ProtocolError(f"unreadable heartbeat: {exc}") from None
    if not _valid_record(rec):
        raise ProtocolError("heartbeat is missing fields")
    peers = rec.get("peers")
    good = []
    if type(peers) is list:
        for p in peers:
            if moot is not None and moot(p):
                continue
            age = p.get("age_s") if type(p) is dict else None
            if _valid_record(p) and type(age) in (int, float) and age >= 0:
                good.append(p)
    rec["peers"] = good
    return rec
