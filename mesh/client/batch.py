"""The batch machinery every client operation sends through: pure, no sockets, no clock.

- ``Wait``: what an operation generator yields when it must wait (which sockets, how long); the
  clients (``mesh/client/drivers.py``) answer it with a poller.
- ``Call``: one request to one agent address, with its payload (WRITE) or the memoryview its
  reply payload lands in (READ). A read reply is copied once, straight into the caller's buffer.
- ``Batch`` and ``BatchRun``: bookkeeping for a group of calls: at most ``window`` in flight per
  address (credit-based flow control), request ids, replies matched by id (stale ones ignored),
  per-call timeouts, first-error or collect-all policies, and "settle" for asking several agents
  and taking the first answers. Unit-tested in ``tests/unit/test_batch.py``. Every request
  sent carries its ``deadline`` (``protocol.deadline_for``: when this run gives up on it, on
  the wall clock the caller passes, less the allowed clock skew), so an agent that takes it up
  later applies nothing.
- ``byte_view``: the flat byte view every transfer works on.

Not here: the sockets that carry the frames and the operations (``mesh/client/core.py``), how a
range is cut into calls and how a moving block is followed (``mesh/client/transfer.py``), frame
layouts (``mesh/protocol.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Iterator

import zmq

from mesh import protocol as P
from mesh.errors import InvalidRequest, MeshError, MeshTimeout, ProtocolError


@dataclass(frozen=True)
class Wait:
    """What an operation waits for: readable sockets among ``sockets`` (or writable ones among
    ``writable``: plain sockets only, the direct path's), up to ``timeout_s``. The driver sends
    back the set of those that are ready."""

    sockets: tuple[zmq.Socket, ...]
    timeout_s: float
    writable: tuple[Any, ...] = ()


@dataclass(eq=False)
class Call:
    address: str
    op: str
    fields: dict[str, Any]
    payload: Any = None  # one bytes-like frame, for WRITE
    sink: memoryview | None = None  # where a READ reply's payload is copied
    reply_payload: Any = None  # without a sink: the reply's payload frame, as it came (MANY)
    result: dict[str, Any] | None = None
    error: MeshError | None = None
    request_id: int = 0
    sent_at: float = 0.0
    on_done: Callable[["Call"], None] | None = None  # runs when the call succeeds or fails


@dataclass
class Batch:
    calls: Iterable[Call]
    timeout_s: float
    window: int = 8
    fail_fast: bool = True  # stop at the first error and raise it; else collect per-call errors
    settle_s: float | None = None  # after the first success, wait at most this long for the rest


class BatchRun:
    """Flow control and reply matching for one ``Batch``. Pure: no sockets, no clock."""

    def __init__(self, batch: Batch, ids: Iterator[int]):
        self.batch = batch
        self._calls = iter(batch.calls)
        self._head: Call | None = None
        self._exhausted = False
        self._ids = ids
        self.inflight: dict[int, Call] = {}
        self._per_address: Counter[str] = Counter()
        self.done_calls: list[Call] = []
        self.first_error: MeshError | None = None
        self.first_success_at: float | None = None
        self.abandoned: set[str] = set()

    def ready(self, now: float, wall_now: float | None = None,
              clock_skew_s: float = 0.0) -> list[tuple[Call, list[Any]]]:
        """Calls that may be sent now, with their frames; marks them in flight. With
        ``wall_now`` (``time.time()``), each request carries its deadline."""
        out = []
        if self.first_error is not None and self.batch.fail_fast:
            return out
        while True:
            call = self._head
            if call is None:
                if self._exhausted:
                    break
                call = next(self._calls, None)
                if call is None:
                    self._exhausted = True
                    break
            if self._per_address[call.address] >= self.batch.window:
                self._head = call
                break
            self._head = None
            call.request_id = next(self._ids)
            call.sent_at = now
            fields = call.fields
            if wall_now is not None and P.DEADLINE not in fields:
                fields = {**fields, P.DEADLINE: P.deadline_for(
                    wall_now, self.batch.timeout_s, clock_skew_s)}
            frames: list[Any] = [P.encode_request(call.op, call.request_id, fields)]
            if call.payload is not None:
                frames.append(call.payload)
            self.inflight[call.request_id] = call
            self._per_address[call.address] += 1
            out.append((call, frames))
        return out

    def _complete(self, call: Call) -> None:
        del self.inflight[call.request_id]
        self._per_address[call.address] -= 1
        self.done_calls.append(call)
        if call.error is not None and self.first_error is None:
            self.first_error = call.error
        if call.on_done is not None:
            call.on_done(call)

    def fail(self, call: Call, error: MeshError) -> None:
        call.error = error
        self._complete(call)

    def fail_address(self, address: str, error: MeshError) -> None:
        """Fail every call in flight to ``address`` (its link is gone)."""
        for call in [c for c in self.inflight.values() if c.address == address]:
            self.fail(call, error)

    def on_reply(self, address: str, frames: list[Any], now: float, node: str | None) -> None:
        try:
            reply = P.parse_reply(frames)
        except ProtocolError as exc:
            exc.node = node
            if self.first_error is None:
                self.first_error = exc
            return
        call = self.inflight.get(reply.request_id)
        if call is None or call.address != address:
            return  # a late reply to a call that already timed out
        if not reply.ok:
            try:
                reply.raise_for_error(node)
            except MeshError as exc:
                call.error = exc
        else:
            call.result = reply.body
            if call.sink is not None:
                payload = reply.payload[0] if len(reply.payload) == 1 else None
                sealed = hasattr(type(payload), "open_into")  # seal.SealedPayload: still sealed
                if payload is None or (payload.nbytes if sealed else P.frame_len(payload)) \
                        != call.sink.nbytes:
                    call.error = ProtocolError(
                        f"read reply from {node or address} has the wrong payload size", node=node
                    )
                elif sealed:
                    try:
                        payload.open_into(call.sink)  # decrypted straight into the buffer
                    except ProtocolError as exc:
                        exc.node = node
                        call.error = exc
                else:
                    call.sink[:] = P.frame_view(payload)
            elif reply.payload:
                call.reply_payload = reply.payload[0]
            if self.first_success_at is None:
                self.first_success_at = now
        self._complete(call)

    def finished(self, now: float) -> bool:
        if self.first_error is not None and self.batch.fail_fast:
            if not self.inflight:
                return True
        elif not self.inflight and self._head is None and self._exhausted:
            return True
        if self.batch.settle_s is not None and self.first_success_at is not None:
            if now - self.first_success_at >= self.batch.settle_s:
                self._abandon("did not answer in time")
                return True
        return False

    def wait_s(self, now: float) -> float:
        oldest = min((c.sent_at for c in self.inflight.values()), default=now)
        wait = oldest + self.batch.timeout_s - now
        if self.batch.settle_s is not None and self.first_success_at is not None:
            wait = min(wait, self.first_success_at + self.batch.settle_s - now)
        return wait

    def expire(self, now: float) -> None:
        """Fail every call older than the timeout."""
        for call in list(self.inflight.values()):
            if now - call.sent_at >= self.batch.timeout_s:
                self.abandoned.add(call.address)
                self.fail(call, MeshTimeout(
                    f"no reply from {call.address} to {call.op} within {self.batch.timeout_s:g} s"
                ))

    def _abandon(self, why: str) -> None:
        for call in list(self.inflight.values()):
            self.abandoned.add(call.address)
            self.fail(call, MeshTimeout(f"{call.address} {why}"))

    def waiting_on(self, address: str) -> bool:
        """Whether a call to ``address`` is in flight."""
        return self._per_address[address] > 0

    def inflight_addresses(self) -> set[str]:
        return {c.address for c in self.inflight.values()}

    def outcome(self) -> list[Call]:
        if self.batch.fail_fast and self.first_error is not None:
            raise self.first_error
        return self.done_calls


Op = Generator[Wait, Any, Any]


def byte_view(data: Any, *, writable: bool = False) -> memoryview:
    """A flat byte view of any contiguous bytes-like object (bytes, memoryview, numpy array)."""
    try:
        view = memoryview(data)
    except TypeError:
        raise InvalidRequest(f"expected a bytes-like object, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise InvalidRequest("the buffer must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and view.readonly:
        raise InvalidRequest("the buffer to read into is read-only")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view
