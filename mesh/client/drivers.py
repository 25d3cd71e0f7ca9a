"""``MeshClient`` (sync) and ``AsyncMeshClient`` (asyncio): the mesh's client API.

Both have the same methods with the same arguments, defined once on ``_ClientBase``; each runs
one operation generator of ``mesh/client/core.py`` or ``mesh/client/objects.py`` through
``_run``, which is a plain method in ``MeshClient`` and a coroutine in ``AsyncMeshClient`` (so
there the methods return awaitables). The two classes differ only in how they wait for sockets
(``_wait``). One client runs operations of many threads (sync) or tasks (async) at once: each
borrows a core of the client's pool (``mesh/client/pool.py``: up to ``mesh.client_connections``
cores, each with its own connection per agent, replies matched by request id) and waits only
when all are busy. A large ``write``/``read``/``read_into`` of one block borrows the idle cores
too and sends its parts over their connections side by side (``mesh/client/parallel.py``).

Build a client from a cluster config (a path, a loaded ``ClusterConfig``, or nothing for the
default resolution: ``$GRID_CONFIG``, ``config/my-cluster-enhanced.yaml``, the embedded local
default) or from the address of any one agent (``"tcp://127.0.0.1:7700"``): it learns the rest
of the mesh from that agent. On a cluster with keys a client authenticates with ``key`` (the
path of a key file from ``grid keys add``), else ``$GRID_KEY``, else the cluster's admin key
when it runs on the master (``mesh/security/keys.py``).

Sizes and offsets are bytes; times are seconds. Failures raise ``mesh.errors.MeshError``
subclasses, never return ``None``.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any, Callable

import zmq

import mesh.client.cacheopts as cacheopts
import mesh.client.many as many
import mesh.client.objects as objects
import mesh.client.parallel as parallel
import mesh.client.tables as tables
from mesh.client.batch import Op, Wait, byte_view
from mesh.client.core import BlockInfo, Core, Listing, NodeInfo
from mesh.client.parallel import IO_THREADS, parts_for
from mesh.client.pool import CorePool
from mesh.client.objects import ObjectInfo
from mesh.config import ClusterConfig, MeshSettings, resolve_config
from mesh.errors import MeshError
from mesh.spin import CAN_SPIN, CLIENT_SPIN_S, spin_poll

__all__ = ["MeshClient", "AsyncMeshClient", "NodeInfo", "BlockInfo", "ObjectInfo"]


def _normalise_address(address: str) -> str:
    return address if address.startswith("tcp://") else f"tcp://{address}"


def _build_core(
    source: str | os.PathLike | ClusterConfig | None,
    address: str | None,
    overrides: dict[str, Any],
    ctx: zmq.Context,
    key: str | os.PathLike | None = None,
) -> Core:
    if isinstance(source, str) and source.startswith("tcp://") and address is None:
        source, address = None, source
    config: ClusterConfig | None = None
    if address is not None:
        settings = MeshSettings() if source is None else _config(source).mesh
        if source is not None:
            config = _config(source)
        seeds = {_normalise_address(address): None}
    else:
        config = _config(source)
        settings = config.mesh
        seeds = {n.data_address: n.name for n in config.nodes}
    client_key = _client_key(key, config)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        from dataclasses import replace

        settings = replace(settings, **changes)
    return Core(settings, seeds, config, ctx, client_key)


def _client_key(key: str | os.PathLike | None, config: ClusterConfig | None) -> Any:
    """The key this client authenticates with: ``key``, else ``$GRID_KEY``, else the cluster's
    default key on the master (``mesh/security/keys.py``); None for a cluster without keys."""
    from mesh.security.keys import ENV_VAR, find_client_key, load_client_key

    if config is not None:
        return find_client_key(key, config)
    explicit = key or os.environ.get(ENV_VAR, "").strip()
    return load_client_key(explicit) if explicit else None


def _config(source: str | os.PathLike | ClusterConfig | None) -> ClusterConfig:
    if isinstance(source, ClusterConfig):
        return source
    return resolve_config(source)


class _ClientBase:
    """What both clients share besides the core: construction and read-only properties."""

    def __init__(
        self,
        config: str | os.PathLike | ClusterConfig | None,
        address: str | None,
        timeout_s: float | None,
        chunk_bytes: int | None,
        window: int | None,
        ctx: zmq.Context,
        key: str | os.PathLike | None = None,
    ):
        self._core = _build_core(
            config, address,
            {"request_timeout_s": timeout_s, "chunk_bytes": chunk_bytes, "window": window},
            ctx, key,
        )
        self._pool = CorePool(self._core, self._core.settings.client_connections)

    def _parts(self, nbytes: Callable[[], int]) -> int:
        """How many cores (connections) a transfer of ``nbytes()`` bytes may use at most."""
        if self._pool.size == 1:
            return 1
        try:
            return parts_for(self._core, nbytes())
        except (KeyError, MeshError, TypeError, ValueError):  # the operation says what is wrong
            return 1

    def _take(self, work: Any, most: int) -> tuple[list[Core], Op] | None:
        """The cores ``work`` runs on and its operation, or None while no core is free. An
        operation generator (made from ``self._core`` by a caller) runs on the first core; a
        callable gets one core, plus up to ``most - 1`` more that are idle or can be made."""
        if not callable(work):
            core = self._pool.take(want=self._core)
            return None if core is None else ([core], work)
        first = self._pool.take()
        if first is None:
            return None
        cores = [first]
        while len(cores) < most:
            more = self._pool.take(extra=True)
            if more is None:
                break
            cores.append(more)
        try:
            return cores, work(*cores)
        except BaseException:
            self._give(cores)
            raise

    def _give(self, cores: list[Core]) -> None:
        for core in cores:
            self._pool.give(core)

    @property
    def settings(self) -> MeshSettings:
        return self._core.settings

    @property
    def config(self) -> ClusterConfig | None:
        return self._core.config

    # --- operations: defined once; ``_run`` is sync in MeshClient and a coroutine in
    # AsyncMeshClient, so each method returns a value or an awaitable of it. -----------------

    def ping(self, address: str | None = None, timeout_s: float | None = None) -> dict:
        """Ask one agent (default: the first known) who it is: ``{node, incarnation}``."""
        return self._run(lambda core: core.ping(address, timeout_s))

    def allocate(self, size: int, node: str | None = None, lazy: bool = False, *,
                 ttl_s: float | None = None, replicas: int | None = None,
                 spread: str | None = None) -> str:
        """Make a block of ``size`` bytes on ``node`` (else the live node with most room). With
        ``ttl_s`` the agent frees it that many seconds after; without, it lives until freed
        (it outlives this process). ``replicas`` (default ``mesh.replicas``): copies on that
        many nodes, each write acknowledged once all have it; on distinct machines unless
        ``spread="node"`` (default ``mesh.replica_spread``). See docs/durability.md."""
        return self._run(lambda core: core.allocate(size, node, lazy, ttl_s=ttl_s, replicas=replicas,
                                             spread=spread))

    def write(self, block_id: str, data: Any, offset: int = 0) -> int:
        """Write any bytes-like ``data`` at ``offset``; returns the bytes written."""
        return self._run(lambda *cores: parallel.write(cores, block_id, data, offset),
                         most=self._parts(lambda: byte_view(data).nbytes))

    def read(self, block_id: str, size: int | None = None, offset: int = 0) -> bytearray:
        """Read ``size`` bytes (default: to the block's end) from ``offset``."""
        return self._run(lambda *cores: parallel.read(cores, block_id, size, offset),
                         most=self._parts(lambda: size if size is not None else
                                          self._core._locations[block_id][1] - offset))

    def read_into(self, block_id: str, buffer: Any, offset: int = 0) -> int:
        """Fill the writable ``buffer`` from the block at ``offset``; returns the bytes read."""
        return self._run(lambda *cores: parallel.read_into(cores, block_id, buffer, offset),
                         most=self._parts(lambda: byte_view(buffer).nbytes))

    # many small operations per message (docs/python-api.md: batches)

    def read_many(self, items: Any, *, return_exceptions: bool = False) -> list[Any]:
        """Read many ranges, ``(block_id, size)`` or ``(block_id, size, offset)`` each, sent
        many per message: a bytearray each, in order. The first item's error is raised once
        all ran, unless ``return_exceptions`` (then it takes the item's place in the list)."""
        return self._run(many.read_many(self._core, items, return_exceptions))

    def write_many(self, items: Any, *, return_exceptions: bool = False) -> list[Any]:
        """Write many ranges, ``(block_id, data)`` or ``(block_id, data, offset)`` each, sent
        many per message: the bytes written each, in order (errors as ``read_many``)."""
        return self._run(many.write_many(self._core, items, return_exceptions))

    def get_many(self, keys: Any, *, return_exceptions: bool = False) -> list[Any]:
        """The bytes of each key (as ``get_bytes``), looked up and read many per message."""
        return self._run(many.get_many(self._core, keys, return_exceptions))

    def put_many(self, items: Any, node: str | None = None, *, replace: bool = False,
                 return_exceptions: bool = False, ttl: Any = None, evictable: bool = False,
                 compression: str | None = None) -> list[Any]:
        """Store many small values (a mapping, or ``(key, data)`` pairs) as ``put_bytes``
        would, each step many per message: an ``ObjectInfo`` each, in order."""
        opts = cacheopts.options(ttl, evictable, compression)
        return self._run(many.put_many(self._core, items, node, replace, return_exceptions,
                                       opts))

    def free(self, block_id: str) -> None:
        """Free a block (and forget the keys that point into it)."""
        return self._run(lambda core: core.free(block_id))

    def stat(self, block_id: str) -> BlockInfo:
        return self._run(lambda core: core.stat(block_id))

    def move(self, block_id: str, node: str, timeout_s: float | None = None, *,
             source: str | None = None) -> dict[str, Any]:
        """Move a block to ``node``, agent to agent, keeping its id (and the keys naming it).
        Returns {from, to, size, checksum, seconds}; ``MoveFailed`` leaves it at the source.
        With replicas, the copy on ``source`` (default: the primary's) moves; the target holds
        a complete copy before the source lets go."""
        return self._run(lambda core: core.move(block_id, node, timeout_s, source=source))

    def blocks(self, *, page: int | None = None) -> Listing:
        """Every block on the live nodes: a list with ``failed_nodes`` ({node: why} for each
        node that did not answer; empty when complete). Asked a page (``page`` records, at most
        1000) at a time of each node."""
        return self._run(lambda core: core.blocks(page))

    def block_records(self, *, page: int | None = None) -> Listing:
        """``blocks()`` as the agents' records (dicts keyed ``block``, ``node``, ``size``,
        ``lazy``, ``created``, ``expires``, ``pending``, with replicas ``nodes``, ``epoch``,
        ``replicas``), one per block, unsorted: for tools that print 100,000s of blocks
        (``grid memory list-blocks``) and need no ``BlockInfo`` for each."""
        return self._run(lambda core: core.block_records(page))

    def nodes(self) -> list[NodeInfo]:
        return self._run(lambda core: core.refresh_nodes(max_age_s=0.0))

    def stats(self) -> dict[str, Any]:
        return self._run(lambda core: core.stats())

    # named objects (docs/objects-api.md)

    def put_bytes(self, key: str | None, data: Any, node: str | None = None, *,
                  block_id: str | None = None, offset: int = 0, replace: bool = False,
                  replicas: int | None = None, stripe: int = 1, ttl: Any = None,
                  evictable: bool = False, compression: str | None = None) -> ObjectInfo:
        """Store ``data`` under ``key``. ``stripe=N``: cut into N stripes on N nodes, written
        and read over all of them at once (docs/python-api.md, "Striping"). ``ttl`` (seconds
        or a timedelta), ``evictable``, ``compression`` ("lz4", "zstd"): docs/objects-api.md,
        "The mesh as a cache"."""
        opts = cacheopts.options(ttl, evictable, compression)
        return self._run(lambda core: objects.put_bytes(
            core, key, data, node, block_id, offset, replace, replicas=replicas, stripe=stripe,
            opts=opts))

    def get_bytes(self, key: str) -> bytearray:
        return self._run(lambda core: objects.get_bytes(core, key))

    def put_file(self, key: str | None, source: Any, node: str | None = None, *,
                 block_id: str | None = None, offset: int = 0, replace: bool = False,
                 progress: Callable[[int], None] | None = None,
                 replicas: int | None = None, ttl: Any = None, evictable: bool = False,
                 compression: str | None = None) -> ObjectInfo:
        """Stream a file (a path or a binary file object) into the mesh under ``key``
        (compressed in memory first with ``compression``)."""
        opts = cacheopts.options(ttl, evictable, compression)
        return self._run(lambda core: objects.put_file(core, key, source, node, block_id, offset,
                                          replace, progress, replicas, opts))

    def get_file(self, key: str, dest: Any, *,
                 progress: Callable[[int], None] | None = None) -> ObjectInfo:
        """Stream the object named ``key`` to ``dest`` (a path or a binary file object)."""
        return self._run(lambda core: objects.get_file(core, key, dest, progress))

    def read_to_file(self, block_id: str, dest: Any, *, offset: int = 0, size: int | None = None,
                     progress: Callable[[int], None] | None = None) -> int:
        """Stream a raw range of a block to ``dest``; returns the bytes written."""
        return self._run(lambda core: objects.read_to_file(core, block_id, dest, offset, size, progress))

    def put_object(self, key: str | None, obj: Any, node: str | None = None, *,
                   replace: bool = False, replicas: int | None = None, ttl: Any = None,
                   evictable: bool = False, compression: str | None = None,
                   serializer: str = "pickle") -> ObjectInfo:
        """Pickle (protocol 5, large buffers out of band) and store ``obj``;
        ``serializer="cloudpickle"`` for lambdas, closures and local classes."""
        opts = cacheopts.options(ttl, evictable, compression)
        return self._run(lambda core: objects.put_object(core, key, obj, node, replace, replicas,
                                                         opts, serializer))

    def get_object(self, key: str, *, allow_pickle: bool = True) -> Any:
        """Unpickle the object under ``key``. Unpickling runs code its writer chose: on a keyed
        cluster only records stored under an authenticated writer key are unpickled
        (``UnsafeObject`` otherwise); ``allow_pickle=False`` refuses every pickle. On a cluster
        without keys, anyone who can reach an agent can write, so use keys or
        ``allow_pickle=False`` where that matters. ``get_bytes``, ``get_array`` and
        ``get_file`` never unpickle."""
        return self._run(lambda core: objects.get_object(core, key, allow_pickle))

    def put_array(self, key: str | None, array: Any, node: str | None = None, *,
                  replace: bool = False, replicas: int | None = None, ttl: Any = None,
                  evictable: bool = False, compression: str | None = None) -> ObjectInfo:
        """Store a numpy array's memory as-is, with its dtype, shape and order."""
        opts = cacheopts.options(ttl, evictable, compression)
        return self._run(lambda core: objects.put_array(core, key, array, node, replace, replicas,
                                                        opts))

    def get_array(self, key: str) -> Any:
        return self._run(lambda core: objects.get_array(core, key))

    def object_info(self, key: str) -> ObjectInfo:
        return self._run(lambda core: objects.object_info(core, key))

    def keys(self, *, page: int | None = None) -> Listing:
        """Every key: a list with ``failed_nodes``, as ``blocks()``."""
        return self._run(lambda core: objects.keys(core, page))

    def put_table(self, key: str | None, table: Any, node: str | None = None, *,
                  replace: bool = False, replicas: int | None = None) -> ObjectInfo:
        """Store a ``pyarrow.Table`` (or ``RecordBatch``) as an Arrow IPC stream (content type
        "arrow"), which any Arrow implementation reads (docs/filesystem.md)."""
        return self._run(lambda core: tables.put_table_op(core, key, table, node, replace,
                                                          replicas))

    def get_table(self, key: str) -> Any:
        """The ``pyarrow.Table`` under ``key``, its columns views of the received bytes."""
        return self._run(lambda core: tables.get_table_op(core, key))

    def expire(self, key: str, ttl: Any) -> ObjectInfo:
        """Give ``key`` a time to live from now (seconds or a timedelta); ``None`` removes it."""
        return self._run(lambda core: cacheopts.expire(core, key, ttl))

    def delete(self, key: str) -> None:
        """Delete a key (and its block, when the block was made for it)."""
        return self._run(lambda core: objects.delete(core, key))

    def _run(self, work: Any, most: int = 1) -> Any:
        """Run ``work``: a function of a borrowed core (``most`` > 1: of up to that many
        cores), or an operation generator of ``self._core``."""
        raise NotImplementedError


class MeshClient(_ClientBase):
    """Blocking client. ``with MeshClient() as mesh: block = mesh.allocate(1 << 20)``."""

    def __init__(
        self,
        config: str | os.PathLike | ClusterConfig | None = None,
        *,
        address: str | None = None,
        timeout_s: float | None = None,
        chunk_bytes: int | None = None,
        window: int | None = None,
        key: str | os.PathLike | None = None,
    ):
        super().__init__(config, address, timeout_s, chunk_bytes, window,
                         zmq.Context.instance(io_threads=IO_THREADS),
                         key)
        self._free = threading.Condition()

    def _wait(self, wait: Wait) -> set[zmq.Socket]:
        if not wait.sockets and not wait.writable:
            time.sleep(wait.timeout_s)
            return set()
        # libzmq's poll straight away: no zmq.Poller built and registered for every request
        items = [(s, zmq.POLLIN) for s in wait.sockets] + [(s, zmq.POLLOUT) for s in wait.writable]
        # a moment without sleeping first, for a reply on a plain socket: a small request's
        # comes in it (mesh/spin.py; ZeroMQ's I/O thread needs the CPU to take a reply in)
        got = None
        if CAN_SPIN and not any(type(s) is zmq.Socket for s in wait.sockets):
            got = spin_poll(functools.partial(zmq.zmq_poll, items), CLIENT_SPIN_S)
        if not got:
            got = zmq.zmq_poll(items, max(1, int(wait.timeout_s * 1000)))
        ready = {s for s, _ in got}
        if any(type(s) is int for s in ready):  # a plain socket (same-host, direct) is told by fd
            ready |= {s for s in (*wait.sockets, *wait.writable)
                      if type(s) is not zmq.Socket and s.fileno() in ready}
        return ready

    def _run(self, work: Any, most: int = 1) -> Any:
        with self._free:
            while (taken := self._take(work, most)) is None:
                if self._pool.closing:
                    raise MeshError("the client is closed")
                self._free.wait(1.0)
        cores, op = taken
        try:
            wait = next(op)
            while True:
                wait = op.send(self._wait(wait))
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()
            with self._free:
                self._give(cores)
                self._free.notify_all()

    def close(self) -> None:
        """Close every connection, once the operations running in other threads are done
        (new ones fail: the client is closed)."""
        with self._free:
            self._pool.closing = True
            self._free.notify_all()
            while self._pool.busy():
                self._free.wait(1.0)
            self._pool.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncMeshClient(_ClientBase):
    """Asyncio client: the same methods as ``MeshClient``, as coroutines."""

    def __init__(
        self,
        config: str | os.PathLike | ClusterConfig | None = None,
        *,
        address: str | None = None,
        timeout_s: float | None = None,
        chunk_bytes: int | None = None,
        window: int | None = None,
        key: str | os.PathLike | None = None,
    ):
        # Sync sockets of their own context: the core sends and receives with NOBLOCK, and
        # asyncio only waits for readability through shadow sockets.
        self._ctx = zmq.Context(io_threads=IO_THREADS)
        super().__init__(config, address, timeout_s, chunk_bytes, window, self._ctx, key)
        # asyncio and zmq.asyncio load here, not when mesh.client is imported: a sync client
        # (and every `grid` command) starts ~20 ms faster without them
        import asyncio
        import importlib

        self._asyncio, self._zmq_asyncio = asyncio, importlib.import_module("zmq.asyncio")
        self._free: Any = None  # an asyncio.Condition, made in the loop that first runs
        self._shadows: dict[int, Any] = {}  # id(socket) -> its zmq.asyncio shadow
        self._core.links.before_close = self._unhook  # (cores made later share it)

    def _unhook(self, sock: zmq.Socket) -> None:
        """Take a socket the core is about to close off the event loop. Its shadow registered
        the fd as a reader; left there, it would swallow the readiness of the next socket that
        gets the same fd (a later client's, or this one's after a reset), whose waits then run
        to their timeout."""
        shadow = self._shadows.pop(id(sock), None)
        if shadow is not None:
            shadow.close(linger=0)  # clears the loop's reader, then closes the shared handle

    def _shadow(self, sock: zmq.Socket) -> zmq.asyncio.Socket:
        shadow = self._shadows.get(id(sock))
        if shadow is None or shadow.closed or shadow.underlying != sock.underlying:
            shadow = self._zmq_asyncio.Socket.from_socket(sock)
            self._shadows[id(sock)] = shadow
        return shadow

    async def _wait(self, wait: Wait) -> set[zmq.Socket]:
        if not wait.sockets and not wait.writable:
            await self._asyncio.sleep(wait.timeout_s)
            return set()
        plain = [s for s in wait.sockets if not isinstance(s, zmq.Socket)]
        if plain or wait.writable:  # the same-host and direct paths' plain sockets
            return await self._wait_plain(wait, plain)
        poller = self._zmq_asyncio.Poller()
        shadows = {}
        for sock in wait.sockets:
            shadow = self._shadow(sock)
            shadows[shadow] = sock
            poller.register(shadow, zmq.POLLIN)
        events = await poller.poll(max(1, int(wait.timeout_s * 1000)))
        return {shadows[s] for s, _ in events if s in shadows}

    async def _wait_plain(self, wait: Wait, plain: list[Any]) -> set[Any]:
        """Wait for plain sockets through the loop's readers, and for zmq ones beside them."""
        aio = self._asyncio
        loop = aio.get_running_loop()
        woken = loop.create_future()
        wake = lambda: woken.done() or woken.set_result(None)  # noqa: E731
        for sock in plain:
            loop.add_reader(sock.fileno(), wake)
        for sock in wait.writable:
            loop.add_writer(sock.fileno(), wake)
        rest = tuple(s for s in wait.sockets if isinstance(s, zmq.Socket))
        polling = aio.ensure_future(self._wait(Wait(rest, wait.timeout_s))) if rest else None
        try:
            await aio.wait({woken} | ({polling} if polling else set()), timeout=wait.timeout_s,
                           return_when=aio.FIRST_COMPLETED)
        finally:
            for sock in plain:
                loop.remove_reader(sock.fileno())
            for sock in wait.writable:
                loop.remove_writer(sock.fileno())
        # (a spurious one reads or writes EAGAIN, and waits again)
        ready: set[Any] = set(plain) | set(wait.writable) if woken.done() else set()
        if polling is not None:
            if polling.done():
                ready |= polling.result()
            else:
                polling.cancel()
        return ready

    async def _run(self, work: Any, most: int = 1) -> Any:
        if self._free is None:
            self._free = self._asyncio.Condition()
        async with self._free:
            while (taken := self._take(work, most)) is None:
                if self._pool.closing:
                    raise MeshError("the client is closed")
                await self._free.wait()
        cores, op = taken
        try:
            wait = next(op)
            while True:
                wait = op.send(await self._wait(wait))
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()
            async with self._free:
                self._give(cores)
                self._free.notify_all()

    async def close(self) -> None:
        """Close every connection, once the operations running in other tasks are done (new
        ones fail: the client is closed)."""
        self._pool.closing = True
        if self._free is not None:
            async with self._free:
                self._free.notify_all()
                await self._free.wait_for(lambda: not self._pool.busy())
        self._pool.close()  # every socket goes through _unhook first
        self._shadows.clear()
        self._ctx.term()

    async def __aenter__(self) -> AsyncMeshClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

