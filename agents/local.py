"""The agent's side of the same-host path (``mesh/localwire.py``): a client on this machine reads
and writes blocks straight in shared memory.

``LocalServer`` listens on the agent's abstract Unix socket (SOCK_SEQPACKET), which the loop
polls with its other sockets; every connection is served in the loop, one message at a time,
never blocking (a client that stops reading is disconnected). It answers HELLO (who may speak:
the agent's own user or root without keys, a ticket's key with them), BEGIN (the checks of a
READ or WRITE, a *pin* on the range, and the block's memfd when the client has not mapped it
yet; or, for a small one, the copy itself) and END (did the block stay as it was?). A read's pin is entered in the write gate, so a
network write to that range waits for its END (``agents/writegate.py``); a pin whose client
never ends it is released after ``PIN_TIMEOUT_S``.

Counted in the metrics as the READ or WRITE it stands for. Tickets for keyed clusters are made
here too (``ticket``: the LOCAL op of the data plane, ``agents/server.py``).

Not here: the block memory itself (``agents/backing.py``: ``shared_memory``), the checks'
rules (``agents/store.py``, ``agents/replication.py``), the client (``mesh/client/local.py``).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agents import lifecycle, logs
from agents.access import RANK
from agents.backing import MEMFDS
from agents.store import Block
from mesh import localwire as L
from mesh import protocol as P
from mesh.errors import AgentError, AuthenticationError, BlockMoving, Forbidden, InvalidRequest, \
    MeshError

log = logging.getLogger("mesh.agent")

PIN_TIMEOUT_S = 10.0  # a pin its client never ended stops holding writes back after this
MAX_CONNECTIONS = 256
MAX_PINS = 64  # per connection (a client core runs one operation at a time)
MAX_TICKETS = 1024
TICKET_TTL_S = 30.0
_BATCH = 64  # messages per connection per loop turn


class _Fallback(Exception):
    """The client should do this operation over the network (``localwire.FALLBACK_CODES``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(eq=False)
class Pin:
    pin_id: int
    block: Block
    start: int
    end: int
    write: bool
    arrived: float  # perf_counter, for the latency histogram
    since: float  # monotonic, for PIN_TIMEOUT_S
    done: bool = False  # read by the write gate, as a zmq MessageTracker's


@dataclass(eq=False)
class Conn:
    sock: socket.socket
    uid: int
    public: bytes | None = None  # the key of the ticket it presented (keyed clusters)
    hello: bool = False
    pins: dict[int, Pin] = field(default_factory=dict)


class LocalServer:
    """The same-host path of one ``Agent`` (``agents/server.py``), whose ``store``, ``repl``,
    ``gate``, ``access``, ``metrics``, ``s`` and ``incarnation`` it uses."""

    def __init__(self, agent: Any):
        self.agent = agent
        self.listener: socket.socket | None = None
        self.name = ""
        self.conns: dict[socket.socket, Conn] = {}
        self.version = 0  # bumped when the set of sockets to poll changes
        self._pins = itertools.count(1)
        self._tickets: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.refused = 0  # connections refused (too many, wrong user) and garbled messages
        self._made: list[int] = []  # descriptors made for the reply being sent

    # --- sockets ------------------------------------------------------------------------------

    def bind(self, address: str) -> None:
        """Listen at the name of ``address`` (the agent's data address). An agent that cannot
        (another process holds the name) serves over the network only, and says so."""
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(L.socket_name(address))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            log.warning("same-host path off: cannot listen at @%s: %s", L.socket_name(address)[1:],
                        exc)
            return
        self.listener, self.name = sock, L.socket_name(address)[1:]
        self.version += 1

    def describe(self) -> dict[str, Any]:
        """For STATS: the socket's name ("" when off), connections, and blocks in memfds."""
        return {"socket": self.name, "connections": len(self.conns), "refused": self.refused,
                "shared_blocks": MEMFDS.open, "shared_budget": MEMFDS.budget}

    def sockets(self) -> list[socket.socket]:
        return ([self.listener] if self.listener is not None else []) + list(self.conns)

    def close(self) -> None:
        for sock in list(self.conns):
            self._drop(sock)
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def drain(self, events: dict[Any, int]) -> None:
        """Serve what the loop's poll found readable (a zmq poller reports a plain socket by
        its descriptor)."""
        if self.listener is not None and self.listener.fileno() in events:
            self._accept()
        for sock in [s for s in self.conns if s.fileno() in events]:
            self._serve(sock)

    def tick(self, now: float) -> None:
        """Release pins their clients never ended; forget old tickets."""
        for conn in self.conns.values():
            for pin_id in [i for i, p in conn.pins.items() if now - p.since > PIN_TIMEOUT_S]:
                conn.pins.pop(pin_id).done = True
        while self._tickets and next(iter(self._tickets.values()))[1] < now:
            self._tickets.popitem(last=False)

    def ticket(self, caller: Any) -> bytes:
        """A one-use ticket that lets a Unix connection act with ``caller``'s key."""
        token = secrets.token_bytes(16)
        self._tickets[token] = (caller.public, time.monotonic() + TICKET_TTL_S)
        while len(self._tickets) > MAX_TICKETS:
            self._tickets.popitem(last=False)
        return token

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(_BATCH):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client falls back to TCP
                log.warning("same-host path: accept failed: %s", exc)
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            self.conns[sock] = self._adopt(sock)
            self.version += 1

    def _adopt(self, sock: socket.socket) -> Conn:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return Conn(sock, uid)

    def _drop(self, sock: socket.socket) -> None:
        conn = self.conns.pop(sock, None)
        if conn is not None:
            for pin in conn.pins.values():
                pin.done = True
            self.version += 1
        sock.close()

    def _serve(self, sock: socket.socket) -> None:
        conn = self.conns[sock]
        for _ in range(_BATCH):
            try:
                message, fds = L.recv(sock, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except (EOFError, OSError, L.BadMessage) as exc:
                if isinstance(exc, L.BadMessage):
                    self.refused += 1
                self._drop(sock)
                return
            for fd in fds:  # a client sends none
                os.close(fd)
            reply, fds = self._handle(conn, message)
            try:
                L.send(sock, reply, fds, socket.MSG_DONTWAIT)
            except OSError:  # it stopped reading, or went away
                self._drop(sock)
                return
            finally:
                while self._made:
                    os.close(self._made.pop())

    # --- requests -----------------------------------------------------------------------------

    def _handle(self, conn: Conn, message: Any) -> tuple[list[Any], tuple[int, ...]]:
        rid = message[1] if isinstance(message, list) and len(message) == 3 and \
            isinstance(message[1], int) else 0
        try:
            op, rid, fields = L.parse_request(message)
            # at DEBUG one line per operation, as a network request gets (agents/logs.py)
            logs.set_request(rid, (P.WRITE if fields["write"] else P.READ)
                             if op == L.BEGIN else None)
            if op == L.HELLO:
                return L.reply_ok(rid, self._hello(conn, fields)), ()
            if not conn.hello:
                raise InvalidRequest("say hello first")
            if op == L.BEGIN:
                result, fds = self._begin(conn, fields)
                return L.reply_ok(rid, result), fds
            return L.reply_ok(rid, self._end(conn, fields)), ()
        except L.BadMessage as exc:
            self.refused += 1
            return L.reply_error(rid, "bad_request", str(exc)), ()
        except (_Fallback, MeshError) as exc:
            log.debug("same-host %s refused: %s", message[0], exc.message,
                      extra={"event": "request_refused", "code": exc.code})
            return L.reply_error(rid, exc.code, exc.message), ()
        except Exception as exc:  # a bug must not take the agent down
            log.exception("same-host path: internal error")
            return L.reply_error(rid, "internal", repr(exc)), ()
        finally:
            logs.clear_request()

    def _hello(self, conn: Conn, fields: dict[str, Any]) -> dict[str, Any]:
        a = self.agent
        if a.access.keyed:
            found = self._tickets.pop(fields.get("ticket") or b"", None)
            if found is None or found[1] < time.monotonic():
                raise AuthenticationError(f"node {a.s.node}: the same-host path needs a ticket "
                                          "of a key (ask LOCAL over the network)", node=a.s.node)
            conn.public = found[0]
        elif conn.uid not in (os.getuid(), 0):
            self.refused += 1
            raise Forbidden(f"node {a.s.node}: the same-host path serves only user "
                            f"{os.getuid()}'s processes (this one is user {conn.uid})",
                            node=a.s.node)
        conn.hello = True
        return {"node": a.s.node, "incarnation": a.incarnation, "version": L.VERSION}

    def _begin(self, conn: Conn, f: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...]]:
        a = self.agent
        write, offset, length = f["write"], f["offset"], f["length"]
        op = P.WRITE if write else P.READ
        if a.access.keyed:
            a.access.check(op, a.access.caller(conn.public))
        if len(conn.pins) >= MAX_PINS:
            raise AgentError(f"node {a.s.node}: over {MAX_PINS} operations open on one "
                             "connection", node=a.s.node)
        arrived = time.perf_counter()
        a.metrics.arrived(op, length if write else 0)
        block = a.store.served(f["block"])
        a.store.check_range(block, offset, length)
        end = offset + length
        if write:
            a.repl.check_primary(block.block_id)
            a.store.check_still(block)
            if block.block_id in a.repl.copies:
                raise _Fallback("not_local", f"block {block.block_id} has copies: its writes go "
                                "through the network to be forwarded")
            if a.gate.must_wait(block.block_id, offset, end):
                raise _Fallback("busy", f"a read of block {block.block_id} is in flight")
        else:
            a.repl.check_serving(block.block_id)
            if not lifecycle.serves_reads(block.state):
                raise BlockMoving(f"block {block.block_id} is being handed over to another "
                                  "node; retry in a moment", node=a.s.node)
        if "data" in f or f.get("inline"):  # small: copied here, in the loop (no pin)
            if write:
                block.view[offset:end] = f["data"]
            result = {"done": length}
            if not write:  # copied once, by msgpack as the reply is packed
                result["data"] = block.view[offset:end]
            a.metrics.replied(op, "ok", arrived, 0 if write else length)
            return result, ()
        return self._open(conn, block, offset, end, write, arrived, f)

    def _pin(self, conn: Conn, block: Block, offset: int, end: int, write: bool,
             arrived: float) -> Pin:
        pin = Pin(next(self._pins), block, offset, end, write, arrived, time.monotonic())
        conn.pins[pin.pin_id] = pin
        if not write:  # network writes to this range wait for its END
            self.agent.gate.sent(block.block_id, offset, end, pin)
        return pin

    def _open(self, conn: Conn, block: Block, offset: int, end: int, write: bool,
              arrived: float, f: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...]]:
        """A large operation begun: the range pinned and the block's memfd, when the client has
        not mapped it yet."""
        if block.fd < 0:
            raise _Fallback("not_local", f"block {block.block_id} is not in shared memory")
        pin = self._pin(conn, block, offset, end, write, arrived)
        fds: tuple[int, ...] = ()
        if f["have"] != block.ino:  # a reader of a keyed cluster gets a read-only descriptor
            fds = (block.fd,)
            if self._reader(conn):
                fds = (os.open(f"/proc/self/fd/{block.fd}", os.O_RDONLY | os.O_CLOEXEC),)
                self._made.extend(fds)  # closed once sent
        return {"pin": pin.pin_id, "ino": block.ino, "size": block.size}, fds

    def _reader(self, conn: Conn) -> bool:
        caller = self.agent.access.caller(conn.public) if self.agent.access.keyed else None
        return caller is not None and RANK[caller.role] < RANK["writer"]

    def _end(self, conn: Conn, f: dict[str, Any]) -> dict[str, Any]:
        a = self.agent
        pin = conn.pins.pop(f["pin"], None)
        if pin is None:
            raise InvalidRequest(f"no operation {f['pin']} is open on this connection")
        pin.done = True
        block = pin.block
        op = P.WRITE if pin.write else P.READ
        same = a.store.holds(block) and lifecycle.listed(block.state)
        if pin.write:
            same = same and lifecycle.accepts_changes(block.state) and \
                block.block_id not in a.repl.copies
        if not same:
            a.metrics.replied(op, "changed", pin.arrived)
            raise _Fallback("changed", f"block {block.block_id} changed on node {a.s.node} "
                            "during the operation")
        length = pin.end - pin.start
        a.metrics.replied(op, "ok", pin.arrived, 0 if pin.write else length)
        if not pin.write:
            a.reads_served += 1
            if block.state is lifecycle.State.MOVING:
                a.moves.read_served(block.block_id, pin.end)
        return {}
