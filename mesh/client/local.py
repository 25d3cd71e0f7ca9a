"""The client's side of the same-host path (``mesh/localwire.py``): a read or write of a block
held by an agent on this machine is one memory copy between the caller's buffer and the block,
mapped from the agent's memfd, instead of chunks over TCP.

``LocalPath`` belongs to one core (``mesh/client/core.py``), so one operation uses it at a
time. Per agent address it keeps a Unix connection (made on first use: connecting to the name
is the test of "same host"; an address where nothing listens is tried again after
``RETRY_ABSENT_S``) and the blocks it has mapped (the ``MAX_MAPS`` most recently used; a block's
inode tells a current mapping from one of memory the block has since left).

An operation of at most ``INLINE_MAX`` bytes carries them in its message instead (one round
trip; the agent copies). ``read``/``write`` return True when the operation was done here, False when the caller must do
it over the network: no same-host agent, mappings off (``mesh.local_access: false``), the agent
said to (``FALLBACK_CODES``: a replicated block's write, a range being sent, a block that
changed during the copy), or any refusal (the network path gives the error its callers know, and
follows a block that moved). A timeout is an error as on the network (``MeshTimeout``).
Large copies run on two threads (``mesh/memcopy.py``).
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh import localwire as L
from mesh import memcopy
from mesh import protocol as P
from mesh.client.batch import Op, Wait
from mesh.errors import MeshError, MeshTimeout, error_from_wire

if TYPE_CHECKING:
    from mesh.client.core import Core

RETRY_ABSENT_S = 5.0
HELLO_TIMEOUT_S = 1.0  # a first contact that stalls costs at most this before the network
MAX_MAPS = 64
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000)


class _Fallback(Exception):
    """Do this operation over the network."""


@dataclass(eq=False)
class _Map:
    mm: mmap.mmap
    view: memoryview
    ino: int
    writable: bool  # a reader's descriptor (keyed cluster) maps read-only

    def close(self) -> None:
        self.view.release()
        self.mm.close()


class _Link:
    def __init__(self, sock: socket.socket, address: str):
        self.sock, self.address = sock, address
        self.node: str | None = None
        self.ids = itertools.count(1)
        self.maps: OrderedDict[str, _Map] = OrderedDict()

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        self.sock.close()


class LocalPath:
    NAME = "same-host path"
    RETRY_ABSENT_S = RETRY_ABSENT_S
    MIN_BULK = 0  # operations over INLINE_MAX and under this go over ZeroMQ

    def __init__(self, core: Core):
        self.core = core
        self.enabled = core.settings.local_access
        self._links: dict[str, _Link] = {}
        self._absent: dict[str, float] = {}  # address -> when to try it again
        self.done = 0  # operations done here (for tests and the curious)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    def forget(self, block_id: str) -> None:
        """Unmap a block the client freed, or found gone."""
        for link in self._links.values():
            self._unmap(link, block_id)

    def read(self, address: str, block_id: str, offset: int, out: memoryview) -> Op:
        return (yield from self._op(address, block_id, offset, out, False))

    def write(self, address: str, block_id: str, offset: int, data: memoryview) -> Op:
        if block_id in self.core.replicated:  # its primary forwards each write: network
            return False
        return (yield from self._op(address, block_id, offset, data, True))

    def _op(self, address: str, block_id: str, offset: int, view: memoryview,
            write: bool) -> Op:
        try:
            return (yield from self._one(address, block_id, offset, view, write))
        except BaseException:
            # Given up mid-operation (an asyncio task cancelled, a timeout, an interrupt): the
            # direct path's stream may hold the rest of a reply or of a block's bytes, which the
            # next request would take for its reply, and the agent may hold a pin. A new
            # connection next time; the agent drops the pins of the old one.
            link = self._links.get(address)
            if link is not None:
                self._drop(link)
            raise

    def _one(self, address: str, block_id: str, offset: int, view: memoryview,
             write: bool) -> Op:
        n = view.nbytes
        if not self.enabled or n == 0 or L.INLINE_MAX < n < self.MIN_BULK:
            return False
        link = yield from self._link(address)
        if link is None:
            return False
        fields = {"block": block_id, "offset": offset, "length": n, "write": write,
                  "have": self._have(link, block_id, write)}
        if n <= L.INLINE_MAX:  # the bytes travel in the message: one round trip
            fields.update({"data": view} if write else {"inline": True})  # packed, not copied
        else:
            fields.update(self._extra(write))
        try:
            begun, fds = yield from self._ask(link, L.BEGIN, fields)
        except _Fallback:
            return False
        except MeshTimeout:
            raise
        except MeshError:  # refused: the network path says why, or finds where it went
            self._unmap(link, block_id)
            return False
        if n <= L.INLINE_MAX and begun.get("done") == n:  # (an agent that pinned instead
            if not write:                                  # ends the pin below, unused)
                data = begun.get("data")
                if not isinstance(data, bytes) or len(data) != n:
                    return False
                view[:] = data
            self.done += 1
            return True
        if n <= L.INLINE_MAX or "pin" not in begun:
            for fd in fds:
                os.close(fd)
            if "pin" in begun:
                try:
                    yield from self._ask(link, L.END, {"pin": begun["pin"]})
                except (_Fallback, MeshError):
                    pass
            return False
        try:
            moved = yield from self._bulk(link, block_id, fds, begun, offset, view, write)
        except _Fallback:  # (the connection broke: dropped)
            return False
        try:
            yield from self._ask(link, L.END, {"pin": begun["pin"]})
        except _Fallback:
            return False
        except MeshTimeout:
            raise
        except MeshError:
            return False
        if not moved:
            return False
        self.done += 1
        return True

    # --- what differs between transports (mesh/client/direct.py has the other one) ------------

    def _have(self, link: _Link, block_id: str, write: bool) -> int:
        """The inode of the block's mapping this client holds (0: none, or a read-only one and
        now a write: the agent sends a descriptor)."""
        have = link.maps.get(block_id)
        return have.ino if have is not None and (have.writable or not write) else 0

    def _extra(self, write: bool) -> dict[str, Any]:
        return {}

    def _bulk(self, link: _Link, block_id: str, fds: list[int], begun: dict[str, Any],
              offset: int, view: memoryview, write: bool) -> Op:
        """The bytes of a large operation begun: here, one copy through the block's mapping.
        False when it could not be done (the client does it over the network)."""
        n = view.nbytes
        try:
            mapped = self._mapping(link, block_id, fds, begun, populate=2 * n >= begun["size"])
        except (OSError, ValueError):
            return False
        if mapped is None:
            return False
        region = mapped.view[offset : offset + n]
        try:
            memcopy.copy(region, view) if write else memcopy.copy(view, region)
        finally:
            region.release()
        link.maps.move_to_end(block_id)
        return True
        yield  # (a generator, as the direct path's)

    # --- mappings -----------------------------------------------------------------------------

    def _mapping(self, link: _Link, block_id: str, fds: list[int], begun: dict[str, Any],
                 populate: bool) -> _Map | None:
        """The block's mapping: the one kept if it is of the same memory, else a new one of the
        descriptor the agent sent."""
        try:
            if not fds:
                kept = link.maps.get(block_id)
                return kept if kept is not None and kept.ino == begun["ino"] else None
            fd = fds[0]
            if os.fstat(fd).st_ino != begun["ino"]:
                return None
            flags = mmap.MAP_SHARED | (MAP_POPULATE if populate else 0)
            writable = os.O_RDWR == fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
            mm = mmap.mmap(fd, begun["size"], flags=flags,
                           prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        finally:
            for fd in fds:
                os.close(fd)
        self._unmap(link, block_id)
        link.maps[block_id] = mapped = _Map(mm, memoryview(mm), begun["ino"], writable)
        while len(link.maps) > MAX_MAPS:
            link.maps.popitem(last=False)[1].close()
        return mapped

    def _unmap(self, link: _Link, block_id: str) -> None:
        old = link.maps.pop(block_id, None)
        if old is not None:
            old.close()

    # --- the connection -----------------------------------------------------------------------

    def _link(self, address: str) -> Op:
        link = self._links.get(address)
        if link is not None:
            return link
        if time.monotonic() < self._absent.get(address, 0.0):
            return None
        try:
            sock = yield from self._connect(address)
        except (_Fallback, MeshError, KeyError, TypeError, OSError):
            sock = None
        if sock is None:  # no agent of this machine serves that address (or no direct port)
            self._absent[address] = time.monotonic() + self.RETRY_ABSENT_S
            return None
        link = self._links[address] = self._new_link(sock, address)
        try:
            hello = yield from self._greet(link)
            expected = self.core.node_name(address)
            if hello.get("version") != L.VERSION or (expected and hello.get("node") != expected):
                raise _Fallback
        except (_Fallback, MeshError, KeyError, TypeError):
            self._drop(link)
            self._absent[address] = time.monotonic() + self.RETRY_ABSENT_S
            return None
        link.node = hello.get("node")
        return link

    def _new_link(self, sock: Any, address: str) -> _Link:
        return _Link(sock, address)

    def _connect(self, address: str) -> Op:
        """A connected socket to the agent at ``address``, or None."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect(L.socket_name(address))
        except OSError:
            sock.close()
            return None
        return sock
        yield  # (a generator, as the direct path's)

    def _greet(self, link: _Link) -> Op:
        """HELLO's answer (with a ticket on a keyed cluster)."""
        try:
            hello, _ = yield from self._ask(link, L.HELLO, {}, HELLO_TIMEOUT_S)
        except MeshError as exc:
            if exc.code != "unauthenticated":
                raise
            # a keyed cluster: a one-use ticket over the authenticated network session
            granted = yield from self.core.call(link.address, P.LOCAL, {}, wait_moving=False)
            hello, _ = yield from self._ask(link, L.HELLO, {"ticket": granted["ticket"]},
                                            HELLO_TIMEOUT_S)
        return hello

    def _send(self, link: _Link, message: Any, deadline: float) -> Op:
        L.send(link.sock, message, flags=socket.MSG_DONTWAIT)
        return
        yield  # (a generator, as the direct path's)

    def _buffered(self, link: _Link) -> bool:
        """Whether bytes of the next reply may have been read already."""
        return False

    def _recv(self, link: _Link) -> tuple[Any, list[int]]:
        """The next message, non-blocking (``BlockingIOError`` when none yet)."""
        return L.recv(link.sock, socket.MSG_DONTWAIT)

    def _drop(self, link: _Link) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]
        link.close()

    def _ask(self, link: _Link, op: str, fields: dict[str, Any],
             timeout_s: float | None = None) -> Op:
        """(result, descriptors) of one request. ``_Fallback`` when the agent says so or the
        connection broke; ``MeshTimeout``; the agent's error otherwise."""
        rid = next(link.ids)
        timeout_s = timeout_s or self.core.settings.request_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            yield from self._send(link, [op, rid, fields], deadline)
        except OSError:
            self._drop(link)
            raise _Fallback from None
        waited = self._buffered(link)  # (a reply takes a moment: wait before reading)
        while True:
            if not waited:
                waited = True
                yield Wait((link.sock,), max(0.0, deadline - time.monotonic()))
            try:
                message, fds = self._recv(link)
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0:
                    self._drop(link)
                    raise MeshTimeout(f"no reply from {link.address} ({self.NAME}) to {op} "
                                      f"within {timeout_s:g} s", node=link.node) from None
                yield Wait((link.sock,), left)
                continue
            except (EOFError, OSError, L.BadMessage):
                self._drop(link)
                raise _Fallback from None
            try:
                got, ok, body = L.parse_reply(message)
            except L.BadMessage:
                got, ok, body = -1, False, {}
            if got != rid:  # (a reply to a request given up on: not ours)
                for fd in fds:
                    os.close(fd)
                continue
            if ok:
                return body, fds
            for fd in fds:
                os.close(fd)
            if body.get("code") in L.FALLBACK_CODES:
                raise _Fallback
            raise error_from_wire(str(body.get("code")), str(body.get("message")),
                                  node=link.node)
