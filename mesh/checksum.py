"""Checksums of stored and moved bytes: the one place that makes them and checks them.

A checksum is text, ``"<algorithm>:<hex digits>"``, so whoever checks it knows how it was made:

- ``xxh3:<16 hex>``: XXH3, 64 bits (the ``xxhash`` package). Every new checksum is one: it runs at
  memory speed (about 5x zlib's CRC-32 here, ``tools/bench.py checksum``).
- ``crc32:<8 hex>``: zlib's CRC-32, what key records and moves carried before. Records written
  then keep verifying, and an agent of that version moving a block to this one is understood.

Any other prefix is refused with an ``IntegrityError`` that names it (a record from a newer
version, or a damaged one), never taken as a mismatch or a crash.

``new()`` is a running hasher (``update(view)`` over buffers, no copies: both libraries hash the
caller's buffer in place and release the GIL on large ones), ``text()`` its checksum so far.
``hasher_for(stored)`` is a running hasher of the algorithm a stored checksum names; ``verify``
checks buffers against a stored checksum; ``agree`` compares two checksums of the same bytes
made by possibly different algorithms (a move between agents of two versions).

Pure: no I/O. Users: key records (``mesh/client/objects.py``), streams
(``mesh/client/transfer.py``), moves between agents (``agents/moves.py``).
"""

from __future__ import annotations

import zlib
from typing import Iterable, Protocol

import xxhash

from mesh.errors import IntegrityError

DEFAULT = "xxh3"  # the algorithm of every checksum made now
LEGACY = "crc32"  # what records and agents made before


class Hasher(Protocol):
    algorithm: str

    def update(self, data) -> None: ...

    def text(self) -> str: ...


class _Xxh3:
    algorithm = "xxh3"
    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = xxhash.xxh3_64()

    def update(self, data) -> None:
        self._h.update(data)

    def text(self) -> str:
        return f"xxh3:{self._h.intdigest():016x}"


class _Crc32:
    algorithm = "crc32"
    __slots__ = ("_crc",)

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def text(self) -> str:
        return f"crc32:{self._crc:08x}"


_ALGORITHMS = {"xxh3": _Xxh3, "crc32": _Crc32}
ALGORITHMS = frozenset(_ALGORITHMS)


def new(algorithm: str = DEFAULT) -> Hasher:
    """A running hasher of ``algorithm`` (``IntegrityError`` for one this version lacks)."""
    try:
        return _ALGORITHMS[algorithm]()
    except (KeyError, TypeError):
        raise IntegrityError(
            f"unknown checksum algorithm {algorithm!r} (this version knows "
            f"{', '.join(sorted(_ALGORITHMS))})"
        ) from None


def algorithm_of(stored: str) -> str:
    """The algorithm a stored checksum names (its prefix), checked."""
    name = stored.partition(":")[0] if isinstance(stored, str) and ":" in stored else None
    if name not in _ALGORITHMS:
        raise IntegrityError(
            f"stored checksum {stored!r} names no algorithm this version knows "
            f"({', '.join(sorted(_ALGORITHMS))})"
        )
    return name


def hasher_for(stored: str) -> Hasher:
    """A running hasher of the algorithm ``stored`` was made with."""
    return new(algorithm_of(stored))


def of(views: Iterable, algorithm: str = DEFAULT) -> str:
    """The checksum of ``views`` back to back."""
    h = new(algorithm)
    for v in views:
        h.update(v)
    return h.text()


def check(stored: str, actual: str, what: str = "the bytes") -> None:
    """``IntegrityError`` unless ``actual`` (made by ``hasher_for(stored)``) is ``stored``."""
    if actual != stored:
        raise IntegrityError(f"{what} read back with checksum {actual}, stored {stored}")


def verify(stored: str, views: Iterable, what: str = "the bytes") -> None:
    """``IntegrityError`` unless ``views`` back to back have the checksum ``stored``, made with
    the algorithm it names."""
    h = hasher_for(stored)
    for v in views:
        h.update(v)
    check(stored, h.text(), what)


def agree(ours: str, theirs: str, views: Iterable) -> bool:
    """Whether ``theirs`` is a checksum of the same bytes as ``ours``, our checksum of ``views``.
    Made by another algorithm (an agent of the previous version), ``views`` are checksummed
    again with it; ``IntegrityError`` when ``theirs`` names none this version knows."""
    if algorithm_of(theirs) == algorithm_of(ours):
        return theirs == ours
    return of(views, algorithm_of(theirs)) == theirs
