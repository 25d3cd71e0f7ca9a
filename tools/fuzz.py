#!/usr/bin/env python3
"""A fuzzing benchmark of everything that reads bytes a peer chose (not a test: the short run in
``tests/unit/test_fuzz.py`` is).

    python tools/fuzz.py [--inputs 1000000] [--seed 1] [--targets a,b] [--jobs 1]
                         [--hypothesis-inputs 500] [--json]

Targets, each fed an equal share of ``--inputs``:

- ``parse_request``  (``mesh/protocol.py``, the agent's side): a ``Request`` or
  ``BadRequest``/``MeshError``. A Request must also have a known op, an int request id, the
  op's required fields with their types and its number of payload frames.
- ``parse_reply``    (the client's side): a ``Reply`` or ``MeshError``. A Reply must have an int
  request id (the client looks its call up by it) and a str op.
- ``parse_heartbeat`` (gossip): a record with the heartbeat fields, or ``MeshError``.
- ``heartbeat_intake`` (the agent's path, ``Intake``): the same, with ``MembershipTable.moot``
  asked about every relayed entry first and the result merged into one table for the run.
- ``seal_open``      (``mesh/security/seal.py``): one Opener, fed mutated genuine messages of its
  session (bit flips, byte edits, rewritten envelopes, dropped/duplicated/swapped/spliced frames,
  replays, other sessions, reflected replies, "no session" frames, random frames): a result or
  ``SealError``/``SessionLost``. Whatever opens must be exactly what its Sealer sealed under that
  counter, above every counter opened before (no forgery, no replay); a fresh genuine message
  must open; ``SessionLost`` only for exactly ``no_session(this session)``.

Inputs come from a seeded generator driven in a plain loop (``Gen``: structured messages of the
schemas in ``mesh/protocol.py``, with fields of the wrong types, and byte-level mutations):
10,000-80,000 inputs/s per target here, where ``hypothesis`` draws 80-400/s. So hypothesis draws
only the first ``--hypothesis-inputs`` of each target that has a ``strategy`` (at most a fifth of
its share; generate phase only, no database, seeded), for structures the generator does not make.

A finding is an exception outside the target's allowed ones ("exception") or a broken property
("violation"). Per target the report gives inputs, findings, the first few distinct ones (by
exception type and innermost line, or by violation message) with a traceback and the input, and
inputs/s (input generation included). ``--json`` prints as its last line one object
``{"inputs", "uncaught" (all findings), "exceptions", "violations", "seconds", "targets": {...}}``.
Exit code 1 if anything was found.

More targets (the session handshake of ``mesh/security/link.py``): ``register(name, fn,
make_input, allowed=..., check=...)``; ``make_input`` gets a ``Gen`` (a ``random.Random`` with
the mutation helpers). What this does not do: sockets, processes, coverage guidance.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import traceback
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
import zmq  # noqa: E402

from mesh import protocol as P  # noqa: E402
from mesh.errors import ERROR_CODES, MeshError  # noqa: E402
from mesh.membership import MembershipTable  # noqa: E402
from mesh.security import seal as S  # noqa: E402
from mesh.security.link import parse_session  # noqa: E402

MAX_DISTINCT = 5  # findings reported with their input and traceback, per target
MAX_KEYS = 1000  # distinct findings counted, per target
MAX_INPUT_CHARS = 600

# --- inputs -------------------------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 127, 128, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31, -2**31, 2**32,
             2**53 + 1, 2**63 - 1, -2**63, 2**64 - 1]
EDGE_FLOATS = [0.0, -0.0, 0.5, -1.5, 1e308, -1e308, 5e-324, float("nan"), float("inf"),
               float("-inf")]
EDGE_STRS = ["", "?", "hb", "read", "x" * 300, "é", "\u0000", "\U0001f600", "tcp://127.0.0.1:1"]
# msgpack type bytes: nil, never-used 0xc1, bool, bin/ext/float/uint/int/str/array/map sizes
EDGE_BYTES = bytes([0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3,
                    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCF, 0xD0, 0xD3,
                    0xD4, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF])
MSGPACK_INT_MIN, MSGPACK_INT_MAX = -2**63, 2**64 - 1
EPOCH_S = 1.7e9  # a wall-clock time for deadlines and creation times (not now: runs repeat)
NEAR_VALUES = [True, False, 0, 1, -1, 1.0, float("nan"), "1", "", b"1", [], {}, [1], {"": 1}]
REPLY_CODES = sorted(ERROR_CODES) + ["", "no_such_code", "session_lost"]


class Gen(random.Random):
    """A seeded ``random.Random`` with the helpers every target's inputs are made from."""

    def __init__(self, seed: Any):
        super().__init__(seed)
        self.packed: deque[bytes] = deque(maxlen=16)  # recent encodings, for splices

    def coin(self, p: float = 0.5) -> bool:
        return self.random() < p

    def text(self) -> str:
        if self.coin(0.5):
            return self.choice(EDGE_STRS)
        return "".join(self.choice("ab-_.:/0é\u4e2d") for _ in range(self.randrange(12)))

    def int_(self) -> int:
        if self.coin(0.5):
            return self.choice(EDGE_INTS)
        return self.randrange(-1000, 1 << self.randrange(1, 64))

    def value(self, depth: int = 0) -> Any:
        """Any msgpack value: mostly the wrong type for whatever it replaces."""
        k = self.randrange(11 if depth < 3 else 8)
        if k == 0:
            return None
        if k == 1:
            return self.coin()
        if k == 2:
            return self.int_()
        if k == 3:
            return self.choice(EDGE_FLOATS) if self.coin() else self.uniform(-1e6, 1e6)
        if k == 4:
            return self.text()
        if k == 5:
            return self.randbytes(self.randrange(10))
        if k == 6:
            return msgpack.ExtType(self.randrange(128), self.randbytes(self.randrange(10)))
        if k == 7:
            return msgpack.Timestamp(self.randrange(-2**40, 2**40), self.randrange(10**9))
        if k in (8, 9):
            return [self.value(depth + 1) for _ in range(self.randrange(5))]
        keys = [self.text() for _ in range(self.randrange(5))]
        if self.coin(0.2):  # bytes keys pass strict_map_key, and are never our field names
            return {self.randbytes(3): self.value(depth + 1) for _ in keys}
        return {key: self.value(depth + 1) for key in keys}

    def good(self, types: tuple[type, ...]) -> Any:
        """A value of one of ``types`` (bool never stands for int)."""
        t = self.choice(types)
        if t is bool:
            return self.coin()
        if t is int:
            return abs(self.int_()) if self.coin(0.8) else self.int_()
        if t is float:
            return self.choice(EDGE_FLOATS) if self.coin(0.2) else EPOCH_S + self.uniform(-9, 9)
        if t is str:
            return self.text()
        if t is list:
            return [self.text() for _ in range(self.randrange(4))]
        if t is dict:
            return {self.text(): self.value(2) for _ in range(self.randrange(4))}
        return self.value()

    def mutate_bytes(self, data: bytes) -> bytes:
        """1-4 edits: bit flips, type bytes, insertions, deletions, truncation, duplication,
        splices with an earlier encoding."""
        b = bytearray(data)
        for _ in range(self.randrange(1, 5)):
            k = self.randrange(8)
            at = self.randrange(len(b) + 1)
            if k == 0 and b:
                b[at % len(b)] ^= 1 << self.randrange(8)
            elif k == 1 and b:
                b[at % len(b)] = self.choice(EDGE_BYTES)
            elif k == 2:
                b[at:at] = self.randbytes(self.randrange(1, 9))
            elif k == 3:
                del b[at : at + self.randrange(1, 9)]
            elif k == 4:
                del b[at:]
            elif k == 5 and b:
                start = self.randrange(len(b))
                b[at:at] = b[start : start + self.randrange(1, 17)]
            elif k == 6 and self.packed:
                other = self.choice(self.packed)
                b[at:] = other[self.randrange(len(other) + 1):]
            else:
                b[at:at] = bytes([self.choice(EDGE_BYTES)]) + self.randbytes(self.randrange(5))
        return bytes(b)

    def pack(self, obj: Any, p_mutate: float = 0.3) -> bytes:
        data = msgpack.packb(obj, use_bin_type=True)
        self.packed.append(data)
        return self.mutate_bytes(data) if self.coin(p_mutate) else data

    def frame(self, data: bytes) -> Any:
        """``data`` as a receiver may hold it: bytes mostly, or a zmq.Frame, view or bytearray."""
        k = self.randrange(10)
        if k == 0:
            return zmq.Frame(data)
        if k == 1:
            return memoryview(data)
        if k == 2:
            return bytearray(data)
        return data

    def raw_frames(self, max_frames: int = 4, max_bytes: int = 64) -> list[Any]:
        return [self.frame(self.randbytes(self.randrange(max_bytes + 1)))
                for _ in range(self.randrange(max_frames + 1))]

    def mangle(self, items: list[Any], make: Callable[[], Any]) -> None:
        """One structural edit of a list in place: a value replaced, one dropped or added."""
        k = self.randrange(3)
        if k == 0 and items:
            items[self.randrange(len(items))] = make()
        elif k == 1 and items:
            del items[self.randrange(len(items))]
        else:
            items.insert(self.randrange(len(items) + 1), make())

    def mangle_map(self, d: dict[Any, Any], names: list[str]) -> None:
        """One edit of a map in place: a value of another type (often a near one: a bool for
        an int, a float for an int...), a key removed, or set to nil."""
        k = self.randrange(4)
        name = self.choice(names) if names and self.coin(0.8) else self.text()
        if k == 0:
            d[name] = self.value()
        elif k == 1:
            d[name] = self.choice(NEAR_VALUES)
        elif k == 2:
            d.pop(name, None)
        else:
            d[name] = None


