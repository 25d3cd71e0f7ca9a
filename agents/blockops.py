"""The agent's data-plane handlers (``BlockOps``, a base class of ``Agent``): ALLOC (with pages
populated in a worker thread, so heartbeats keep flowing while a large block is backed), FREE,
WRITE and RWRITE, READ (zero-copy from the block; copied when it is a sub-op of MANY,
``agents/many.py``), STAT, LIST, MOVE of a replicated block, KGET
and the key changes that a block's primary forwards to its copies.

Each handler checks what it is given (``agents/store.py``: bounds, states) before touching
memory, and either replies or raises a ``MeshError`` that ``Agent._dispatch`` turns into an error
reply.

Not here: the loop, the sockets and dispatch (``agents/server.py``), the answers about the agent
itself (``agents/info.py``), key records (``agents/keyops.py``), moves between agents
(``agents/moves.py``), replica sets (``agents/replication.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from agents import lifecycle
from agents.lifecycle import Event, State
from agents.keyops import page
from agents.many import Slot
from agents.store import Block, populate
from mesh import protocol as P
from mesh.errors import BlockMoving, InvalidRequest, KeyNotFound, MeshError, TooLarge

log = logging.getLogger("mesh.agent")

MAX_REPLICAS = 16


@dataclass
class _PendingAlloc:
    identity: bytes
    req: P.Request
    block: Block
    want: int = 1
    spread: str = "host"


class BlockOps:
    """Handlers of ``Agent`` (``agents/server.py``), which provides ``s``, ``store``, ``repl``,
    ``moves``, ``gate``, ``metrics``, ``evictor``, ``keyops``, ``_populator``, ``_pending``,
    ``_send``, ``_reply``, ``_send_reply`` and ``_reply_error``."""

    def _alloc(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        want, spread = f.get("replicas", 1), f.get("spread", "host")
        if not 1 <= want <= MAX_REPLICAS or spread not in ("host", "node"):
            raise InvalidRequest(f"replicas must be 1 to {MAX_REPLICAS} and spread 'host' or "
                                 f"'node', got {want!r} and {spread!r}")
        # short of room: evictable keys make it (agents/eviction.py)
        block = self.evictor.making_room(lambda: self.store.allocate(
            f["size"], bool(f["lazy"]), pending=bool(f.get("pending")), ttl_s=f.get("ttl_s")),
            f["size"])
        if block.lazy:
            self._allocated(identity, req, block, want, spread)
            return
        future = self._populator.submit(populate, block)
        self._pending[future] = _PendingAlloc(identity, req, block, want, spread)

    def _allocated(self, identity: Any, req: P.Request, block: Block, want: int,
                   spread: str) -> None:
        if want > 1:  # its other copies first (agents/replication.py)
            self.repl.created(identity, req, block, want, spread, block.record(self.s.node))
        else:
            self._send_reply(identity, req, block.record(self.s.node))

    def _finish_allocations(self) -> None:
        for future in [f for f in self._pending if f.done()]:
            pending = self._pending.pop(future)
            block = pending.block
            exc = future.exception()
            if exc is not None:
                log.error("populating %s failed: %r", block.block_id, exc)
                if block.state is State.ALLOCATING:
                    self.store.free(block.block_id, Event.POPULATE_FAILED)
                self.metrics.replied(P.ALLOC, "no_capacity", pending.req.arrived)
                self._send(pending.identity, [P.encode_error(
                    P.ALLOC, pending.req.request_id, "no_capacity",
                    f"could not back the block: {exc}")])
                continue
            block.advance(Event.POPULATED)
            self._allocated(pending.identity, pending.req, block, pending.want, pending.spread)

    def _free(self, identity: bytes, req: P.Request) -> None:
        block = self.store.served(req.fields["block"])
        self.repl.check_primary(block.block_id)
        self.store.free(block.block_id)
        self._reply(identity, req, {"block": block.block_id, "size": block.size})

    def _write(self, identity: bytes, req: P.Request) -> None:
        """WRITE from a client, or RWRITE: a write (or a repair's chunk) forwarded by the
        block's primary (agents/replication.py), applied only in the primary's epoch."""
        forwarded = req.op == P.RWRITE
        if forwarded:
            block = self.repl.accept(req)
        else:
            block = self.store.served(req.fields["block"])
            self.repl.check_primary(block.block_id)
        frame = req.payload[0]
        data = P.frame_view(frame)
        offset = req.fields["offset"]
        self.store.check_range(block, offset, data.nbytes)
        if not forwarded:
            self.store.check_still(block)
        if self.gate.must_wait(block.block_id, offset, offset + data.nbytes):
            # a forwarded write is never refused for being one too many: its primary holds it
            self.gate.defer(block.block_id, (identity, req), force=forwarded)
            return
        block.view[offset : offset + data.nbytes] = data
        if not forwarded:
            self.repl.forward_write(block.block_id, offset, frame)
        self._reply(identity, req, {
            "block": block.block_id, "offset": offset, "length": data.nbytes,
        })

    def _read(self, identity: bytes, req: P.Request) -> None:
        offset, length = req.fields["offset"], req.fields["length"]
        if length > self.s.max_message_bytes:
            raise TooLarge(
                f"read of {length} bytes is over this agent's {self.s.max_message_bytes}-byte "
                "message limit; split it into chunks"
            )
        block = self.store.served(req.fields["block"])
        self.store.check_range(block, offset, length)
        self.repl.check_serving(block.block_id)
        if not lifecycle.serves_reads(block.state):  # HANDING_OVER: the new copy may change
            raise BlockMoving(f"block {block.block_id} is being handed over to another node; "
                              "retry in a moment", node=self.s.node)
        result = {"block": block.block_id, "offset": offset, "length": length}
        if type(identity) is Slot:  # a sub-op of MANY: its bytes copied into the batch's reply
            identity.answer(True, result, bytes(block.view[offset : offset + length]))
            self.metrics.replied(req.op, "ok", req.arrived, length)
            self.reads_served += 1
            if block.state is State.MOVING:
                self.moves.read_served(block.block_id, offset + length)
            return
        header = P.encode_reply(req.op, req.request_id, result)
        # Zero-copy: libzmq sends straight from the block (a copy here cost a third of the read
        # throughput). A write landing in this range mid-send would tear the read, so writes to
        # it wait until libzmq is done with it (agents/writegate.py).
        tracker = self._send(
            identity, [header, block.view[offset : offset + length]], copy=False, track=True
        )
        self.gate.sent(block.block_id, offset, offset + length, tracker)
        self.metrics.replied(req.op, "ok", req.arrived, length)
        self.reads_served += 1
        if block.state is State.MOVING and tracker is not None:
            self.moves.read_served(block.block_id, offset + length)  # the move progresses

    def _stat(self, identity: bytes, req: P.Request) -> None:
        block = self.store.served(req.fields["block"])
        self.repl.check_serving(block.block_id)
        self._reply(identity, req, self._block_record(block))

    def _block_record(self, block: Block) -> dict[str, Any]:
        return {**block.record(self.s.node), **self.repl.describe(block.block_id)}

    def _list(self, identity: bytes, req: P.Request) -> None:
        blocks, cursor = self.store.list_blocks(*page(req))
        self._reply(identity, req, {
            "node": self.s.node, "blocks": [self._block_record(b) for b in blocks],
            "next": cursor,
        })

    def _move(self, identity: Any, req: P.Request) -> None:
        if req.fields["block"] not in self.repl.copies:
            self._move_one_copy(identity, req)
            return
        target = self._member_node(req.fields["target"])  # one copy, through a repair
        if target is None:
            raise InvalidRequest(f"{req.fields['target']} is not another agent of this mesh")
        self.repl.move(identity, req, target)

    def _kget(self, identity: Any, req: P.Request) -> None:
        key = req.fields["key"]
        try:
            rec = self.store.get_key(key)
        except KeyNotFound:
            note = self.evictor.note_for(key)  # evicted: say so (agents/eviction.py)
            if note is None:
                raise
            raise KeyNotFound(note, node=self.s.node) from None
        if rec["block"]:  # a copy that may not serve sends its reader elsewhere
            self.repl.check_serving(rec["block"])
        self.evictor.used(key)
        self._reply(identity, req, self.keyops.shown(rec))

    def _key_change(self, handler: Callable[[Any, P.Request], None]
                    ) -> Callable[[Any, P.Request], None]:
        """KPUT, KDEL and KEXPIRE, taken by the primary of the block they change, which forwards
        the block's new key records to the other copies (agents/replication.py)."""

        def run(identity: Any, req: P.Request) -> None:
            key = req.fields["key"]
            new = str((req.fields.get("record") or {}).get("block") or "")
            try:
                old = self.store.get_key(key)["block"]
            except MeshError:
                old = ""
            if req.op in (P.KDEL, P.KEXPIRE) and old:
                self.repl.check_primary(old)
            if new:
                self.repl.check_primary(new)
            kept = None
            if old and old != new and req.op == P.KPUT and not self.repl.is_primary(old):
                # our record of the old value is a backup's: the old block's primary changes
                # it (the client's clean-up), and the newest record of a key wins meanwhile
                kept = self.store.get_key(key)
                self.store.drop_key(key)
            try:
                handler(identity, req)
            except MeshError:
                if kept is not None:  # the put failed: the backup's record stays as it was
                    self.store.follow_keys(self.store.get(old), [kept], time.time())
                raise
            if kept is not None:
                old = ""
            for block_id in {new, old} - {""}:
                self.repl.keys_changed(block_id)

        return run

