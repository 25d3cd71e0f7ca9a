"""MANY on the agent: many small operations in one message, answered by one message
(``mesh/protocol.py``: MANY, ``parse_many``).

``ManyOps._many`` (a handler of ``Agent``, ``agents/server.py``) cuts a MANY request into its
sub-ops and dispatches each through ``Agent._dispatch``, the path a single request takes: the
role check, the deadline, the handler, replication's hold of a reply until the copies applied a
forwarded write, deferred writes. Each sub-op is given a ``Slot`` as its identity instead of the
client's; whatever answers the sub-op (``_send_reply``, ``_reply_error``, the READ handler, or
``_send`` for anything else) lands in its slot, and once every slot of the batch has its answer
the ``Gather`` sends the one reply. A READ or WRITE of a block without copies (the bulk of a
batch) skips ``_dispatch``'s per-request steps and goes straight to its handler, its role
checked once per batch. The metrics count each sub-op as its op, and the batch as
MANY. A READ's bytes are copied into the reply (a few KiB each: cheaper than tracking a
zero-copy send per sub-op, and a later sub-op or a held reply cannot tear them).

Not here: the frame layout and the checks of the batch (``mesh/protocol.py``), the handlers
themselves (``agents/blockops.py``, ``agents/keyops.py``), roles (``agents/access.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import logging

import msgpack

from mesh import protocol as P
from mesh.errors import MeshError, error_from_wire

log = logging.getLogger("mesh.agent")
_DIRECT = frozenset({P.READ, P.WRITE})


class Gather:
    """The answers of one MANY request's sub-ops; sends the reply when the last one is in."""

    __slots__ = ("results", "pieces", "left", "send")

    def __init__(self, n: int, send: Callable[["Gather"], None]):
        self.results: list[Any] = [None] * n
        self.pieces: list[Any] = [None] * n  # each READ's bytes, by position
        self.left = n
        self.send = send

    def answer(self, index: int, ok: bool, body: dict[str, Any], payload: Any = None) -> None:
        if self.results[index] is not None:
            return  # answered already (a sub-op answers once; this guards the count)
        self.results[index] = [P.OK if ok else P.ERROR, body]
        if ok and payload is not None:
            self.pieces[index] = payload
        self.left -= 1
        if self.left == 0:
            self.send(self)

    def payload(self) -> bytes:
        return b"".join(p for p in self.pieces if p is not None)


class Slot:
    """The identity a sub-op is dispatched with: where its answer goes."""

    __slots__ = ("gather", "index", "lean")

    def __init__(self, gather: Gather, index: int, lean: bool = False):
        self.gather = gather
        self.index = index
        self.lean = lean  # a READ or WRITE: its success is answered {} (the client knows it)

    def answer(self, ok: bool, body: dict[str, Any], payload: Any = None) -> None:
        self.gather.answer(self.index, ok, {} if ok and self.lean else body, payload)

    def take(self, frames: list[Any]) -> None:
        """An answer sent as frames (an encoded reply header, and a READ's payload)."""
        try:
            header = msgpack.unpackb(frames[0], raw=False)
            ok, body = header[3] == P.OK, header[4]
        except Exception:  # our own encoding: never expected
            ok, body = False, {"code": "internal", "message": "unreadable sub-reply"}
        payload = bytes(P.frame_view(frames[1])) if len(frames) > 1 else None
        self.answer(ok, body, payload)


class ManyOps:
    """The MANY handler of ``Agent`` (``agents/server.py``), which provides ``s``,
    ``metrics``, ``access``, ``repl``, ``_handlers``, ``_dispatch``, ``_reply_error`` and
    ``_send``."""

    def _many(self, identity: Any, req: P.Request) -> None:
        try:
            subs = P.parse_many(req)
        except P.BadRequest as bad:  # refused whole, nothing applied: an error reply
            raise error_from_wire(bad.code, bad.message, self.s.node) from None

        def send(gather: Gather) -> None:
            payload = gather.payload()
            self.metrics.replied(P.MANY, "ok", req.arrived, len(payload))
            self._send(identity, [P.encode_reply(P.MANY, req.request_id,
                                                 {"results": gather.results}), payload],
                       copy=False)  # a fresh bytes object: nothing to copy it for

        gather = Gather(len(subs), send)
        deadline = req.fields.get(P.DEADLINE)
        # READ and WRITE of a block without copies, the bulk of a batch, go straight to their
        # handler: the role is checked once per op for the batch and the batch's deadline was
        # (``_dispatch``); nothing is forwarded, so no reply is held. The rest, and a sub-op
        # with a deadline of its own, take ``_dispatch`` as a single request does.
        allowed: dict[str, bool] = {}
        copies, handlers = self.repl.copies, self._handlers
        for i, sub in enumerate(subs):
            slot = Slot(gather, i)
            if isinstance(sub, P.BadRequest):
                self.metrics.arrived(sub.op, 0)
                self.metrics.replied(sub.op, sub.code, 0.0)
                slot.answer(False, {"code": sub.code, "message": sub.message})
                continue
            op, fields = sub.op, sub.fields
            sub.caller, sub.arrived = req.caller, req.arrived
            self.metrics.arrived(op, sub.payload[0].nbytes if sub.payload else 0)
            if op in _DIRECT and P.DEADLINE not in fields and fields["block"] not in copies \
                    and allowed.get(op) is not False:
                slot.lean = True
                try:
                    if op not in allowed:
                        self.access.check(op, sub.caller)
                        allowed[op] = True
                    handlers[op](slot, sub)
                except MeshError as exc:
                    allowed.setdefault(op, False)  # refused: the next ones through _dispatch
                    self._reply_error(slot, sub, exc)
                except Exception as exc:  # a bug must not cost the batch its other answers
                    log.exception("internal error on %s in a batch", op,
                                  extra={"event": "internal_error"})
                    self.metrics.replied(op, "internal", req.arrived)
                    slot.answer(False, {"code": "internal", "message": repr(exc)})
                continue
            if deadline is not None and P.DEADLINE not in fields:
                fields[P.DEADLINE] = deadline
            self._dispatch(slot, sub)