# --- parse_request ------------------------------------------------------------------------------


def request_input(gen: Gen) -> list[Any]:
    if gen.coin(0.05):
        return gen.raw_frames()
    op = gen.choice(sorted(P._REQUEST_SCHEMA)) if gen.coin(0.95) else gen.text()
    required, n_payload = P._REQUEST_SCHEMA.get(op, ({}, 0))
    optional = P._OPTIONAL_FIELDS.get(op, {})
    fields: Any = {name: gen.good(types) for name, types in required.items()}
    fields.update({name: gen.good(types) for name, types in optional.items() if gen.coin()})
    if gen.coin(0.3):
        fields[P.DEADLINE] = gen.good((float,))
    header: Any = [P.VERSION, op, gen.randrange(2**32), fields]
    for _ in range(gen.choice((0, 1, 1, 2, 3))):
        k = gen.randrange(8)
        if k < 3 and isinstance(fields, dict):
            gen.mangle_map(fields, [*required, *optional, P.DEADLINE])
        elif k == 3 and isinstance(header, list) and header:
            header[gen.randrange(min(3, len(header)))] = gen.value()  # version, op or id
        elif k == 4 and isinstance(header, list) and len(header) == 4:
            fields = header[3] = gen.value()
        elif k == 5 and isinstance(header, list):
            gen.mangle(header, gen.value)
        elif k == 6:
            n_payload = gen.randrange(4)
        else:
            header = gen.value()
    return _frames(gen, header, n_payload)


