"""The mesh as a cache: what a put may ask for beyond storing bytes (``PutOptions``: a time to
live, eviction, compression), compressing and decompressing objects, and ``expire``.

- ``ttl``: seconds (or a ``timedelta``) after which the agent holding the object frees it,
  without any client (the object's own block gets the ttl: ``agents/store.py``, "Leases").
  ``expire(key, ttl)`` sets it again from now, or removes it (``None``).
- ``evictable``: the agent may evict the key when it needs room for a new allocation, by the
  cluster's ``mesh.eviction_policy`` (``agents/eviction.py``). Other keys and raw blocks never are.
- ``compression``: ``"lz4"`` or ``"zstd"`` (the ``compress`` extra); the stored bytes are one
  frame of that format, the record's ``meta`` says ``compression`` and ``raw_length``, and every
  ``get_*`` decompresses transparently. The checksum is of the stored bytes.

All three need the object in a block of its own: not with ``block_id=`` (a range of someone
else's block), and ``ttl``/``evictable`` not for an empty object (which has no block). Raw
blocks read at offsets are never compressed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from mesh import protocol as P
from mesh.client.batch import Op
from mesh.errors import InvalidRequest

COMPRESSIONS = ("lz4", "zstd")
STREAM_PIECE = 4 << 20  # a file is read and compressed this much at a time


@dataclass(frozen=True)
class PutOptions:
    ttl_s: float | None = None
    evictable: bool = False
    compression: str | None = None

    def check(self, block_id: str | None, length: int) -> None:
        if block_id is not None and (self.ttl_s is not None or self.evictable or self.compression):
            raise InvalidRequest("ttl, evictable and compression are for objects stored in a "
                                 "block of their own, not into another block (block_id=)")
        if length == 0 and (self.ttl_s is not None or self.evictable):
            raise InvalidRequest("an empty object has no block to expire or evict; store at "
                                 "least one byte")

    def record(self) -> dict:
        """What the key record carries (``agents/keyrecords.py``)."""
        return {"evictable": True} if self.evictable else {}


NONE = PutOptions()


def seconds(ttl: Any, what: str = "ttl") -> float | None:
    """``ttl`` (None, seconds, or a ``timedelta``) as positive seconds."""
    if ttl is None:
        return None
    if isinstance(ttl, datetime.timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or \
            not 0 < ttl < float("inf"):
        raise InvalidRequest(f"{what} must be a positive number of seconds or a timedelta, "
                             f"got {ttl!r}")
    return float(ttl)


def options(ttl: Any = None, evictable: bool = False, compression: str | None = None
            ) -> PutOptions:
    if not isinstance(evictable, bool):
        raise InvalidRequest(f"evictable must be True or False, got {evictable!r}")
    if compression is not None and compression not in COMPRESSIONS:
        raise InvalidRequest(f"compression must be one of {', '.join(COMPRESSIONS)} or None, "
                             f"got {compression!r}")
    if compression is not None:
        _codec(compression)  # installed?
    return PutOptions(seconds(ttl), evictable, compression)


# --- compression ----------------------------------------------------------------------------------


def _codec(name: str) -> Any:
    try:
        if name == "lz4":
            import lz4.frame as codec
        else:
            import zstandard as codec
    except ImportError:
        raise InvalidRequest(f"compression={name!r} needs the {'lz4' if name == 'lz4' else 'zstandard'}"
                             " package: pip install 'memory-mesh[compress]'") from None
    return codec


def _compressor(name: str) -> Any:
    codec = _codec(name)
    if name == "lz4":
        return codec.LZ4FrameCompressor()
    return codec.ZstdCompressor(level=3).compressobj()


def _decompressor(name: str) -> Any:
    codec = _codec(name)
    if name == "lz4":
        return codec.LZ4FrameDecompressor()
    return codec.ZstdDecompressor().decompressobj()


def pack(views: list[memoryview], opts: PutOptions, meta: dict) -> list[memoryview]:
    """``views`` as stored: one compressed frame (``meta`` then says so), or as they are."""
    if opts.compression is None:
        return views
    c = _compressor(opts.compression)
    head = c.begin() if opts.compression == "lz4" else b""
    parts = [head, *(c.compress(v) for v in views if v.nbytes), c.flush()]
    meta["compression"] = opts.compression
    meta["raw_length"] = sum(v.nbytes for v in views)
    return [memoryview(b"".join(parts))]


def pack_stream(src: BinaryIO, length: int, opts: PutOptions, meta: dict
                ) -> tuple[BinaryIO, int]:
    """A file's bytes as stored: compressed piece by piece in memory (only the compressed
    bytes are held), or the file itself."""
    if opts.compression is None:
        return src, length
    import io

    c = _compressor(opts.compression)
    out = io.BytesIO()
    if opts.compression == "lz4":
        out.write(c.begin())
    left = length
    while left > 0:
        piece = src.read(min(STREAM_PIECE, left))
        if not piece:
            raise InvalidRequest(f"the file ended {left} bytes short of its {length} bytes")
        out.write(c.compress(piece))
        left -= len(piece)
    out.write(c.flush())
    meta["compression"] = opts.compression
    meta["raw_length"] = length
    stored = out.tell()
    out.seek(0)
    return out, stored


def compression_of(meta: dict) -> str | None:
    name = meta.get("compression")
    if name is None:
        return None
    if name not in COMPRESSIONS:
        raise InvalidRequest(f"the object is compressed with {name!r}, which this client "
                             "cannot read")
    return name


def unpack_into(stored: bytearray, meta: dict, outs: list[memoryview]) -> None:
    """A compressed object's stored frame decompressed into ``outs``, back to back, a piece at
    a time (no whole decompressed copy besides ``outs``); checked against ``raw_length``."""
    outs = [out.cast("B") for out in outs]
    at = [0, 0]  # (which out, where in it)

    def fill(data: bytes) -> None:
        data, done = memoryview(data), 0
        while done < data.nbytes:
            if at[0] >= len(outs):
                raise InvalidRequest("the object decompressed to more bytes than its record says")
            out = outs[at[0]]
            n = min(out.nbytes - at[1], data.nbytes - done)
            out[at[1] : at[1] + n] = data[done : done + n]
            done += n
            at[1] += n
            if at[1] == out.nbytes:
                at[0], at[1] = at[0] + 1, 0

    sink = Unpacking(meta, fill)
    view = memoryview(stored)
    for start in range(0, view.nbytes, UNPACK_PIECE):
        sink(view[start : start + UNPACK_PIECE])
    sink.done()


UNPACK_PIECE = 1 << 20  # a stored frame is decompressed this much at a time


class Unpacking:
    """A sink that decompresses a stored frame on its way to ``write`` (``get_file``)."""

    def __init__(self, meta: dict, write: Callable[[Any], Any]):
        self._d = _decompressor(compression_of(meta))
        self._write, self.raw, self._want = write, 0, meta.get("raw_length")

    def __call__(self, view: memoryview) -> None:
        out = self._d.decompress(view)
        if out:
            self.raw += len(out)
            self._write(out)

    def done(self) -> None:
        if self.raw != self._want:
            raise InvalidRequest(f"the object decompressed to {self.raw} bytes, its record says "
                                 f"{self._want}")


# --- expire -----------------------------------------------------------------------------------


def expire(core: Any, key: str, ttl: Any) -> Op:
    """Give ``key`` a time to live from now (``None``: none); its record."""
    from mesh.client.keylookup import ObjectInfo, lookup

    ttl_s = seconds(ttl)
    address, _ = yield from lookup(core, key)
    fields: dict[str, Any] = {"key": key}
    if ttl_s is not None:
        fields["ttl_s"] = ttl_s
    return ObjectInfo.from_record((yield from core.call(address, P.KEXPIRE, fields)))
