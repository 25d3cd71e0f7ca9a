"""A two-tier cache over the mesh (``TieredCache``) and a decorator that memoises a function's
results in the mesh (``memoize``).

``TieredCache(client, local_bytes=..., prefix=...)`` is a ``MutableMapping`` of ``str`` keys.
Each entry is a named key of the mesh, ``prefix + key``; the hot ones are also kept in this
process's RAM, least recently used first out, up to ``local_bytes`` of stored sizes
(``ObjectInfo.length``: the bytes, an array's ``nbytes``, a pickle's size). Reads try the local
tier, then the mesh; every read counts as one of ``local_hits``, ``mesh_hits`` or ``misses``.

Write policy: **write-through**. ``cache[k] = v`` stores ``v`` in the mesh first
(``replace=True``) and only then keeps it locally, so the local tier is a cache of the mesh and
never holds what the mesh was not given; a failed put leaves no local entry. ``del`` removes
both tiers; ``len``, ``iter`` and ``clear`` go by the mesh's keys under the prefix
(``client.keys()``), so they see what other processes stored there. The local tier is not
revalidated: another process replacing a key is seen here once the entry leaves the local tier
(LRU, ``ttl``) or ``cache.drop_local()``.

Values take the cheapest faithful form (as ``distributed_grid.utils.memory_helpers`` does): an
exact ``numpy.ndarray`` of plain values with ``put_array`` (read back as an ndarray, same dtype,
shape, order), ``bytes``/``bytearray``/``memoryview`` with ``put_bytes`` (read back as
``bytes``, from either tier), anything else with ``put_object`` (pickle 5; read back as the
object). numpy is never imported here: a value can only be an array if numpy is loaded.

``ttl`` (seconds or a ``timedelta``) and ``evictable`` are passed to the ``put_*`` methods only
when set, so the cache runs on clients with or without them; a local entry also expires after
``ttl``. An empty value (no block to expire or evict) is pickled instead when they are set, and
reads back as the same type. A mesh read that raises ``KeyNotFound`` (never stored, deleted,
expired, or evicted by its agent) is a miss.

``memoize(client, ...)`` (or ``@cache.memoize`` on a ``TieredCache``) stores a function's result
under ``<module>.<qualname>/<hash of the arguments>``: the arguments, bound to the function's
signature with defaults applied, pickled with protocol 5 and hashed with BLAKE2b (large buffers
hashed in place, not copied). The key is the same in every process for arguments that pickle
the same, so another process gets the stored result without running the function.

Not here: the client calls themselves (``mesh/client/drivers.py``), the ProxyStore connector
(``mesh/proxystore.py``). The guide with examples is ``docs/cache.md``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Callable

from mesh.client.cacheopts import seconds
from mesh.errors import KeyNotFound, NodeUnavailable

__all__ = ["TieredCache", "memoize", "put_options", "memo_key"]

DEFAULT_LOCAL_BYTES = 64 * 1024 * 1024
NDARRAY, PICKLE = "ndarray", "pickle"  # ObjectInfo.content_type of put_array / put_object


def put_options(ttl: float | None = None, evictable: bool = False) -> dict[str, Any]:
    """The keyword arguments for ``put_*``: only those that are set (a ``RecordingClient`` in the
    tests, or any client-like object, need not take the others)."""
    opts: dict[str, Any] = {}
    ttl = seconds(ttl)  # (InvalidRequest, a ValueError, for a bad one)
    if ttl is not None:
        opts["ttl"] = ttl
    if evictable:
        opts["evictable"] = True
    return opts


def is_plain_ndarray(value: Any) -> bool:
    """An exact ``numpy.ndarray`` whose memory is plain values: sent raw by ``put_array``.
    Subclasses (masked arrays, matrices), object arrays and structured dtypes are pickled
    instead, so nothing they carry besides dtype, shape and order is lost."""
    numpy = sys.modules.get("numpy")  # never imported here: no numpy loaded, no array
    return (numpy is not None and type(value) is numpy.ndarray
            and not value.dtype.hasobject and value.dtype.fields is None)


@dataclass
class _Entry:
    value: Any
    size: int
    expires: float | None  # time.monotonic() after which the entry is not served


class TieredCache(MutableMapping):
    """A dict-like cache: hot entries in local RAM (LRU, ``local_bytes``), all in the mesh.

    ``client``: a ``MeshClient`` (the caller keeps and closes it). ``prefix``: the mesh keys'
    prefix (default ``cache/<random>/``: a cache of its own). ``local_bytes=0`` turns the local
    tier off. ``ttl`` (seconds) and ``evictable`` go to every put when set (see the module
    doc). ``allow_pickle`` is passed to ``get_object``."""

    def __init__(self, client: Any, *, local_bytes: int = DEFAULT_LOCAL_BYTES,
                 prefix: str | None = None, ttl: float | None = None, evictable: bool = False,
                 allow_pickle: bool = True):
        if local_bytes < 0:
            raise ValueError(f"local_bytes must be >= 0, not {local_bytes!r}")
        self.client = client
        self.local_bytes = int(local_bytes)
        self.prefix = f"cache/{uuid.uuid4().hex[:12]}/" if prefix is None else str(prefix)
        self._put_opts = put_options(ttl, evictable)
        self.ttl: float | None = self._put_opts.get("ttl")
        self.evictable = evictable
        self.allow_pickle = allow_pickle
        self._local: OrderedDict[str, _Entry] = OrderedDict()
        self._local_used = 0
        self._lock = threading.Lock()
        self.local_hits = 0
        self.mesh_hits = 0
        self.misses = 0
        self.local_evictions = 0

    def __repr__(self) -> str:
        return (f"TieredCache(prefix={self.prefix!r}, local_bytes={self.local_bytes}, "
                f"local_entries={len(self._local)})")

    # --- keys ---------------------------------------------------------------------------------

    def mesh_key(self, key: str) -> str:
        """The mesh key that holds ``key``'s value."""
        if not isinstance(key, str):
            raise TypeError(f"TieredCache keys are str, not {type(key).__name__}")
        return self.prefix + key

    def _mesh_keys(self) -> list[str]:
        listing = self.client.keys()
        if listing.failed_nodes:  # a partial listing would silently drop entries
            why = ", ".join(f"{n}: {w}" for n, w in sorted(listing.failed_nodes.items()))
            raise NodeUnavailable(f"cannot list the cache's keys: nodes did not answer ({why})")
        n = len(self.prefix)
        return [info.key[n:] for info in listing if info.key.startswith(self.prefix)]

    # --- the local tier -----------------------------------------------------------------------

    def _local_get(self, key: str, use: bool = True) -> _Entry | None:
        """The live local entry of ``key``; ``use``: it becomes the most recently used."""
        with self._lock:
            entry = self._local.get(key)
            if entry is None:
                return None
            if entry.expires is not None and time.monotonic() >= entry.expires:
                self._local_pop(key)
                return None
            if use:
                self._local.move_to_end(key)
            return entry

    def _local_pop(self, key: str) -> _Entry | None:  # with the lock held
        entry = self._local.pop(key, None)
        if entry is not None:
            self._local_used -= entry.size
        return entry

    def _local_put(self, key: str, value: Any, size: int) -> None:
        with self._lock:
            self._local_pop(key)
            if size > self.local_bytes or not self.local_bytes:  # the mesh only
                return
            expires = None if self.ttl is None else time.monotonic() + self.ttl
            self._local[key] = _Entry(value, size, expires)
            self._local_used += size
            while self._local_used > self.local_bytes:
                _, old = self._local.popitem(last=False)
                self._local_used -= old.size
                self.local_evictions += 1

    def drop_local(self, key: str | None = None) -> None:
        """Forget ``key`` (default: every entry) in the local tier only; the mesh keeps it."""
        with self._lock:
            if key is None:
                self._local.clear()
                self._local_used = 0
            else:
                self._local_pop(key)

    def in_local(self, key: str) -> bool:
        """Whether ``key`` is in the local tier now (no counter, no mesh request, and not a
        use: the LRU order stays)."""
        return self._local_get(key, use=False) is not None

    # --- the mesh tier ------------------------------------------------------------------------

    def _store(self, key: str, value: Any) -> tuple[Any, int]:
        """Put ``value`` under ``key``'s mesh key: (what reads return, its stored size)."""
        name = self.mesh_key(key)
        if is_plain_ndarray(value):
            put, empty = self.client.put_array, value.nbytes == 0
        elif isinstance(value, (bytes, bytearray, memoryview)):
            value = value if type(value) is bytes else bytes(value)  # a snapshot, as read back
            put, empty = self.client.put_bytes, not value
        else:
            put, empty = self.client.put_object, False
        if empty and self._put_opts:  # no block to expire or evict: pickled (never empty),
            put = self.client.put_object  # it reads back as the same bytes or array
        info = put(name, value, replace=True, **self._put_opts)
        return value, info.length

    def _fetch(self, key: str) -> tuple[Any, int]:
        """The value under ``key``'s mesh key, by its content type, and its stored size.
        ``KeyNotFound`` when the mesh does not have it."""
        name = self.mesh_key(key)
        info = self.client.object_info(name)
        if info.content_type == NDARRAY:
            return self.client.get_array(name), info.length
        if info.content_type == PICKLE:
            return self.client.get_object(name, allow_pickle=self.allow_pickle), info.length
        return bytes(self.client.get_bytes(name)), info.length  # bytes, files

    # --- the mapping --------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self.mesh_key(key)  # a key that is not a str is a TypeError, as in every method
        entry = self._local_get(key)
        if entry is not None:
            with self._lock:
                self.local_hits += 1
            return entry.value
        try:
            value, size = self._fetch(key)
        except KeyNotFound:
            with self._lock:
                self.misses += 1
            raise KeyError(key) from None
        with self._lock:
            self.mesh_hits += 1
        self._local_put(key, value, size)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.mesh_key(key)  # a bad key fails before anything changes
        with self._lock:
            self._local_pop(key)  # a failed put must not leave the old value served locally
        value, size = self._store(key, value)
        self._local_put(key, value, size)

    def __delitem__(self, key: str) -> None:
        name = self.mesh_key(key)
        with self._lock:
            had = self._local_pop(key) is not None
        try:
            self.client.delete(name)
        except KeyNotFound:
            if not had:  # in neither tier; an entry the mesh evicted is still deleted
                raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if self._local_get(key, use=False) is not None:
            return True
        try:
            self.client.object_info(self.mesh_key(key))
        except KeyNotFound:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._mesh_keys())

    def __len__(self) -> int:
        return len(self._mesh_keys())

    def clear(self) -> None:
        """Delete every key under the prefix in the mesh, and the whole local tier."""
        self.drop_local()
        for key in self._mesh_keys():
            try:
                self.client.delete(self.prefix + key)
            except KeyNotFound:  # gone meanwhile (expired, evicted, another process)
                pass

    # --- counters -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since creation (or ``reset_stats``) and the local tier's state."""
        with self._lock:
            return {"local_hits": self.local_hits, "mesh_hits": self.mesh_hits,
                    "misses": self.misses, "local_evictions": self.local_evictions,
                    "local_entries": len(self._local), "local_bytes_used": self._local_used,
                    "local_bytes": self.local_bytes}

    def reset_stats(self) -> None:
        with self._lock:
            self.local_hits = self.mesh_hits = self.misses = self.local_evictions = 0

    # --- memoising ----------------------------------------------------------------------------

    def memoize(self, fn: Callable | None = None, *, name: str | None = None) -> Any:
        """Memoise ``fn`` in this cache: ``@cache.memoize`` or ``@cache.memoize(name="...")``.
        ``name`` replaces ``<module>.<qualname>`` in the keys (for a function that is
        ``__main__.f`` in one process and ``mymod.f`` in another)."""
        if fn is None:
            return functools.partial(self.memoize, name=name)
        return _memoized(self, fn, name)