def _frames(gen: Gen, header: Any, n_payload: int) -> list[Any]:
    """A header (packed) and ``n_payload`` random payload frames."""
    return [gen.frame(gen.pack(header)),
            *(gen.frame(gen.randbytes(gen.randrange(64))) for _ in range(n_payload))]


def check_request(frames: Any, req: P.Request) -> str | None:
    schema = P._REQUEST_SCHEMA.get(req.op) if isinstance(req.op, str) else None
    if schema is None:
        return f"parse_request returned an unknown op | {req.op!r}"
    if type(req.request_id) is not int:
        return f"parse_request returned a request id that is not an int | {req.request_id!r}"
    if not isinstance(req.fields, dict):
        return "parse_request returned fields that are not a map"
    required, n_payload = schema
    for name, types in required.items():
        value = req.fields.get(name)
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            return (f"parse_request let {name} of type {type(value).__name__} through | "
                    f"{value!r}")
    if len(req.payload) != n_payload:
        return "parse_request returned the wrong number of payload frames"
    return None


# --- parse_reply --------------------------------------------------------------------------------


def reply_input(gen: Gen) -> list[Any]:
    if gen.coin(0.05):
        return gen.raw_frames()
    ok = gen.coin()
    body: Any = ({gen.text(): gen.value(1) for _ in range(gen.randrange(5))} if ok
                 else {"code": gen.choice(REPLY_CODES), "message": gen.text()})
    header: Any = [P.VERSION, gen.choice(sorted(P._REQUEST_SCHEMA)), gen.randrange(2**32),
                   P.OK if ok else P.ERROR, body]
    n_payload = 1 if gen.coin(0.3) else 0
    for _ in range(gen.choice((0, 1, 1, 2, 3))):
        k = gen.randrange(7)
        if k < 2 and isinstance(body, dict):
            gen.mangle_map(body, ["code", "message", "block", "node"])
        elif k == 2 and isinstance(header, list) and header:
            header[gen.randrange(min(4, len(header)))] = gen.value()  # version, op, id, status
        elif k == 3 and isinstance(header, list) and len(header) == 5:
            body = header[4] = gen.value()
        elif k == 4 and isinstance(header, list):
            gen.mangle(header, gen.value)
        elif k == 5:
            n_payload = gen.randrange(4)
        else:
            header = gen.value()
    return _frames(gen, header, n_payload)


