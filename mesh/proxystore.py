"""A ProxyStore connector that keeps objects in the mesh: ``MeshConnector``.

Needs the ``proxystore`` package (the ``proxystore`` extra: ``pip install
'memory-mesh[proxystore]'``); importing this module without it raises ``MissingExtra``.

    from proxystore.store import Store
    from mesh.proxystore import MeshConnector

    store = Store("mesh", MeshConnector("cluster.yaml"))
    proxy = store.proxy(big_object)   # pickle it, send it anywhere; it resolves from the mesh

Each object is a mesh key ``prefix + <uuid4 hex>`` stored with ``put_bytes`` (ProxyStore has
serialized it already). The connector keeps no state but its settings, and makes its
``MeshClient`` on first use, so it pickles and travels: ``config()`` is the keyword arguments
of ``MeshConnector(...)`` (ProxyStore's ``Store.from_config`` calls the class with them), with
the cluster file and the client key as absolute paths, resolved when the connector is made
(``$GRID_CONFIG`` and ``$GRID_KEY`` included), so a process started elsewhere (a Parsl or
Globus Compute worker) reaches the same mesh with the same key. A cluster file must be on a
path the remote process can read; an in-memory ``ClusterConfig`` cannot travel (``address=``
can: one agent's address, from which the client learns the rest).

``ttl`` and ``evictable`` go to ``put_bytes`` when set (see ``mesh/cache.py``, ``put_options``);
``get`` of an expired or evicted key returns None, as ProxyStore expects of a missing object.

Not here: the dict-like cache and memoising (``mesh/cache.py``); the client
(``mesh/client/drivers.py``). Guide: ``docs/cache.md``.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mesh.cache import put_options
from mesh.errors import KeyNotFound, require

require("proxystore", "proxystore", "mesh.proxystore.MeshConnector")

__all__ = ["MeshConnector", "MeshKey"]

DEFAULT_PREFIX = "proxystore/"


class MeshKey(NamedTuple):
    """The key of an object a ``MeshConnector`` stored: the mesh key's name."""

    mesh_key: str


def _absolute(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _config_path(config: Any) -> str | None:
    """The cluster file a remote process should load: ``config`` as an absolute path, else the
    file the usual resolution finds now (None for the embedded local default, which every
    process finds by itself)."""
    from mesh.config import EMBEDDED_SOURCE, ClusterConfig, resolve_config

    if config is None:
        config = resolve_config()
    if not isinstance(config, ClusterConfig):
        return _absolute(config)
    if config.source == EMBEDDED_SOURCE:
        return None
    if not Path(config.source).is_file():
        raise ValueError(f"MeshConnector needs a cluster file a remote process can load; "
                         f"this config came from {config.source!r}")
    return str(Path(config.source).resolve())


class MeshConnector:
    """ProxyStore connector over a mesh.

    ``config``: the cluster file (a path; None: ``$GRID_CONFIG``, then the usual resolution).
    ``key``: the client key file (None: ``$GRID_KEY``, then the cluster's default key).
    ``address``: one agent's ``tcp://host:port`` instead of a cluster file.
    ``prefix``: the mesh keys' prefix. ``timeout_s``: the client's request timeout.
    ``ttl`` (seconds), ``evictable``: passed to every put when set. ``clear``: ``close()``
    deletes every key under ``prefix`` (what any process stored there, not only this one)."""

    def __init__(self, config: str | os.PathLike | Any | None = None, *,
                 key: str | os.PathLike | None = None, address: str | None = None,
                 prefix: str = DEFAULT_PREFIX, timeout_s: float | None = None,
                 ttl: float | None = None, evictable: bool = False, clear: bool = False):
        self.address = address
        self.config_path = None if address is not None and config is None else _config_path(config)
        self.key_path = _absolute(key or os.environ.get("GRID_KEY", "").strip() or None)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.ttl = ttl
        self.evictable = evictable
        self.clear = clear
        self._put_opts = put_options(ttl, evictable)
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = self.address or self.config_path or "<embedded local mesh>"
        return f"MeshConnector({where!r}, prefix={self.prefix!r})"

    def __enter__(self) -> MeshConnector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- pickling and configs -----------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """What ``MeshConnector(**config)`` needs to reach the same mesh with the same key."""
        return {"config": self.config_path, "key": self.key_path, "address": self.address,
                "prefix": self.prefix, "timeout_s": self.timeout_s, "ttl": self.ttl,
                "evictable": self.evictable, "clear": self.clear}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MeshConnector:
        return cls(**config)

    def __getstate__(self) -> dict[str, Any]:
        return self.config()  # never the client: sockets do not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def client(self) -> Any:
        """The ``MeshClient``, made on first use."""
        with self._lock:
            if self._client is None:
                from mesh.client import MeshClient

                self._client = MeshClient(self.config_path, address=self.address,
                                          timeout_s=self.timeout_s, key=self.key_path)
            return self._client

    def close(self, clear: bool | None = None) -> None:
        """Close the client (idempotent); with ``clear`` (default: the constructor's), first
        delete every key under the prefix."""
        if self.clear if clear is None else clear:
            client = self.client
            for info in client.keys():
                if info.key.startswith(self.prefix):
                    try:
                        client.delete(info.key)
                    except KeyNotFound:
                        pass
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- the Connector protocol ---------------------------------------------------------------

    def new_key(self, obj: Any = None) -> MeshKey:
        """A fresh key for ``set`` (``DeferrableConnector``)."""
        return MeshKey(self.prefix + uuid.uuid4().hex)

    def put(self, obj: Any) -> MeshKey:
        key = self.new_key()
        self.client.put_bytes(key.mesh_key, obj, **self._put_opts)
        return key

    def set(self, key: MeshKey, obj: Any) -> None:
        self.client.put_bytes(key.mesh_key, obj, replace=True, **self._put_opts)

    def put_batch(self, objs: Sequence[Any]) -> list[MeshKey]:
        keys = [self.new_key() for _ in objs]
        self.client.put_many([(k.mesh_key, o) for k, o in zip(keys, objs)], **self._put_opts)
        return keys

    def get(self, key: MeshKey) -> bytearray | None:
        try:
            return self.client.get_bytes(key.mesh_key)
        except KeyNotFound:
            return None

    def get_batch(self, keys: Sequence[MeshKey]) -> list[bytearray | None]:
        out = self.client.get_many([k.mesh_key for k in keys], return_exceptions=True)
        for value in out:
            if isinstance(value, BaseException) and not isinstance(value, KeyNotFound):
                raise value
        return [None if isinstance(v, KeyNotFound) else v for v in out]

    def exists(self, key: MeshKey) -> bool:
        try:
            self.client.object_info(key.mesh_key)
        except KeyNotFound:
            return False
        return True

    def evict(self, key: MeshKey) -> None:
        try:
            self.client.delete(key.mesh_key)
        except KeyNotFound:  # ProxyStore evicts what may be gone already
            pass
