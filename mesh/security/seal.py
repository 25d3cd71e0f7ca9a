"""Sealed messages: the bulk data path of a keyed mesh, AES-256-GCM under a per-session key.

CURVE (libsodium's crypto_box) runs at ~0.3 GB/s on this CPU against 2-3 GB/s for plaintext, so
a keyed mesh uses CURVE only to authenticate and to agree a session (``mesh/security/link.py``,
``agents/access.py``), and carries every request and reply of that session on a second
connection as sealed messages. AES-256-GCM (OpenSSL through ``cryptography``) runs at ~9 GB/s
per core here. Nothing below the AEAD is ours: this module only frames, numbers and checks.

A sealed message is two or three ZeroMQ frames::

    envelope   = MAGIC (2) | session id (8) | counter (8, big-endian) | direction (1) | frames (1)
    header     = AESGCM(key).encrypt(nonce(0, direction, counter), header plaintext, aad=envelope)
    [payload]  = AESGCM(key).encrypt(nonce(1, direction, counter), payload, aad=envelope + header
                 plaintext)

    nonce(part, direction, counter) = part (1) | direction (1) | 0 0 (2) | counter (8)

- The key is 32 random bytes made by the agent for one session and sent to the client inside
  the CURVE channel (so only that key's holder has it); the session id names it on the wire.
- Nonces never repeat under a key: each direction numbers its messages 1, 2, 3, ... and the two
  parts of a message differ in ``part``.
- The receiver takes only counters above the last it accepted in that direction (a replayed or
  reordered message is refused; gaps are fine, a reply dropped at a full queue leaves one), and
  only messages of its own session (a message sealed in another session fails its tag).
- The envelope (frame count included) is associated data of both parts, the header plaintext of
  the payload: a truncated, re-ordered, spliced or tampered message fails to open. Nothing is
  returned, and no counter moves, until every part has been authenticated (but a client may take
  a payload still sealed, ``SealedPayload``, once envelope and header are: see there).

``SessionLost`` is the one unsealed reply: an agent that does not know a session (it restarted,
or dropped an idle one) answers ``NO_SESSION + session id``; the client then makes a new session.
It is not authenticated, so the most a forger can do with it is make a client shake hands again.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mesh.errors import SealError, SessionLost  # defined there, so clients need not load this

__all__ = ["SealError", "SessionLost", "Sealer", "Opener", "SealedPayload", "new_session",
           "session_of", "no_session"]

MAGIC = b"MZ"
SESSION_ID_BYTES = 8
KEY_BYTES = 32
TO_AGENT = 0
TO_CLIENT = 1
_ENVELOPE = struct.Struct(">2s8sQBB")
ENVELOPE_BYTES = _ENVELOPE.size
TAG_BYTES = 16
NO_SESSION = b"MZ!"


def new_session() -> tuple[bytes, bytes]:
    """(session id, key): both random."""
    return os.urandom(SESSION_ID_BYTES), AESGCM.generate_key(bit_length=256)


def session_of(frames: list[Any]) -> bytes | None:
    """The session id a message claims (unauthenticated: only for finding its key)."""
    if not frames:
        return None
    env = _bytes(frames[0])
    if len(env) != ENVELOPE_BYTES or env[:2] != MAGIC:
        return None
    return bytes(env[2 : 2 + SESSION_ID_BYTES])


def no_session(session_id: bytes) -> list[bytes]:
    return [NO_SESSION + session_id]


def _nonce(part: int, direction: int, counter: int) -> bytes:
    return struct.pack(">BBHQ", part, direction, 0, counter)


def _bytes(frame: Any) -> bytes | memoryview:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return frame
    return frame.buffer  # zmq.Frame: its buffer, no copy


class Sealer:
    """Seals the messages one side sends in one session, numbering them."""

    __slots__ = ("session_id", "direction", "counter", "_aead")

    def __init__(self, session_id: bytes, key: bytes, direction: int):
        if len(session_id) != SESSION_ID_BYTES or len(key) != KEY_BYTES:
            raise ValueError("a session id is 8 bytes and its key 32")
        self.session_id = session_id
        self.direction = direction
        self.counter = 0
        self._aead = AESGCM(key)

    def seal(self, header: bytes, payload: Any = None) -> list[bytes]:
        self.counter += 1
        n = 2 if payload is None else 3
        env = _ENVELOPE.pack(MAGIC, self.session_id, self.counter, self.direction, n)
        frames = [env, self._aead.encrypt(_nonce(0, self.direction, self.counter), header, env)]
        if payload is not None:
            frames.append(self._aead.encrypt(_nonce(1, self.direction, self.counter), payload,
                                             env + header))
        return frames


class SealedPayload:
    """The payload of a message whose envelope and header have been authenticated, still sealed:
    a client opens it straight into the buffer it reads into (``open_into``), saving a copy. The
    bytes land there before the tag is checked (that is how GCM decrypts), so on ``SealError``
    that buffer holds garbage and the read fails; an agent never uses this (it opens whole
    messages before touching a block)."""

    __slots__ = ("nbytes", "_aead", "_nonce", "_ct", "_aad")

    def __init__(self, aead: AESGCM, nonce: bytes, ct: Any, aad: bytes):
        self._aead, self._nonce, self._ct, self._aad = aead, nonce, ct, aad
        self.nbytes = len(ct) - TAG_BYTES

    def open_into(self, dest: Any) -> None:
        try:
            self._aead.decrypt_into(self._nonce, self._ct, self._aad, dest)
        except (InvalidTag, ValueError):
            raise SealError("a sealed payload failed authentication") from None


class Opener:
    """Opens the messages one side receives in one session; refuses anything else."""

    __slots__ = ("session_id", "direction", "last", "_aead")

    def __init__(self, session_id: bytes, key: bytes, direction: int):
        if len(session_id) != SESSION_ID_BYTES or len(key) != KEY_BYTES:
            raise ValueError("a session id is 8 bytes and its key 32")
        self.session_id = session_id
        self.direction = direction  # the direction of the messages this side receives
        self.last = 0
        self._aead = AESGCM(key)

    def open(self, frames: list[Any], lazy_payload: bool = False) -> tuple[bytes, Any]:
        """(header, payload or None), authenticated; ``SealError`` otherwise, ``SessionLost``
        for the agent's unsealed "no such session". With ``lazy_payload`` the payload comes back
        as a ``SealedPayload`` to open later (the header and envelope are authenticated now)."""
        if len(frames) == 1:
            only = bytes(_bytes(frames[0])[: len(NO_SESSION) + SESSION_ID_BYTES + 1])
            if only == NO_SESSION + self.session_id:
                raise SessionLost("the agent no longer knows this session")
        if len(frames) not in (2, 3):
            raise SealError(f"a sealed message has 2 or 3 frames, not {len(frames)}")
        env = bytes(_bytes(frames[0]))
        if len(env) != ENVELOPE_BYTES:
            raise SealError("bad envelope")
        magic, session_id, counter, direction, n = _ENVELOPE.unpack(env)
        if magic != MAGIC or session_id != self.session_id:
            raise SealError("not a message of this session")
        if direction != self.direction or n != len(frames):
            raise SealError("wrong direction or frame count")
        if counter <= self.last:
            raise SealError(f"replayed or reordered message ({counter} after {self.last})")
        try:
            header = self._aead.decrypt(_nonce(0, direction, counter), _bytes(frames[1]), env)
            payload = None
            if n == 3:
                ct = _bytes(frames[2])
                if lazy_payload and len(ct) >= TAG_BYTES:
                    payload = SealedPayload(self._aead, _nonce(1, direction, counter), ct,
                                            env + header)
                else:
                    payload = self._aead.decrypt(_nonce(1, direction, counter), ct, env + header)
        except InvalidTag:
            raise SealError("a sealed frame failed authentication") from None
        self.last = counter
        return header, payload