def memoize(client: Any, *, prefix: str = "memo/", ttl: float | None = None,
            evictable: bool = False, local_bytes: int = DEFAULT_LOCAL_BYTES,
            name: str | None = None, allow_pickle: bool = True) -> Callable[[Callable], Callable]:
    """A decorator memoising a function's results in the mesh under ``prefix`` (a
    ``TieredCache`` of its own: ``wrapper.cache``). Arguments must be picklable; see
    ``memo_key`` for what makes two calls share a result."""
    cache = TieredCache(client, local_bytes=local_bytes, prefix=prefix, ttl=ttl,
                        evictable=evictable, allow_pickle=allow_pickle)
    return cache.memoize(name=name)


def memo_key(fn: Callable, args: tuple, kwargs: dict, name: str | None = None) -> str:
    """The cache key of ``fn(*args, **kwargs)``: ``<module>.<qualname>/<40 hex>``.

    The arguments are bound to ``fn``'s signature with its defaults applied (so ``f(1)``,
    ``f(1, 2)`` and ``f(x=1)`` share a key when 2 is ``y``'s default), pickled with protocol 5,
    and the pickle and its out-of-band buffers hashed with BLAKE2b. Stable across processes and
    machines for arguments whose pickle is: not for sets of str (their order follows the
    process's hash seed) or objects that pickle an id or a time; such calls only miss."""
    qualified = name or f"{fn.__module__}.{fn.__qualname__}"
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
        items = []
        for pname, value in bound.arguments.items():
            kind = bound.signature.parameters[pname].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                value = sorted(value.items())
            items.append((pname, value))
        payload: Any = items
    except (TypeError, ValueError):  # no signature (a builtin): the call as made
        payload = (args, sorted(kwargs.items()))
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
    h = hashlib.blake2b(digest_size=20)
    h.update(data)
    for buf in buffers:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: hash a copy
            raw = memoryview(buf).tobytes()
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return f"{qualified}/{h.hexdigest()}"


def _memoized(cache: TieredCache, fn: Callable, name: str | None) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = memo_key(fn, args, kwargs, name)
        try:
            return cache[key]
        except KeyError:
            pass
        result = fn(*args, **kwargs)
        cache[key] = result
        return result

    wrapper.cache = cache  # type: ignore[attr-defined]
    wrapper.key_for = lambda *a, **kw: memo_key(fn, a, kw, name)  # type: ignore[attr-defined]
    return wrapper
