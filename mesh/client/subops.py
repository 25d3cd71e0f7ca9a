"""The sub-ops of MANY requests (``mesh/protocol.py``), for ``mesh/client/many.py`` and
``mesh/client/ranges.py``: ``run`` sends (address, ``Sub``) pairs as MANY messages, each within
the protocol's limits (``_calls``: sub-ops, bytes each way, the header's size), and ``_spread``
puts each reply's results and bytes back into its sub-ops.

Not here: the batch window and reply matching (``mesh/client/batch.py``), what each item becomes
(``mesh/client/many.py``), the agent's side (``agents/many.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from mesh import protocol as P
from mesh.client.batch import Batch, Call, Op
from mesh.errors import MeshError, ProtocolError, error_from_wire

if TYPE_CHECKING:
    from mesh.client.core import Core

# An item larger than this takes the single op's path (chunked, windowed): batching helps
# small items, and a batch's message stays well under the agent's limit.
MANY_ITEM_BYTES = 256 * 1024
_HEADER_BUDGET = P.MAX_HEADER_BYTES // 2  # a MANY header's estimated size, at most
# The first MANY to an address carries this many sub-ops, each next one twice as many, up to
# the protocol's most: the agent starts on the first while the client makes the next ones
# (256 from the start kept it idle for the making of 256 first; tools/bench.py small).
_FIRST_MANY_OPS = 32
@dataclass(eq=False, slots=True)
class Sub:
    """One sub-op of a MANY request, and its outcome."""

    op: str
    fields: dict[str, Any]
    payload: memoryview | None = None  # a WRITE's bytes
    sink: memoryview | None = None  # where a READ's bytes land
    item: int = 0  # the caller's item it belongs to
    extra: Any = field(default=None, compare=False)
    result: dict[str, Any] | None = None
    error: MeshError | None = None


def _calls(pairs: Iterable[tuple[str, Sub]]) -> Iterator[Call]:
    """The MANY calls carrying each (address, sub-op) of ``pairs`` to its address, each within
    the protocol's limits; lazy, so the first messages are on their way while later sub-ops
    are still being made."""
    # address -> [sub-ops, bytes sent, bytes read, header, most sub-ops in this message]
    open_: dict[str, list[Any]] = {}
    max_bytes = P.MAX_MANY_BYTES
    for address, sub in pairs:
        op = sub.op
        if op == P.READ:
            est, w, r = 48 + len(sub.fields["block"]), 0, sub.fields["length"]
        elif op == P.WRITE:
            est, w, r = 48 + len(sub.fields["block"]), sub.payload.nbytes, 0
        else:
            est, w, r = 48 + len(P.encode_request(op, 0, sub.fields)), 0, 0
        g = open_.get(address)
        if g is None:
            g = open_[address] = [[], 0, 0, 0, _FIRST_MANY_OPS]
        elif len(g[0]) >= g[4] or g[3] + est > _HEADER_BUDGET or \
                g[1] + w > max_bytes or g[2] + r > max_bytes:
            yield _call(address, g[0])
            g[:] = [[], 0, 0, 0, min(2 * g[4], P.MAX_MANY_OPS)]
        g[0].append(sub)
        if w:
            g[1] += w
        if r:
            g[2] += r
        g[3] += est
    for address, g in open_.items():
        if g[0]:
            yield _call(address, g[0])


def _call(address: str, group: list[Sub]) -> Call:
    writes = [s.payload for s in group if s.op == P.WRITE and s.payload.nbytes]
    payload: Any = b""  # MANY always carries one payload frame
    if len(writes) == 1:
        payload = writes[0]
    elif writes:
        payload = b"".join(writes)
    call = Call(address, P.MANY, {"ops": [[s.op, s.fields] for s in group]}, payload=payload)
    call.on_done = lambda c: _spread(c, group)
    return call


def _spread(call: Call, group: list[Sub]) -> None:
    """A MANY reply's results and bytes into its sub-ops (or the call's error into each)."""
    error = call.error
    results = (call.result or {}).get("results") if error is None else None
    if results is None and error is None and (call.result or {}).get("done") == len(group):
        results = [[P.OK, {}]] * len(group)  # RANGES, each as asked (mesh/batchwire.py)
    if error is None and (not isinstance(results, list) or len(results) != len(group)):
        error = ProtocolError(f"a MANY reply from {call.address} does not answer each sub-op")
    data = memoryview(b"")
    if error is None and call.reply_payload is not None:
        payload = call.reply_payload
        if hasattr(type(payload), "open_into"):  # still sealed: opened once, then spread
            buf = bytearray(payload.nbytes)
            try:
                payload.open_into(buf)
                data = memoryview(buf)
            except MeshError as exc:
                error = exc
        else:
            data = P.frame_view(payload)
    if error is not None:
        for sub in group:
            sub.error = error
        return
    pos = 0
    lean_ok = [P.OK, {}]  # a READ's or WRITE's success, as agents answer it (agents/many.py)
    for sub, answer in zip(group, results):
        if answer != lean_ok:  # the bulk is that one: a comparison in C
            ok = isinstance(answer, list) and len(answer) == 2 and isinstance(answer[1], dict)
            if not ok:
                sub.error = ProtocolError(f"a MANY reply from {call.address} has a malformed "
                                          "result")
                continue
            if answer[0] != P.OK:
                body = answer[1]
                sub.error = error_from_wire(str(body.get("code", "internal")),
                                            str(body.get("message", "")))
                continue
        sub.result = answer[1]
        sink = sub.sink
        if sink is not None:
            n = sink.nbytes
            if pos + n > data.nbytes:
                sub.error = ProtocolError(f"a MANY reply from {call.address} is short of a "
                                          "read's bytes")
                continue
            sink[:] = data[pos : pos + n]
            pos += n


def run(core: Core, pairs: Iterable[tuple[str, Sub]], timeout_s: float | None = None) -> Op:
    """Send each (address, sub-op) of ``pairs`` (which may be lazy) in MANY requests; fills
    each ``Sub``."""
    yield from core.execute(Batch(_calls(pairs), timeout_s or core.settings.request_timeout_s,
                                  core.settings.window, fail_fast=False))