def check_reply(frames: Any, reply: P.Reply) -> str | None:
    if type(reply.request_id) is not int:
        return (f"parse_reply returned a request id of type {type(reply.request_id).__name__} | "
                f"{reply.request_id!r}")
    if not isinstance(reply.op, str):
        return f"parse_reply returned an op of type {type(reply.op).__name__} | {reply.op!r}"
    if not isinstance(reply.body, dict):
        return "parse_reply returned a body that is not a map"
    return None


# --- parse_heartbeat ----------------------------------------------------------------------------

HEARTBEAT_FIELDS = {**P._HEARTBEAT_FIELDS, "room": (int,), "host_total": (int,),
                    "beat_ms": (int,), "host_key": (int,)}


def node_record(gen: Gen, peer: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {name: gen.good(types) for name, types in HEARTBEAT_FIELDS.items()}
    rec["version"] = gen.text()
    if peer:
        rec["age_s"] = gen.good((float,)) if gen.coin() else gen.randrange(100)
    for _ in range(gen.choice((0, 0, 1, 2))):
        gen.mangle_map(rec, [*HEARTBEAT_FIELDS, "age_s", "peers"])
    return rec


def heartbeat_input(gen: Gen) -> list[Any]:
    if gen.coin(0.05):
        return gen.raw_frames()
    rec: Any = node_record(gen, peer=False)
    rec["peers"] = [node_record(gen, peer=True) for _ in range(gen.randrange(4))]
    if gen.coin(0.2):
        gen.mangle(rec["peers"], gen.value)
    if gen.coin(0.05):
        rec = gen.value()
    topic = P.HEARTBEAT_TOPIC if gen.coin(0.9) else gen.choice([b"", b"h", b"hb\x00", b"HB"])
    frames = [gen.frame(topic), gen.frame(gen.pack(rec, p_mutate=0.2))]
    if gen.coin(0.05):
        gen.mangle(frames, lambda: gen.randbytes(gen.randrange(8)))
    return frames


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_heartbeat(frames: Any, rec: Any) -> str | None:
    def valid(r: Any) -> bool:
        return isinstance(r, dict) and all(
            isinstance(r.get(n), t) and not isinstance(r.get(n), bool)
            for n, t in P._HEARTBEAT_FIELDS.items()) and all(
            r.get(n) is None or _int(r.get(n))
            for n in ("room", "host_total", "beat_ms", "host_key"))

    if not valid(rec):
        return "parse_heartbeat returned a record with missing or wrong fields"
    if not isinstance(rec.get("peers"), list):
        return "parse_heartbeat returned peers that are not a list"
    for p in rec["peers"]:
        age = p.get("age_s") if isinstance(p, dict) else None
        if not valid(p) or not isinstance(age, (int, float)) or not age >= 0:
            return f"parse_heartbeat kept a malformed peer | {p!r}"
    return None


class Intake:
    """The agent's path for a heartbeat (``agents/gossip.py``: ``_heard``, without its sockets):
    ``parse_heartbeat`` with the table's ``moot`` asked first about every relayed entry, then the
    record and its peers merged. One table for a whole run, so that later inputs meet the members
    earlier ones made (the clock moves on 50 ms an input)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, seed: int = 0) -> None:
        # (knowing the interval, it stretches members that announce a longer one: beat_ms)
        self.table = MembershipTable(suspect_after_s=1.5, dead_after_s=3.0,
                                     heartbeat_interval_s=0.5)
        self.now = 0.0

    def take(self, frames: Any) -> dict[str, Any]:
        self.now += 0.05
        now = self.now
        rec = P.parse_heartbeat(frames, lambda p: self.table.moot(p, now, 0.01))
        self.table.merge_heartbeat(rec, now, 0.01)
        return rec


# --- seal_open ----------------------------------------------------------------------------------

SEAL_KINDS = ["genuine", "flip", "bytes", "envelope", "frames", "splice", "replay", "other",
              "random", "no_session"]
SEAL_WEIGHTS = [10, 15, 15, 15, 10, 10, 8, 7, 6, 4]
_ENV = struct.Struct(">2s8sQBB")


def _raw(frame: Any) -> bytes:
    return bytes(frame.buffer) if isinstance(frame, zmq.Frame) else bytes(frame)


class SealTarget:
    """One Opener for the whole run; every input seals a fresh message first (its counter is
    the Sealer's next), then usually damages it or sends something else in its place."""

    def reset(self, seed: int) -> None:
        rng = random.Random(f"{seed}:seal-keys")
        self.sid, key = rng.randbytes(S.SESSION_ID_BYTES), rng.randbytes(S.KEY_BYTES)
        self.sealer = S.Sealer(self.sid, key, S.TO_AGENT)
        self.opener = S.Opener(self.sid, key, S.TO_AGENT)
        self.reflected = S.Sealer(self.sid, key, S.TO_CLIENT)  # the agent's replies
        self.forger = S.Sealer(self.sid, rng.randbytes(S.KEY_BYTES), S.TO_AGENT)
        self.stranger = S.Sealer(rng.randbytes(8), rng.randbytes(S.KEY_BYTES), S.TO_AGENT)
        self.sealed: dict[int, tuple[bytes, bytes | None]] = {}
        self.recent: deque[list[bytes]] = deque(maxlen=32)
        self.accepted = 0

    def open(self, inp: tuple[list[Any], str]) -> tuple[bytes, bytes | None]:
        return self.opener.open(inp[0])

    def make_input(self, gen: Gen) -> tuple[list[Any], str]:
        header = gen.randbytes(gen.randrange(48))
        payload = gen.randbytes(gen.randrange(200)) if gen.coin() else None
        genuine = self.sealer.seal(header, payload)
        self.sealed[self.sealer.counter] = (header, payload)
        self.sealed.pop(self.sealer.counter - 256, None)
        self.recent.append(genuine)
        kind = gen.choices(SEAL_KINDS, SEAL_WEIGHTS)[0]
        frames = list(genuine)
        if kind == "flip":
            for _ in range(gen.randrange(1, 4)):
                i = gen.randrange(len(frames))
                b = bytearray(frames[i])
                b[gen.randrange(len(b))] ^= 1 << gen.randrange(8)
                frames[i] = bytes(b)
        elif kind == "bytes":
            i = gen.randrange(len(frames))
            frames[i] = gen.mutate_bytes(frames[i])
        elif kind == "envelope":
            magic, sid, counter, direction, n = _ENV.unpack(frames[0])
            k = gen.randrange(5)
            if k == 0:
                counter = gen.choice([counter + 1, counter - 1, 0, 2**64 - 1, self.accepted + 1,
                                      gen.randrange(2**64)])
            elif k == 1:
                direction = gen.choice([S.TO_CLIENT, gen.randrange(256)])
            elif k == 2:
                n = gen.randrange(256)
            elif k == 3:
                sid = gen.randbytes(8)
            else:
                magic = gen.randbytes(2)
            frames[0] = _ENV.pack(magic, sid, counter, direction, n)
        elif kind == "frames":
            gen.mangle(frames, lambda: gen.choice(gen.choice(self.recent)))
            if gen.coin(0.3):
                gen.shuffle(frames)
        elif kind == "splice":
            for i in range(len(frames)):  # each frame from a recent message, maybe another
                source = gen.choice(self.recent)
                if i < len(source):
                    frames[i] = source[i]
        elif kind == "replay":
            frames = list(gen.choice(self.recent))
        elif kind == "other":
            sealer = gen.choice([self.reflected, self.forger, self.stranger])
            frames = sealer.seal(header, payload)
        elif kind == "random":
            frames = gen.raw_frames()
            if frames and gen.coin(0.5):  # shaped like an envelope of this session
                frames[0] = S.MAGIC + self.sid + gen.randbytes(gen.choice([10, 10, 9, 11]))
        elif kind == "no_session":
            frames = S.no_session(self.sid)
            if gen.coin(0.5):
                kind = "no_session_other"
                gen.mangle(frames, lambda: gen.randbytes(gen.randrange(20)))
                if gen.coin():
                    frames = [S.NO_SESSION + gen.randbytes(gen.choice([7, 8, 9]))]
        if gen.coin(0.1):
            frames = [gen.frame(_raw(f)) for f in frames]
        return frames, kind

    def check(self, inp: tuple[list[Any], str], result: tuple[bytes, bytes | None]) -> str | None:
        frames, kind = inp
        env = _raw(frames[0])
        counter = _ENV.unpack(env)[2] if len(env) == _ENV.size else -1
        if counter not in self.sealed:
            return f"a message that was never sealed opened | kind {kind}"
        if result != self.sealed[counter]:
            return f"a message opened to something other than what was sealed | kind {kind}"
        if counter <= self.accepted:
            return f"a counter opened twice or out of order | kind {kind}"
        self.accepted = counter
        return None

    def on_refusal(self, inp: tuple[list[Any], str], exc: BaseException) -> str | None:
        frames, kind = inp
        exact = len(frames) == 1 and _raw(frames[0]) == S.NO_SESSION + self.sid
        if isinstance(exc, S.SessionLost) != exact:
            return f"{type(exc).__name__} for {'exactly' if exact else 'not'} no_session | {kind}"
        if kind == "genuine":
            return f"a fresh genuine message was refused | {exc}"
        return None

    def strategy(self) -> Any:
        from hypothesis import strategies as st

        envelope = st.builds(lambda c, d, n: S.MAGIC + self.sid + struct.pack(">QBB", c, d, n),
                             st.integers(0, 2**64 - 1), st.integers(0, 255), st.integers(0, 255))
        frame = st.one_of(st.binary(max_size=64), envelope)
        return st.tuples(st.lists(frame, max_size=5), st.just("hypothesis"))


# --- targets ------------------------------------------------------------------------------------

def _msgpack_values() -> Any:
    from hypothesis import strategies as st

    leaves = st.one_of(st.none(), st.booleans(), st.integers(MSGPACK_INT_MIN, MSGPACK_INT_MAX),
                       st.floats(), st.text(max_size=16), st.binary(max_size=16))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
        max_leaves=16)


def _request_strategy() -> Any:
    from hypothesis import strategies as st

    v = _msgpack_values()
    fields = st.dictionaries(st.sampled_from(sorted({n for req, _ in P._REQUEST_SCHEMA.values()
                                                     for n in req} | {P.DEADLINE})), v)
    ops = st.sampled_from(sorted(P._REQUEST_SCHEMA))
    header = st.lists(v, max_size=5) | st.tuples(
        st.just(P.VERSION) | v, ops | v, st.integers(0, 2**32) | v, fields | v).map(list)
    return st.builds(lambda h, payload: [msgpack.packb(h, use_bin_type=True), *payload],
                     header, st.lists(st.binary(max_size=16), max_size=3))


def _reply_strategy() -> Any:
    from hypothesis import strategies as st

    v = _msgpack_values()
    header = st.tuples(st.just(P.VERSION) | v, st.text(max_size=8) | v,
                       st.integers(0, 2**32) | v, st.sampled_from([P.OK, P.ERROR]) | v,
                       st.dictionaries(st.text(max_size=8), v) | v)
    return st.builds(lambda h, payload: [msgpack.packb(list(h), use_bin_type=True), *payload],
                     header, st.lists(st.binary(max_size=16), max_size=2))


def _heartbeat_strategy() -> Any:
    from hypothesis import strategies as st

    v = _msgpack_values()
    good = {"node": st.text(max_size=8), "address": st.text(max_size=8),
            "gossip": st.text(max_size=8), "incarnation": st.integers(0, 2**63),
            "capacity": st.integers(0, 2**63), "used": st.integers(-5, 2**63),
            "host_available": st.integers(0, 2**63), "blocks": st.integers(0, 2**20)}
    value = {name: s | v for name, s in good.items()}
    peer = st.fixed_dictionaries(value, optional={"age_s": st.floats() | v, "room": v,
                                                  "beat_ms": st.integers(-5, 2**63) | v,
                                                  "host_key": st.integers(-5, 2**63) | v})
    rec = st.fixed_dictionaries(value, optional={"peers": st.lists(peer | v, max_size=4) | v,
                                                 "host_total": v})
    return st.builds(lambda r: [P.HEARTBEAT_TOPIC, msgpack.packb(r, use_bin_type=True)], rec)


@dataclass
class Target:
    name: str
    fn: Callable[[Any], Any]
    make_input: Callable[[Gen], Any]
    allowed: tuple[type[BaseException], ...] = (MeshError,)
    check: Callable[[Any, Any], str | None] | None = None
    on_refusal: Callable[[Any, BaseException], str | None] | None = None
    strategy: Callable[[], Any] | None = None  # hypothesis strategy of inputs
    reset: Callable[[int], None] | None = None  # fresh state at the start of a run (the seed)


TARGETS: list[Target] = []


def register(name: str, fn: Callable[[Any], Any], make_input: Callable[[Gen], Any], *,
             allowed: tuple[type[BaseException], ...] = (MeshError,),
             check: Callable[[Any, Any], str | None] | None = None,
             on_refusal: Callable[[Any, BaseException], str | None] | None = None,
             strategy: Callable[[], Any] | None = None,
             reset: Callable[[int], None] | None = None) -> Target:
    """Add (or replace) a target: ``fn(input)`` must return or raise one of ``allowed``;
    ``check(input, result)`` / ``on_refusal(input, exc)`` return a violation message or None."""
    target = Target(name, fn, make_input, allowed, check, on_refusal, strategy, reset)
    TARGETS[:] = [t for t in TARGETS if t.name != name] + [target]
    return target


_seal = SealTarget()
register("parse_request", P.parse_request, request_input, allowed=(P.BadRequest, MeshError),
         check=check_request, strategy=_request_strategy)
register("parse_reply", P.parse_reply, reply_input, check=check_reply, strategy=_reply_strategy)
register("parse_heartbeat", P.parse_heartbeat, heartbeat_input, check=check_heartbeat,
         strategy=_heartbeat_strategy)
_intake = Intake()
register("heartbeat_intake", _intake.take, heartbeat_input, check=check_heartbeat,
         strategy=_heartbeat_strategy, reset=_intake.reset)
register("seal_open", _seal.open, _seal.make_input, allowed=(S.SealError, S.SessionLost),
         check=_seal.check, on_refusal=_seal.on_refusal, strategy=_seal.strategy,
         reset=_seal.reset)



def session_input(gen: Gen) -> Any:
    """A SESSION reply's body, as the client's handshake reads it (mesh/security/link.py)."""
    body: Any = {"node": gen.text(), "session": gen.randbytes(8), "key": gen.randbytes(32),
                 "port": gen.randrange(1, 65536)}
    for _ in range(gen.choice((0, 1, 1, 2, 3))):
        if not isinstance(body, dict):
            break
        k = gen.randrange(5)
        if k == 0:
            body[gen.choice(["session", "key", "port", "node"])] = gen.value(1)
        elif k == 1:
            body.pop(gen.choice(["session", "key", "port"]), None)
        elif k == 2:
            name = gen.choice(["session", "key"])
            body[name] = gen.randbytes(gen.randrange(0, 64))
        elif k == 3:
            body["port"] = gen.choice([0, -1, 65536, True, 1.5, 2**70, "7700"])
        else:
            body = gen.value(2)
    return body


def check_session(body: Any, result: Any) -> str | None:
    session, key, port = result
    if not (len(session) == 8 and len(key) == 32 and type(port) is int and 0 < port < 65536):
        return f"parse_session accepted {result!r}"
    return None


register("session_reply", parse_session, session_input, check=check_session)

# --- running ------------------------------------------------------------------------------------


def describe(inp: Any) -> str:
    def one(x: Any) -> str:
        if isinstance(x, zmq.Frame):
            return f"zmq.Frame({one(x.bytes)})"
        if isinstance(x, (memoryview, bytearray)):
            return f"{type(x).__name__}({one(bytes(x))})"
        if isinstance(x, (list, tuple)):
            inner = ", ".join(one(i) for i in x)
            return f"[{inner}]" if isinstance(x, list) else f"({inner})"
        r = repr(x)
        return r if len(r) <= 200 else r[:200] + f"...<{len(x) if hasattr(x, '__len__') else '?'}>"

    text = one(inp)
    return text if len(text) <= MAX_INPUT_CHARS else text[:MAX_INPUT_CHARS] + "..."


@dataclass
class Report:
    name: str
    inputs: int = 0
    hypothesis_inputs: int = 0
    accepted: int = 0  # inputs the target returned a result for (the rest it refused)
    exceptions: int = 0
    violations: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    distinct: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)

    @property
    def findings(self) -> int:
        return self.exceptions + self.violations

    def add(self, key: tuple[str, ...], make: Callable[[], dict[str, Any]]) -> None:
        """Count a finding under its key; the first ``MAX_DISTINCT`` keys keep their details
        (input, traceback), the next ones up to ``MAX_KEYS`` only their count."""
        seen = self.distinct.get(key)
        if seen is not None:
            seen["count"] += 1
        elif len(self.distinct) < MAX_DISTINCT:
            self.distinct[key] = {**make(), "count": 1}
        elif len(self.distinct) < MAX_KEYS:
            self.distinct[key] = {"kind": key[0], "what": " ".join(key[1:]), "count": 1}

    def exception(self, exc: BaseException, inp: Any) -> None:
        self.exceptions += 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
        self.add(("exception", type(exc).__name__, where), lambda: {
            "kind": "exception", "what": f"{type(exc).__name__}: {exc}"[:300], "where": where,
            "input": describe(inp), "traceback": "".join(traceback.format_exception(exc))})

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "hypothesis_inputs": self.hypothesis_inputs,
                "accepted": self.accepted,
                "findings": self.findings, "exceptions": self.exceptions,
                "violations": self.violations, "seconds": round(self.seconds, 3),
                "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else 0,
                "slowest_s": round(self.slowest_s, 6), "distinct": len(self.distinct),
                "first": list(self.distinct.values())[:MAX_DISTINCT],
                "all": [{"kind": f["kind"], "what": " ".join(key[1:]), "count": f["count"]}
                        for key, f in self.distinct.items()]}


