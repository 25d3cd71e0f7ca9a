"""MANY and RANGES on the agent: many small operations in one message, answered by one message
(``mesh/batchwire.py``: MANY, RANGES).

``ManyOps._many`` (a handler of ``Agent``, ``agents/server.py``) cuts a MANY request into its
sub-ops and dispatches each through ``Agent._dispatch``, the path a single request takes: the
role check, the deadline, the handler, replication's hold of a reply until the copies applied a
forwarded write, deferred writes. Each sub-op is given a ``Slot`` as its identity instead of the
client's; whatever answers the sub-op (``_send_reply``, ``_reply_error``, the READ handler, or
``_send`` for anything else) lands in its slot, and once every slot of the batch has its answer
the ``Gather`` sends the one reply. A READ or WRITE of a block without copies (the bulk of a
batch) skips ``_dispatch``'s per-request steps, its role checked once per batch, and is done
right here (``_lean``: the checks of ``agents/blockops.py``'s handlers for such a block, its
block looked up once per run of lean sub-ops, its answer straight into the ``Gather``, and
the metrics tallied per op once a batch); one that needs more (a write that must wait for a
read in flight, a read past the message limit, a refusal) goes to its handler. The metrics
count each sub-op as its op, and the batch as MANY. A READ's bytes are copied into the reply
(a few KiB each: cheaper than tracking a zero-copy send per sub-op, and a later sub-op or a
held reply cannot tear them).

``ManyOps._ranges`` takes RANGES, the bulk of ``read_many``/``write_many`` packed: its ranges
are done in one loop (``_lean_ranges``: the role checked once, each block looked up once, a
read's bytes copied straight into the reply) while each is the common case; from the first
that is not, the rest become the READ or WRITE sub-ops of MANY they stand for and take
``_apply``, MANY's path, so each is answered (or refused, deferred, counted) as there.

Not here: the frame layout and the checks of the batch (``mesh/batchwire.py``), the handlers
themselves (``agents/blockops.py``, ``agents/keyops.py``), roles (``agents/access.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import logging

import msgpack

from agents import lifecycle
from agents.lifecycle import State
from mesh import batchwire as B
from mesh import protocol as P
from mesh.errors import MeshError, error_from_wire

log = logging.getLogger("mesh.agent")
_DIRECT = frozenset({P.READ, P.WRITE})
_LEAN_OK = [P.OK, {}]  # a lean sub-op's answer (the client knows what it asked): one object


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

    def fill(self, index: int, payload: Any) -> None:
        """A lean sub-op's success (``ManyOps._lean``)."""
        self.results[index] = _LEAN_OK
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
            subs = B.parse_many(req)
        except P.BadRequest as bad:  # refused whole, nothing applied: an error reply
            raise error_from_wire(bad.code, bad.message, self.s.node) from None
        self._apply(req, subs, Gather(len(subs), self._reply_with(identity, req)), 0)

    def _reply_with(self, identity: Any, req: P.Request) -> Callable[[Gather], None]:
        """What sends a batch's reply once its ``Gather`` has every answer."""

        def send(gather: Gather) -> None:
            payload = gather.payload()
            self.metrics.replied(req.op, "ok", req.arrived, len(payload))
            self._send(identity, [P.encode_reply(req.op, req.request_id,
                                                 {"results": gather.results}), payload],
                       copy=False)  # a fresh bytes object: nothing to copy it for

        return send

    def _apply(self, req: P.Request, subs: list[Any], gather: Gather, start: int) -> None:
        """Apply ``subs``, the sub-ops of ``req`` from position ``start`` of ``gather`` on."""
        deadline = req.fields.get(P.DEADLINE)
        # READ and WRITE of a block without copies, the bulk of a batch, are done here
        # (``_lean``) or by their handler: the role is checked once per op for the batch and the
        # batch's deadline was (``_dispatch``); nothing is forwarded, so no reply is held. The
        # rest, and a sub-op with a deadline of its own, take ``_dispatch`` as a single request
        # does.
        allowed: dict[str, bool] = {}
        copies, handlers = self.repl.copies, self._handlers
        blocks: dict[str, Any] = {}  # block id -> its Block, while only lean sub-ops ran
        tally: dict[str, list[int]] = {}  # op -> [lean sub-ops, bytes in, bytes out]
        for i, sub in enumerate(subs, start):
            if type(sub) is P.Request and sub.op in _DIRECT and P.DEADLINE not in sub.fields \
                    and sub.fields["block"] not in copies and self._may(sub.op, req, allowed):
                op = sub.op
                sub.caller, sub.arrived = req.caller, req.arrived
                try:
                    if self._lean(gather, i, sub, blocks, tally):
                        continue  # the bulk of a batch ends here
                except MeshError:
                    pass  # its handler raises it again, and answers and counts it as it should
                blocks.clear()  # its handler may change what the next ones find
                self.metrics.arrived(op, sub.payload[0].nbytes if sub.payload else 0)
                try:
                    handlers[op](Slot(gather, i, lean=True), sub)
                except MeshError as exc:
                    self._reply_error(Slot(gather, i), sub, exc)
                except Exception as exc:  # a bug must not cost the batch its other answers
                    log.exception("internal error on %s in a batch", op,
                                  extra={"event": "internal_error"})
                    self.metrics.replied(op, "internal", req.arrived)
                    Slot(gather, i).answer(False, {"code": "internal", "message": repr(exc)})
                continue
            slot = Slot(gather, i)
            if isinstance(sub, P.BadRequest):
                self.metrics.arrived(sub.op, 0)
                self.metrics.replied(sub.op, sub.code, 0.0)
                slot.answer(False, {"code": sub.code, "message": sub.message})
                continue
            blocks.clear()
            sub.caller, sub.arrived = req.caller, req.arrived
            self.metrics.arrived(sub.op, sub.payload[0].nbytes if sub.payload else 0)
            if deadline is not None and P.DEADLINE not in sub.fields:
                sub.fields[P.DEADLINE] = deadline
            self._dispatch(slot, sub)
        for op, (count, bytes_in, bytes_out) in tally.items():
            self.metrics.tally(op, count, bytes_in, bytes_out, req.arrived)

    def _ranges(self, identity: Any, req: P.Request) -> None:
        """RANGES: each range done here while it is the common case (the role held, a block
        without copies that serves it, in range, a write not waiting for a read); from the
        first that is not, the rest go as the MANY sub-ops they stand for (``_apply``), which
        answers each as MANY does."""
        try:
            op, ids, spans, data, total = B.parse_ranges(req)
        except P.BadRequest as bad:  # refused whole, nothing applied: an error reply
            raise error_from_wire(bad.code, bad.message, self.s.node) from None
        read = op == P.READ
        out: list[memoryview] = []  # the reads' bytes, in order (views into their blocks)
        done = pos = 0
        if self._may(op, req, {}):
            done, pos = self._lean_ranges(read, ids, spans, data, out)
        reply = b"".join(out)  # the one copy of the reads' bytes
        out.clear()  # (the views go before anything else may free their blocks)
        if done:
            self.metrics.tally(op, done, 0 if read else pos, pos if read else 0, req.arrived)
            self.reads_served += done if read else 0
        if done == len(spans):
            self.metrics.replied(P.RANGES, "ok", req.arrived, pos if read else 0)
            self._send(identity, [P.encode_reply(P.RANGES, req.request_id, {"done": done}),
                                  reply], copy=False)
            return
        gather = Gather(len(spans), self._reply_with(identity, req))
        gather.results[:done] = [_LEAN_OK] * done
        gather.left -= done
        if reply:
            gather.pieces[0] = reply  # the bytes of the ranges done, in order
        self._apply(req, B.range_requests(req, op, ids, spans, data, done), gather, done)

    def _lean_ranges(self, read: bool, ids: list[str], spans: list[tuple[int, int, int]],
                     data: memoryview, out: list[memoryview]) -> tuple[int, int]:
        """Do ``spans`` in order while each is the common case; (how many were done, the bytes
        they moved). A read's range is added to ``out``; writes come from ``data``."""
        copies, gate = self.repl.copies, self.gate
        most = self.s.max_message_bytes
        found: list[Any] = [None] * len(ids)  # each block, or False: not the common case
        pos = 0
        for done, (index, offset, length) in enumerate(spans):
            block = found[index]
            if block is None:
                block = found[index] = self._range_block(ids[index], copies)
            if block is False or offset + length > block.size:
                return done, pos
            if read:
                if length > most:
                    return done, pos
                out.append(block.view[offset : offset + length])
            else:
                if gate.must_wait(block.block_id, offset, offset + length):
                    return done, pos
                block.view[offset : offset + length] = data[pos : pos + length]
            pos += length
        return len(spans), pos

    def _range_block(self, block_id: str, copies: Any) -> Any:
        """The block a RANGES names when it is the common case: no copies, served, and ready for
        the op (not moving); else False (its MANY sub-op answers it)."""
        if block_id in copies:
            return False
        try:
            block = self.store.served(block_id)
        except MeshError:
            return False
        if block.state is not State.READY:
            return False
        return block

    def _may(self, op: str, req: P.Request, allowed: dict[str, bool]) -> bool:
        """Whether the batch's caller holds the role for ``op`` (asked once per op a batch);
        a refused sub-op takes ``_dispatch``, which answers the refusal."""
        may = allowed.get(op)
        if may is None:
            try:
                self.access.check(op, req.caller)
                may = True
            except MeshError:
                may = False
            allowed[op] = may
        return may

    def _lean(self, gather: Gather, index: int, sub: P.Request, blocks: dict[str, Any],
              tally: dict[str, list[int]]) -> bool:
        """A READ or WRITE of a block without copies, done here with its handler's checks
        (``agents/blockops.py``; ``MeshError`` as they raise it); False when it needs its
        handler (a write that must wait for a read in flight, a read past the message limit,
        a block handed over)."""
        op, fields = sub.op, sub.fields
        block_id, offset, length = fields["block"], fields["offset"], fields["length"]
        block = blocks.get(block_id)
        if block is None:
            block = blocks[block_id] = self.store.served(block_id)
        self.store.check_range(block, offset, length)
        if op == P.READ:
            if length > self.s.max_message_bytes or not lifecycle.serves_reads(block.state):
                return False
            gather.fill(index, bytes(block.view[offset : offset + length]))
            self.reads_served += 1
            if block.state is State.MOVING:
                self.moves.read_served(block_id, offset + length)
        else:
            self.store.check_still(block)
            if self.gate.must_wait(block_id, offset, offset + length):
                return False
            block.view[offset : offset + length] = sub.payload[0]
            gather.fill(index, None)
        counts = tally.get(op)
        if counts is None:
            counts = tally[op] = [0, 0, 0]
        counts[0] += 1
        counts[1 if op == P.WRITE else 2] += length
        return True
