"""The direct path: block reads and writes over a plain TCP stream to the agent, beside ZeroMQ,
for clusters without keys. This module owns its framing; the messages are the same-host path's
(``mesh/localwire.py``), the agent's side is ``agents/direct.py``, the client's
``mesh/client/direct.py``.

Why. libzmq receives every frame into a buffer of its own, so each received chunk costs one
copy more than a socket's ``recv_into``, and one connection tops out near 0.7x a raw TCP stream
here; a small request also crosses libzmq's I/O thread twice each way. On the direct path the
bytes of a large operation go from the sender's memory into the kernel and out into the
receiver's memory (the block, or the caller's buffer), and a small one is one message each way.

Finding it. An agent with ``mesh.direct_tcp`` (the default) and no cluster keys listens on a
TCP port of its data host (the node's ``direct_port``: mesh_port + 3 unless another agent of the
file uses that port; 0: any free port) and names it in its DIRECT
reply (``protocol.DIRECT``). With keys it does not listen: every byte of a keyed cluster is
sealed, which the ZeroMQ path does.

Frames. Each message is a 4-byte big-endian length and that many bytes of msgpack, at most
``localwire.MAX_MESSAGE``; a longer length is a broken stream (the connection is dropped).
Requests and replies are those of ``localwire`` (HELLO, BEGIN, END; small operations inline).

One large operation::

    client: BEGIN {block, offset, length, write, have: 0}
    agent:  {pin, ino, size}            then, for a read, exactly ``length`` raw bytes
    client: (a write: exactly ``length`` raw bytes)  END {pin}
    agent:  {} | error "changed" (do it again over ZeroMQ, which follows the block)

The agent checks and pins the range in BEGIN as for a same-host operation, and moves the raw
bytes on a worker thread (``agents/direct.py``), so its loop goes on serving. A BEGIN that is
refused is followed by nothing: the client does the operation over ZeroMQ. A write carries the
request's deadline (``deadline``, wall-clock seconds); the agent stops taking its bytes in, and
drops the connection, once it has passed (a write the client gave up on is not applied later).
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import msgpack

from mesh import localwire as L

LENGTH = struct.Struct(">I")
MAX_FRAME = L.MAX_MESSAGE
READ_BYTES = 2 * (MAX_FRAME + LENGTH.size)  # what one receive of frames asks for
# A large operation's bytes are sent at most this much a send, by both sides: on this VM's
# loopback 1 GiB went at 4.0-4.7 GB/s in 1 MiB sends against 2.7-2.9 in sends of all that was
# left (client writes) and 4.1-4.3 against 4.8-5.3 in 4 MiB ones (agent reads); 128-512 KiB
# and 2-16 MiB sends were slower (2.3-3.8). (What a send copies is still in the sender's cache
# when the receiver copies it out: 2 MiB of L2 a core here.)
SEND_PIECE = 1 << 20


class BrokenStream(L.BadMessage):
    """A frame over the size limit, or bytes that are not msgpack: the connection is useless."""


def frame_parts(message: Any) -> list[bytes]:
    """A frame as its length and its body, for ``sendmsg`` (no copy of the two joined)."""
    data = msgpack.packb(message, use_bin_type=True)
    return [LENGTH.pack(len(data)), data]


def frame(message: Any) -> bytes:
    return b"".join(frame_parts(message))


_chunk = threading.local()  # one receive buffer per thread, for every connection it reads


class Frames:
    """Frames taken out of a stream as its bytes arrive (non-blocking reads)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def fill(self, sock: socket.socket) -> None:
        """Add what ``sock`` has (one receive, into a buffer reused for every call of this
        thread, not a new bytes object of the largest size each time); ``EOFError`` when the
        peer closed, ``BlockingIOError`` when nothing has come."""
        chunk = getattr(_chunk, "buf", None)
        if chunk is None:
            chunk = _chunk.buf = memoryview(bytearray(READ_BYTES))
        n = sock.recv_into(chunk)
        if n == 0:
            raise EOFError("the peer closed the connection")
        self.buf += chunk[:n]

    def next(self) -> Any:
        """The next whole message, or ``None`` until more bytes have arrived."""
        if len(self.buf) < LENGTH.size:
            return None
        (n,) = LENGTH.unpack_from(self.buf)
        if n > MAX_FRAME:
            raise BrokenStream(f"a frame of {n} bytes (at most {MAX_FRAME})")
        if len(self.buf) < LENGTH.size + n:
            return None
        body = memoryview(self.buf)[LENGTH.size : LENGTH.size + n]  # unpacked in place
        try:
            return msgpack.unpackb(body, raw=False)
        except Exception as exc:
            raise BrokenStream(f"not msgpack: {exc}") from None
        finally:
            body.release()
            del self.buf[: LENGTH.size + n]

    def take(self, n: int) -> bytes:
        """Up to ``n`` raw bytes that arrived after the last frame taken."""
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def host_of(address: str) -> str:
    """The host part of an agent's data address (``tcp://HOST:PORT``; ``[v6]`` unwrapped)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def tune(sock: socket.socket) -> None:
    """Small messages leave at once (no Nagle delay)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