def _one(t: Target, inp: Any, report: Report) -> None:
    report.inputs += 1
    start = time.perf_counter()
    try:
        result = t.fn(inp)
    except t.allowed as exc:
        problem = t.on_refusal(inp, exc) if t.on_refusal else None
    except Exception as exc:  # noqa: BLE001 - anything else is what we are looking for
        report.exception(exc, inp)
        return
    else:
        report.accepted += 1
        problem = t.check(inp, result) if t.check else None
    finally:
        report.slowest_s = max(report.slowest_s, time.perf_counter() - start)
    if problem:
        report.violations += 1
        report.add(("violation", problem.split(" | ")[0]), lambda: {
            "kind": "violation", "what": problem, "input": describe(inp)})


def _run_hypothesis(t: Target, budget: int, seed: int, report: Report) -> None:
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hseed
    except ImportError:  # the test extra is not installed: the plain generator does it all
        return

    @hseed(seed)
    @settings(max_examples=budget, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(t.strategy())
    def drive(inp: Any) -> None:
        if report.hypothesis_inputs < budget:
            report.hypothesis_inputs += 1
            _one(t, inp, report)

    drive()


def fuzz_target(t: Target, n: int, seed: int = 1, hypothesis_inputs: int = 500) -> Report:
    report = Report(t.name)
    if t.reset is not None:
        t.reset(seed)
    start = time.perf_counter()
    budget = min(hypothesis_inputs, n // 5) if t.strategy is not None else 0
    if budget:
        _run_hypothesis(t, budget, seed ^ zlib.crc32(t.name.encode()), report)
    gen = Gen(f"{seed}:{t.name}")
    for _ in range(n - report.inputs):
        _one(t, t.make_input(gen), report)
    report.seconds = time.perf_counter() - start
    return report


def _fuzz_named(args: tuple[str, int, int, int]) -> Report:
    name, n, seed, hypothesis_inputs = args
    return fuzz_target(next(t for t in TARGETS if t.name == name), n, seed, hypothesis_inputs)


def run(inputs: int, seed: int = 1, targets: list[Target] | None = None,
        hypothesis_inputs: int = 500, jobs: int = 1) -> dict[str, Any]:
    """Fuzz each target with its share of ``inputs``; the summary (as ``--json`` prints it)."""
    targets = list(TARGETS if targets is None else targets)
    shares = [inputs // len(targets) + (i < inputs % len(targets)) for i in range(len(targets))]
    start = time.perf_counter()
    if jobs > 1:
        import multiprocessing

        work = [(t.name, n, seed, hypothesis_inputs) for t, n in zip(targets, shares)]
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            reports = pool.map(_fuzz_named, work, chunksize=1)
    else:
        reports = [fuzz_target(t, n, seed, hypothesis_inputs) for t, n in zip(targets, shares)]
    exceptions = sum(r.exceptions for r in reports)
    violations = sum(r.violations for r in reports)
    return {"inputs": sum(r.inputs for r in reports), "uncaught": exceptions + violations,
            "exceptions": exceptions, "violations": violations, "seed": seed,
            "seconds": round(time.perf_counter() - start, 3),
            "targets": {r.name: r.as_dict() for r in reports}}


def print_summary(summary: dict[str, Any], out: Any = sys.stdout) -> None:
    for name, r in summary["targets"].items():
        print(f"{name:16} {r['inputs']:>10,} inputs ({r['hypothesis_inputs']:,} by hypothesis, "
              f"{r['accepted']:,} accepted)  "
              f"findings {r['findings']} (exceptions {r['exceptions']}, violations "
              f"{r['violations']}, {r['distinct']} distinct)  {r['inputs_per_s']:>8,} inputs/s  "
              f"{r['seconds']:.1f} s  slowest input {r['slowest_s'] * 1e3:.2f} ms", file=out)
        for f in r["first"]:
            print(f"  [{f['count']}x] {f['kind']}: {f['what']}", file=out)
            if "input" in f:
                print(f"    input: {f['input']}", file=out)
            if "traceback" in f:
                print("    " + f["traceback"].rstrip().replace("\n", "\n    "), file=out)
    print(f"total {summary['inputs']:,} inputs, {summary['uncaught']} findings, "
          f"{summary['seconds']:.1f} s, seed {summary['seed']}", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", help="comma-separated names (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="processes (targets run in parallel)")
    ap.add_argument("--hypothesis-inputs", type=int, default=500, help="per target")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    targets = TARGETS
    if args.targets:
        names = args.targets.split(",")
        unknown = set(names) - {t.name for t in TARGETS}
        if unknown:
            ap.error(f"unknown targets {sorted(unknown)}; known: {[t.name for t in TARGETS]}")
        targets = [t for t in TARGETS if t.name in names]
    summary = run(args.inputs, args.seed, targets, args.hypothesis_inputs, args.jobs)
    print_summary(summary)
    if args.json:
        print(json.dumps(summary))
    return 1 if summary["uncaught"] else 0


if __name__ == "__main__":
    sys.exit(main())
