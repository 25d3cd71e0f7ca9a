"""Moving a block peer to peer: the MOVE, PULL, COMMIT and ABORT handlers and the threads that
copy the bytes (the messages are drawn in ``mesh/protocol.py``)::

    master ──MOVE──▶ source                                   target
                     READY ─▶ MOVING ────────PULL───────────▶ INCOMING
                       (checksums its copy)  ◀──READ chunks── (copies, window of PULL_WINDOW)
                                             ◀──{checksum}─── ARRIVED
                     HANDING_OVER ──────────COMMIT{keys}────▶ READY (takes the keys)
                     FREED (forwarding note) ◀──ok──────────
    master ◀──{report}─

A failure anywhere puts the source back to READY (MOVE_FAILED) and sends ABORT, which cancels a
pull under way (CANCELLED, then dropped) or drops an arrived copy; the target also drops a copy
whose COMMIT does not come within ``COMMIT_WAIT_S`` and stops pulling from a source whose
heartbeat goes dead. The state names are ``agents/lifecycle.py``'s.

Checksums (``mesh/checksum.py``): PULL names the algorithm the target checksums its copy with
(``checksum_algorithm``, xxh3). A PULL without it comes from a source of the previous version and
gets crc32; a crc32 answer comes from a target of the previous version, and the source checks it
by checksumming its original again with crc32.

Threads: MOVE and PULL run as jobs on a small pool, each with a DEALER of its own (made by the
``connect`` factory the server passes in, ``mesh.sockets.dealer``), so the loop keeps serving.
The loop finishes jobs (``finish_jobs``) and is the only one to call the store. A job reads and
writes its block's bytes, and changes one state: the source's MOVING -> HANDING_OVER just before
it sends COMMIT, at a time when nothing on the loop changes a MOVING block. A pull job only
reads its block's state (to see CANCELLED).

Interface to the server: ``PeerCopies(store, ...)`` takes the store, the node's name and data
address, the cluster's chunk size, a socket factory, a callable that backs a block's pages off
the loop, and ``reply``/``reply_error`` callables; it gives ``handlers()`` (op -> handler),
``busy``, ``finish_jobs()``, ``drop_stale_copies(now)``, ``set_dead_peers(addresses)``,
``stop()`` and ``close()``.

Does not cover: frames (``mesh/protocol.py``), block memory and keys (``agents/store.py``),
choosing what to move where (``mesh/balance/``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import zmq

from agents import direct_pull
from agents.lifecycle import Event, State
from agents.store import Block, BlockStore
from mesh import checksum as C
from mesh import protocol as P
from mesh.membership import is_agent_address
from mesh.errors import (
    AgentError,
    BlockNotFound,
    InvalidRequest,
    MeshError,
    MeshTimeout,
    MoveFailed,
    NodeUnavailable,
)

log = logging.getLogger("mesh.agent")

PULL_WINDOW = 8  # READ requests in flight during a pull
COMMIT_WAIT_S = 30.0  # how long an arrived copy waits for its COMMIT before it is dropped
STALL_S = 10.0  # no reply from the peer for this long ends a pull or a move
MAX_MOVE_TIMEOUT_S = 3600.0
POLL_SLICE_MS = 200  # a job waiting for its peer checks for stop, death and deadline this often
ABORT_REPLY_WAIT_MS = 500  # a failed move waits this long for the target to confirm its ABORT
MAX_BLOCK_ID_CHARS = 256
# The slowest copy a pull waits for before it gives up: far below the ~1 GB/s two agents on one
# host reach (tools/bench.py move), so only a stalled or badly starved copy hits it, while a
# large block on a slow link still gets seconds per 20 MB on top of STALL_S.
MIN_COPY_BYTES_PER_S = 20e6
# Replies on the source's control socket (PULL's and COMMIT's) are headers only.
CONTROL_REPLY_BYTES = 1 << 20
THREADS = 4  # moves and pulls that run at once on one agent

Reply = Callable[[bytes, P.Request, dict[str, Any]], None]
ReplyError = Callable[[bytes, P.Request, MeshError], None]
Connect = Callable[..., zmq.Socket]  # (address, *, hwm, max_message_bytes) -> DEALER


class PeerCopies:
    def __init__(self, store: BlockStore, *, node: str, address: str, chunk_bytes: int,
                 connect: Connect, populate: Callable[[Block], Any], reply: Reply,
                 reply_error: ReplyError, member: Callable[[str], str | None]):
        self.store = store
        self.node = node
        self.address = address
        self.chunk_bytes = chunk_bytes
        self._connect = connect
        self._member = member  # data address -> node name, for the mesh's other agents only
        self._populate = populate
        self._reply = reply
        self._reply_error = reply_error
        self.moved = 0  # blocks moved away (metrics)
        # copies pull over the source's direct port when both serve one (agents/direct_pull.py);
        # the server turns it on once its own direct path listens (so never with keys)
        self.direct = False
        self.pulled_direct = 0
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="move")
        self._jobs: dict[Future, tuple[Callable[..., None], tuple]] = {}
        self._dead: frozenset[str] = frozenset()  # read by the job threads
        # block id -> (when, furthest byte) of the reads of a moving block the loop served;
        # written by the loop, read by the move job (one tuple swapped at a time)
        self._read_upto: dict[str, tuple[float, int]] = {}
        self._stopping = False

    def handlers(self) -> dict[str, Callable[[bytes, P.Request], None]]:
        return {P.MOVE: self._move, P.PULL: self._pull, P.COMMIT: self._commit,
                P.ABORT: self._abort}

    @property
    def busy(self) -> bool:
        """Jobs are running (the loop polls more often to finish them soon)."""
        return bool(self._jobs)

    def set_dead_peers(self, addresses: frozenset[str]) -> None:
        """Data addresses of nodes whose heartbeat went dead: waits on them end at once."""
        self._dead = addresses

    def stop(self) -> None:
        """Running jobs give up within a poll slice (``POLL_SLICE_MS``)."""
        self._stopping = True

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def finish_jobs(self) -> None:
        for future in [f for f in self._jobs if f.done()]:
            done, args = self._jobs.pop(future)
            try:
                done(future, *args)
            except Exception:  # a bug here must not take the loop (and the agent) down
                log.exception("finishing a move or pull failed")

    def drop_stale_copies(self, now: float) -> None:
        """Arrived copies whose source never committed (it died or gave up) are dropped."""
        for block in self.store.blocks():
            if block.state is State.ARRIVED and now > block.commit_by:
                log.warning("dropping the copy of %s: its source never committed the move",
                            block.block_id)
                self.store.free(block.block_id, Event.DROP)

    def read_served(self, block_id: str, end: int) -> None:
        """The loop served a READ of a MOVING block up to byte ``end``: when that is further
        than any before, the move made progress (the target's pull reads it in order)."""
        seen = self._read_upto.get(block_id)
        if seen is not None and end > seen[1]:
            self._read_upto[block_id] = (time.monotonic(), end)

    # --- helpers ------------------------------------------------------------------------------

    def _job_error(self, future: Future, what: str) -> MeshError | None:
        exc = future.exception()
        if exc is None:
            return None
        if isinstance(exc, MeshError):
            return exc
        log.error("%s failed: %r", what, exc)
        return AgentError(f"{what} failed: {exc!r}", node=self.node)

    def _await_reply(self, sock: zmq.Socket, peer: str, deadline: float,
                     stall_s: float = STALL_S,
                     progress: Callable[[], float] | None = None) -> P.Reply:
        """The next reply from ``peer``, polling in short slices so that this agent stopping,
        the peer dying (its heartbeat goes dead), the deadline, or ``stall_s`` without a reply
        (counted from the last ``progress()`` time, when given) ends the wait."""
        started = time.monotonic()
        while True:
            if sock.poll(POLL_SLICE_MS):
                return P.parse_reply(sock.recv_multipart(copy=False))
            now = time.monotonic()
            stall_at = max(started, progress() if progress else started) + stall_s
            if self._stopping:
                raise AgentError(f"agent {self.node} is stopping", node=self.node)
            if peer in self._dead:
                raise NodeUnavailable(f"{peer} stopped sending heartbeats", node=self.node)
            if now > deadline or now > stall_at:
                raise MeshTimeout(f"{peer} did not answer in time", node=self.node)

    def _valid_peer(self, address: str, what: str) -> str:
        if not is_agent_address(address):
            raise InvalidRequest(f"{what} must be an address like tcp://host:port, got {address!r}")
        if address == self.address:
            raise InvalidRequest(f"{what} {address} is this agent ({self.node})")
        if self._member(address) is None:  # an agent connects out only to its peers
            raise InvalidRequest(f"{what} {address} is not the address of an agent of this mesh")
        return address

    # --- source side --------------------------------------------------------------------------

    def _move(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        block = self.store.served(f["block"])
        self.store.check_still(block)  # one move at a time
        target = self._valid_peer(f["target"], "target")
        timeout_s = float(f["timeout_s"])
        if not 0 < timeout_s <= MAX_MOVE_TIMEOUT_S:
            raise InvalidRequest(f"timeout_s must be in (0, {MAX_MOVE_TIMEOUT_S:g}], got {timeout_s}")
        keys = [dict(r) for r in self.store.key_records(block.block_id)]
        block.advance(Event.MOVE)
        self._read_upto[block.block_id] = (time.monotonic(), 0)
        future = self._pool.submit(self._move_job, block, target, keys,
                                   time.monotonic() + timeout_s)
        self._jobs[future] = (self._move_done, (identity, req, block, target))

    def _move_job(self, block: Block, target: str, keys: list[dict], deadline: float) -> dict:
        started = time.monotonic()
        sock = self._connect(target, hwm=4 * PULL_WINDOW, max_message_bytes=CONTROL_REPLY_BYTES)
        pulled = False
        try:
            sock.send(P.encode_request(P.PULL, 1, {
                "block": block.block_id, "source": self.address, "size": block.size,
                "created": block.created, "lazy": block.lazy,
                # a pending block stays pending and a block with a time to live keeps what it
                # has left: a move never makes a block permanent
                "pending": block.lease_until is not None,
                "ttl_s": None if block.expires is None else max(0.001, block.expires - time.time()),
                # how the target checksums its copy; one of the previous version ignores the
                # field and answers crc32, which ``C.agree`` checks all the same
                "checksum_algorithm": C.DEFAULT,
            }))
            # checksum our copy while the target pulls it (xxhash releases the GIL)
            checksum = C.of([block.view])
            summed = time.monotonic()
            # timeout_s bounds the whole copy, but a target that stops reading the block (or
            # never starts) for STALL_S gives the block back, whatever timeout_s says
            reply = self._await_reply(
                sock, target, deadline,
                progress=lambda: self._read_upto.get(block.block_id, (0.0, 0))[0])
            copied = time.monotonic()
            reply.raise_for_error(target)
            pulled = True
            theirs = reply.body.get("checksum")
            if not isinstance(theirs, str) or not C.agree(checksum, theirs, [block.view]):
                raise MoveFailed(
                    f"the copy of {block.block_id} on {target} has checksum {theirs!r}, the "
                    f"original {checksum}", node=self.node)
            # From here the target may take writes: stop serving reads of our copy (they get
            # "moving" and follow the block) so nobody reads what the target has overwritten.
            block.advance(Event.HAND_OVER)
            sock.send(P.encode_request(P.COMMIT, 2, {"block": block.block_id, "keys": keys}))
            self._await_reply(sock, target, deadline + STALL_S).raise_for_error(target)
            return {
                "block": block.block_id, "from": self.node, "from_address": self.address,
                "to": str(reply.body.get("node", "")), "to_address": target,
                "size": block.size, "checksum": checksum, "keys": len(keys),
                "seconds": time.monotonic() - started,
                # where the time went: our checksum, the target's copy (it overlaps ours),
                # and the commit
                "checksum_s": summed - started, "copy_s": copied - started,
                "pull_s": reply.body.get("pull_s"), "commit_s": time.monotonic() - copied,
            }
        except MeshError:
            if pulled or not self._stopping:
                try:  # best effort: the target also drops an uncommitted copy on its own
                    sock.send(P.encode_request(P.ABORT, 3, {"block": block.block_id}),
                              zmq.NOBLOCK)
                    if sock.poll(ABORT_REPLY_WAIT_MS):
                        sock.recv_multipart()
                except zmq.ZMQError:
                    pass
            raise
        finally:
            sock.close(0)

    def _move_done(self, future: Future, identity: bytes, req: P.Request, block: Block,
                   target: str) -> None:
        self._read_upto.pop(block.block_id, None)
        error = self._job_error(future, f"moving {block.block_id}")
        if error is not None:
            block.advance(Event.MOVE_FAILED)
            log.warning("move of %s to %s failed: %s", block.block_id, target, error)
            self._reply_error(identity, req, MoveFailed(
                f"moving {block.block_id} from {self.node} to {target} failed, the original "
                f"is intact on {self.node}: {error}"))
            return
        result = future.result()
        self.store.free(block.block_id, Event.MOVED_AWAY, moved_to=result["to"] or target)
        self.moved += 1
        log.info("moved %s (%d bytes) to %s in %.2f s", block.block_id, block.size, target,
                 result["seconds"])
        self._reply(identity, req, result)

    # --- target side --------------------------------------------------------------------------

    def _pull(self, identity: bytes, req: P.Request) -> None:
        f = req.fields
        source = self._valid_peer(f["source"], "source")
        if not f["block"] or len(f["block"]) > MAX_BLOCK_ID_CHARS:
            raise InvalidRequest(f"block id must be 1 to {MAX_BLOCK_ID_CHARS} characters")
        ttl_s = f.get("ttl_s")
        if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float))):
            raise InvalidRequest(f"ttl_s must be a number of seconds, got {ttl_s!r}")
        # absent: a source of the previous version, which checks crc32
        algorithm = f.get("checksum_algorithm", C.LEGACY)
        if not isinstance(algorithm, str) or algorithm not in C.ALGORITHMS:
            raise InvalidRequest(f"unknown checksum algorithm {algorithm!r} (this agent knows "
                                 f"{', '.join(sorted(C.ALGORITHMS))})")
        block = self.store.allocate(f["size"], bool(f["lazy"]), block_id=f["block"],
                                    created=float(f["created"]), pending=f.get("pending") is True,
                                    ttl_s=ttl_s)
        block.pull_started = time.monotonic()
        deadline = block.pull_started + STALL_S + block.size / MIN_COPY_BYTES_PER_S
        # back the pages ahead of the copy on another thread (page faults, not the network,
        # bound a copy into fresh memory); populating never changes what is written
        self._populate(block)
        future = self._pool.submit(self._pull_job, block, source, deadline, algorithm)
        self._jobs[future] = (self._pull_done, (identity, req, block))

    def _pull_job(self, block: Block, source: str, deadline: float, algorithm: str) -> str:
        chunk = self.chunk_bytes
        sock = self._connect(source, hwm=4 * PULL_WINDOW, max_message_bytes=chunk)
        try:
            if self.direct:
                try:
                    return self._pull_direct(sock, block, source, deadline, algorithm)
                except direct_pull.Unavailable as exc:  # over ZeroMQ, from the start
                    log.debug("pull of %s over ZeroMQ: %s", block.block_id, exc)
            inflight: dict[int, tuple[int, int]] = {}
            pieces = P.chunk_ranges(block.size, chunk)
            request_id, received = 0, 0
            hasher, checked = C.new(algorithm), 0  # of the copy's first ``checked`` bytes
            while received < block.size:
                while len(inflight) < PULL_WINDOW:
                    piece = next(pieces, None)
                    if piece is None:
                        break
                    request_id += 1
                    sock.send(P.encode_request(P.READ, request_id, {
                        "block": block.block_id, "offset": piece[0], "length": piece[1],
                    }))
                    inflight[request_id] = piece
                if block.state is State.CANCELLED:
                    raise MoveFailed(f"the move of {block.block_id} was aborted by its source")
                reply = self._await_reply(sock, source, deadline)
                reply.raise_for_error(source)
                offset, length = inflight.pop(reply.request_id, (None, None))
                if offset is None or len(reply.payload) != 1 or \
                        P.frame_len(reply.payload[0]) != length:
                    raise MoveFailed(f"{source} sent an unexpected reply while copying "
                                     f"{block.block_id}")
                block.view[offset : offset + length] = P.frame_view(reply.payload[0])
                received += length
                if offset == checked:  # in order, as one connection delivers: checksum it warm
                    hasher.update(block.view[offset : offset + length])
                    checked += length
            if checked != block.size:  # a chunk came out of order: checksum the whole copy
                hasher = C.new(algorithm)
                hasher.update(block.view)
            return hasher.text()
        finally:
            sock.close(0)

    def _pull_direct(self, sock: zmq.Socket, block: Block, source: str, deadline: float,
                     algorithm: str) -> str:
        sock.send(P.encode_request(P.DIRECT, 1, {}))
        reply = self._await_reply(sock, source, deadline)
        port = reply.body.get("port") if reply.ok else None
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise direct_pull.Unavailable("the source serves no direct path")

        def check() -> None:
            if block.state is State.CANCELLED:
                raise MoveFailed(f"the move of {block.block_id} was aborted by its source")
            if self._stopping:
                raise AgentError(f"agent {self.node} is stopping", node=self.node)
            if source in self._dead:
                raise NodeUnavailable(f"{source} stopped sending heartbeats", node=self.node)
            if time.monotonic() > deadline:
                raise MeshTimeout(f"{source} did not send the copy in time", node=self.node)

        checksum = direct_pull.pull(block.view, block.block_id, source, port, algorithm,
                                    check=check, stall_s=STALL_S)
        self.pulled_direct += 1
        return checksum

    def _pull_done(self, future: Future, identity: bytes, req: P.Request, block: Block) -> None:
        error = self._job_error(future, f"copying {block.block_id}")
        if error is None and block.state is State.CANCELLED:
            error = MoveFailed(f"the move of {block.block_id} was aborted by its source")
        if error is not None:
            if self.store.holds(block):  # an ABORT may have dropped it already
                self.store.free(block.block_id, Event.DROP)
            self._reply_error(identity, req, error)
            return
        block.advance(Event.COPIED)
        block.commit_by = time.monotonic() + COMMIT_WAIT_S
        self._reply(identity, req, {"block": block.block_id, "size": block.size,
                                    "checksum": future.result(), "node": self.node,
                                    "pull_s": time.monotonic() - block.pull_started})

    def _commit(self, identity: bytes, req: P.Request) -> None:
        block_id = req.fields["block"]
        block = self.store.get(block_id)
        if block.state is not State.ARRIVED:
            raise InvalidRequest(f"block {block_id!r} is not a copy waiting for its commit here")
        self.store.adopt_keys(block, req.fields["keys"], time.time())
        block.advance(Event.COMMIT)
        block.commit_by = None
        self._reply(identity, req, {"block": block.block_id, "node": self.node})

    def _abort(self, identity: bytes, req: P.Request) -> None:
        block_id = req.fields["block"]
        try:
            block = self.store.get(block_id)
        except BlockNotFound:
            block = None
        state = None if block is None else block.state
        if state in (State.INCOMING, State.CANCELLED):
            block.advance(Event.CANCEL)  # the pull thread stops; _pull_done drops the copy
        elif state is State.ARRIVED:
            self.store.free(block_id, Event.DROP)
        self._reply(identity, req, {
            "block": block_id,
            "dropped": state in (State.INCOMING, State.CANCELLED, State.ARRIVED),
        })
