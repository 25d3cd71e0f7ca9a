"""The same-host path: how a client on an agent's machine reads and writes that agent's blocks
through shared memory instead of TCP. This module owns its messages; the agent's side is
``agents/local.py``, the client's ``mesh/client/local.py``.

Every block of an agent with ``mesh.local_access`` (the default) lives in a memfd (an anonymous
file in RAM, ``agents/backing.py``). The agent also listens on a Unix socket in the abstract
namespace, named after its data address (``socket_name``): a client that reaches the agent at
``tcp://127.0.0.1:7000`` tries ``\\0mesh-agent:tcp://127.0.0.1:7000``. Only a process of the same
machine and network namespace can connect, and connecting is the test of "same host": nothing
else has to be configured. A SOCK_SEQPACKET socket keeps message boundaries and carries file
descriptors (SCM_RIGHTS), so the agent hands a block's memfd to the client, which maps it.

Messages are msgpack, at most ``MAX_MESSAGE`` bytes::

    request = [op, id, fields]
    reply   = [id, OK, result] | [id, ERROR, {"code": str, "message": str}]

    HELLO {[ticket]}                         -> {node, incarnation, version}
    BEGIN {block, offset, length, write, have} -> {pin, ino, size}  (+ the block's memfd
                                                  unless ``have`` is its inode already)
          {..., data}  (write, at most INLINE_MAX bytes) -> {done}: written by the agent
          {..., inline: true}  (read, at most INLINE_MAX) -> {done, data}: read by the agent
    END   {pin}                              -> {}

A small operation (``INLINE_MAX``, 64 KiB) carries its bytes in the message instead: one round
trip, and the agent copies them in its loop (no pin, no mapping), as a network op would.

Who may connect. Without cluster keys, a process of the agent's own user (or root): the kernel
says who the peer is (SO_PEERCRED). With keys, the client first asks the agent over its
authenticated data-plane session for a one-use ``ticket`` (``protocol.LOCAL``, any role) and
presents it in HELLO: the Unix session then has that key's role, looked up again at every
BEGIN (a revoked key is refused at once), as on the network.

One operation is BEGIN, a memory copy by the client, then END. BEGIN runs the checks a READ or
WRITE would (role, bounds, state, replicas) and *pins* the range: a network write to a range a
local read has pinned waits for its END, as it waits for a zero-copy read to leave
(``agents/writegate.py``). END says whether the block stayed as it was (not freed, moved or
handed to replicas meanwhile); if not, the client does the operation again over the network,
which follows the block. A local write is refused (``not_local``) for a block with copies on
other nodes (its primary must forward every write) and while a network read of the range is in
flight (``busy``); the client then uses the network for that operation.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import msgpack

VERSION = 1
INLINE_MAX = 64 * 1024
MAX_MESSAGE = INLINE_MAX + 4096
NAME_PREFIX = "mesh-agent:"

HELLO = "hello"
BEGIN = "begin"
END = "end"

OK = 0
ERROR = 1

# Error codes that mean "use the network for this operation", not "it failed".
FALLBACK_CODES = frozenset({"not_local", "busy", "changed"})

_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    HELLO: {},
    BEGIN: {"block": (str,), "offset": (int,), "length": (int,), "write": (bool,),
            "have": (int,)},
    END: {"pin": (int,)},
}


class BadMessage(Exception):
    """A message that is not a well-formed request or reply."""


def socket_name(address: str) -> str:
    """The abstract Unix socket of the agent whose data address is ``address``."""
    return f"\0{NAME_PREFIX}{address}"


def send(sock: socket.socket, message: Any, fds: tuple[int, ...] = (), flags: int = 0) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    if fds:
        socket.send_fds(sock, [data], list(fds), flags)
    else:
        sock.send(data, flags)


def recv(sock: socket.socket, flags: int = 0) -> tuple[Any, list[int]]:
    """One message and the descriptors that came with it. ``EOFError`` when the peer closed;
    ``BadMessage`` when it is not msgpack or was cut (descriptors that came are closed)."""
    data, fds, msg_flags, _ = socket.recv_fds(sock, MAX_MESSAGE, 4, flags)
    if not data and not fds:
        raise EOFError
    if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        _close_all(fds)
        raise BadMessage("message over the size limit")
    try:
        return msgpack.unpackb(data, raw=False), fds
    except Exception as exc:
        _close_all(fds)
        raise BadMessage(f"not msgpack: {exc}") from None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def parse_request(message: Any) -> tuple[str, int, dict[str, Any]]:
    """(op, id, fields) of a request, its fields' types checked; ``BadMessage`` otherwise."""
    if not (isinstance(message, list) and len(message) == 3):
        raise BadMessage("a request is [op, id, fields]")
    op, rid, fields = message
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise BadMessage("the request id must be an integer")
    if op not in _FIELDS:
        raise BadMessage(f"unknown op {op!r}")
    if not isinstance(fields, dict):
        raise BadMessage("fields must be a map")
    for name, types in _FIELDS[op].items():
        value = fields.get(name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadMessage(f"{op}: field {name!r} must be {types[0].__name__}")
    for name in ("offset", "length", "have", "pin"):
        if name in _FIELDS[op] and fields[name] < 0:
            raise BadMessage(f"{op}: field {name!r} must be >= 0")
    if op == BEGIN:
        data = fields.get("data")
        if data is not None and (not fields["write"] or not isinstance(data, bytes)
                                 or len(data) != fields["length"]):
            raise BadMessage("begin: data must be the write's bytes, length of them")
        if fields.get("inline") is not None and (fields["write"] or fields["inline"] is not True
                                                 or fields["length"] > INLINE_MAX):
            raise BadMessage(f"begin: inline is for a read of at most {INLINE_MAX} bytes")
    return op, rid, fields


def reply_ok(rid: int, result: dict[str, Any]) -> list[Any]:
    return [rid, OK, result]


def reply_error(rid: int, code: str, message: str) -> list[Any]:
    return [rid, ERROR, {"code": code, "message": message}]


def parse_reply(message: Any) -> tuple[int, bool, dict[str, Any]]:
    """(id, ok, result or {code, message}); ``BadMessage`` otherwise."""
    if not (isinstance(message, list) and len(message) == 3 and isinstance(message[0], int)
            and message[1] in (OK, ERROR) and isinstance(message[2], dict)):
        raise BadMessage("a reply is [id, status, body]")
    return message[0], message[1] == OK, message[2]
