"""The ``mesh://`` filesystem: the mesh's named objects through fsspec, so pandas, pyarrow and
Dask read and write them as files (``pandas.read_parquet("mesh://features.parquet")``).

fsspec finds ``MeshFileSystem`` through the ``fsspec.specs`` entry point of pyproject.toml. A
path is a key: ``mesh://a/b/c.parquet`` is the key ``a/b/c.parquet`` (the protocol and leading
slashes stripped). Directories are implied by ``/`` in keys, as in S3 filesystems: ``ls("a")``
lists the keys under ``a/`` and the pseudo-directories one level down, ``info`` of one says
``directory``, ``mkdir`` does nothing and ``rm(..., recursive=True)`` deletes the keys under it.

Reading. ``open(path, "rb")`` looks the key up once and reads that object (its block range) in
ranges, as the file is read: a range of a plain object is one ``client.read`` of its block, so
a Parquet footer or one column costs what it reads, not the object. Striped objects
(``mesh/client/stripes.py``), compressed ones (``meta["compression"]``) and 0-byte ones are read
whole with ``get_bytes`` (checksum verified) when opened, and ranges are cut from that. A whole
``cat`` is one ``get_bytes`` (checksum verified); a range is not checked (the checksum covers
the whole object). A key replaced or deleted while a file is open makes its next read raise
``ObjectChanged`` (or ``FileNotFoundError``), never bytes of two objects.

Writing. ``open(path, "wb")`` buffers in memory up to ``spool_bytes`` (default 64 MiB), past
that in a temporary file; ``close`` stores the object at once (``put_bytes(..., replace=True)``,
or ``put_file`` from the temporary file), so readers see the old object or the new one. ``"xb"``
refuses an existing key (``FileExistsError``); appending is not possible (objects are whole).
A ``with`` block that raises stores nothing.

Errors: ``KeyNotFound`` is ``FileNotFoundError``, ``KeyExists`` ``FileExistsError``,
``Forbidden`` / ``AuthenticationError`` ``PermissionError``; other ``MeshError`` subclasses are
raised as they are (``NodeUnavailable``: a listing that some node did not answer is an error,
never a silently shorter listing).

The client. Each filesystem has one ``MeshClient``, made on first use from its storage options
(``config``, ``address``, ``key``, ``timeout_s``: ``MeshClient``'s arguments; none: the way
``MeshClient()`` finds its cluster, in each process). fsspec keeps one instance per set of
options. A pickled filesystem carries only its options (fsspec's ``__reduce__``) and connects
again where it is unpickled; after ``fork`` the child makes its own client (the parent's
sockets are left alone, never closed from the child).

Not here: the client calls (``mesh/client/drivers.py``), Arrow tables as objects
(``mesh/client/tables.py``). The guide is ``docs/filesystem.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import os
import tempfile
import threading
from typing import Any, Iterator

from mesh.client import MeshClient, stripes
from mesh.errors import (
    AuthenticationError,
    BlockNotFound,
    Forbidden,
    KeyExists,
    KeyNotFound,
    MissingExtra,
    NodeUnavailable,
    ObjectChanged,
)

try:
    from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
except ImportError:  # pragma: no cover - the extra is missing
    raise MissingExtra("the mesh:// filesystem needs fsspec, which comes with the fsspec extra: "
                       "pip install 'memory-mesh[fsspec]'") from None

# A file written is kept in memory up to this, then spooled to a temporary file.
SPOOL_BYTES = 64 * 1024 * 1024

_ABANDONED: list[Any] = []  # clients of a parent process: never closed (nor freed) in a child


@contextlib.contextmanager
def _os_errors(path: str) -> Iterator[None]:
    """The mesh's errors as the OS errors fsspec and its callers expect."""
    try:
        yield
    except KeyNotFound as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc), path) from exc
    except KeyExists as exc:
        raise FileExistsError(errno.EEXIST, str(exc), path) from exc
    except (Forbidden, AuthenticationError) as exc:
        raise PermissionError(errno.EACCES, str(exc), path) from exc


def _not_found(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no key and no key under it in the mesh", path)


def _bounds(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """fsspec's ``start``/``end`` (None: the ends; negative: from the end) as 0 <= a <= b <= size."""
    a = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
    b = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return a, max(a, b)


def _rangeable(info: Any) -> bool:
    """Whether a range of the object is a range of one block (read without the rest)."""
    return bool(info.block_id) and info.length > 0 and not stripes.striped(info) \
        and not info.meta.get("compression")


def _file_entry(info: Any) -> dict[str, Any]:
    return {"name": info.key, "size": info.raw_length, "type": "file", "created": info.created,
            "mtime": info.created, "content_type": info.content_type,
            "checksum": info.checksum, "node": info.node, "block_id": info.block_id}


def _dir_entry(name: str) -> dict[str, Any]:
    return {"name": name, "size": 0, "type": "directory"}


class MeshFileSystem(AbstractFileSystem):
    """fsspec filesystem over the mesh's named objects (see the module docstring)."""

    protocol = "mesh"
    root_marker = ""

    def __init__(self, config: Any = None, *, address: str | None = None,
                 key: str | os.PathLike | None = None, timeout_s: float | None = None,
                 spool_bytes: int = SPOOL_BYTES, **kwargs: Any):
        super().__init__(config=config, address=address, key=key, timeout_s=timeout_s,
                         spool_bytes=spool_bytes, **kwargs)
        self._client_args = {"config": config, "address": address, "key": key,
                             "timeout_s": timeout_s}
        self.spool_bytes = int(spool_bytes)
        self._client: Any = None
        self._client_pid = 0
        self._lock = threading.Lock()

    # --- the client -------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """This filesystem's ``MeshClient``, made on first use in each process."""
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            with self._lock:
                if self._client is None or self._client_pid != pid:
                    if self._client is not None:  # made before a fork: its sockets are the parent's
                        _ABANDONED.append(self._client)
                    args = dict(self._client_args)
                    self._client = MeshClient(args.pop("config"), **args)
                    self._client_pid = pid
        return self._client

    def close(self) -> None:
        """Close the client (a later call makes a new one)."""
        with self._lock:
            if self._client is not None and self._client_pid == os.getpid():
                self._client.close()
            self._client = None

    # --- paths ------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return super()._strip_protocol(path).lstrip("/")

    def _key(self, path: str) -> str:
        key = self._strip_protocol(path)
        if not key:
            raise IsADirectoryError(errno.EISDIR, "the mesh's root is a directory", "mesh://")
        return key

    # --- metadata ---------------------------------------------------------------------------

    def _object_info(self, path: str) -> Any:
        key = self._key(path)
        with _os_errors(path):
            return self.client.object_info(key)

    def _all_keys(self) -> list[Any]:
        listing = self.client.keys()
        if listing.failed_nodes:
            raise NodeUnavailable(
                "the mesh's key listing is incomplete: "
                + "; ".join(f"{node}: {why}" for node, why in listing.failed_nodes.items()))
        return list(listing)

    def _under(self, path: str) -> tuple[list[Any], Any]:
        """The objects under the directory ``path`` and the object named ``path`` (or None)."""
        prefix = f"{path}/" if path else ""
        under, itself = [], None
        for info in self._all_keys():
            if path and info.key == path:
                itself = info
            elif info.key.startswith(prefix):
                under.append(info)
        return under, itself

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        under, itself = self._under(path)
        if not under:
            if itself is None and path:
                raise _not_found(path)
            entries = [_file_entry(itself)] if itself is not None else []
        else:
            prefix = f"{path}/" if path else ""
            files, dirs = [], {}
            for info in under:
                head, sep, _ = info.key[len(prefix):].partition("/")
                if sep:
                    dirs.setdefault(prefix + head, _dir_entry(prefix + head))
                else:
                    files.append(_file_entry(info))
            entries = sorted([*files, *dirs.values()], key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if not path:
            return _dir_entry("")
        try:
            return _file_entry(self._object_info(path))
        except FileNotFoundError:
            under, _ = self._under(path)
            if under:
                return _dir_entry(path)
            raise

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:
        """One listing of the mesh's keys, not one per directory (fsspec's walks ``ls``)."""
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        path = self._strip_protocol(path)
        prefix = f"{path}/" if path else ""
        under, itself = self._under(path)
        out: dict[str, dict] = {}
        if withdirs and path and under:
            out[path] = _dir_entry(path)
        for info in under:
            parts = info.key[len(prefix):].split("/")
            if withdirs:
                for depth in range(1, len(parts)):
                    if maxdepth is None or depth <= maxdepth:
                        name = prefix + "/".join(parts[:depth])
                        out.setdefault(name, _dir_entry(name))
            if maxdepth is None or len(parts) <= maxdepth:
                out[info.key] = _file_entry(info)
        if not out and itself is not None:
            out[path] = _file_entry(itself)
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def created(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._object_info(path).created,
                                               tz=datetime.timezone.utc)

    def modified(self, path: str) -> datetime.datetime:
        """Objects are never changed in place: a replace is a new object, created then."""
        return self.created(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Directories are implied by the keys under them: nothing to make."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Directories are implied by the keys under them: nothing to make."""

    def rmdir(self, path: str) -> None:
        """A directory goes when its last key does."""

    # --- data -------------------------------------------------------------------------------

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        info = self._object_info(path)
        if _rangeable(info):
            a, b = _bounds(info.length, start, end)
            if (a, b) != (0, info.length):
                return self._read_range(info, a, b)
        with _os_errors(path):
            data = self.client.get_bytes(info.key)
        a, b = _bounds(len(data), start, end)
        return bytes(memoryview(data)[a:b])

    def _read_range(self, info: Any, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of the object ``info`` names (``_rangeable``), from its block."""
        if end <= start:
            return b""
        for _ in range(2):
            try:
                # (fsspec's files and caches deal in bytes: one copy of the range, not of the
                # object)
                return bytes(self.client.read(info.block_id, end - start, info.offset + start))
            except BlockNotFound:  # the block went with its object: replaced or deleted?
                now = self._object_info(info.key)  # FileNotFoundError when deleted
                if (now.block_id, now.offset, now.checksum) != \
                        (info.block_id, info.offset, info.checksum):
                    raise ObjectChanged(
                        f"key {info.key!r} was replaced while it was read: it named "
                        f"{info.length} bytes of block {info.block_id} ({info.checksum}) and "
                        f"now names {now.length} bytes of block {now.block_id} "
                        f"({now.checksum})") from None
        raise BlockNotFound(f"block {info.block_id} of key {info.key!r} is not found, though "
                            "its key still names it")

    def pipe_file(self, path: str, value: Any, mode: str = "overwrite", **kwargs: Any) -> None:
        key = self._key(path)
        with _os_errors(path):
            self.client.put_bytes(key, value, replace=mode != "create")

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:
        """Stream a local file in (``put_file``: client memory bounded whatever its size)."""
        if os.path.isdir(lpath):
            return
        key = self._key(rpath)
        progress = callback.relative_update if callback is not None else None
        if callback is not None:
            callback.set_size(os.path.getsize(lpath))
        with _os_errors(rpath):
            self.client.put_file(key, lpath, replace=mode != "create", progress=progress)

    def get_file(self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None,
                 **kwargs: Any) -> None:
        """Stream an object out (``get_file``: checksum verified)."""
        dest = outfile if outfile is not None else lpath
        progress = callback.relative_update if callback is not None else None
        key = self._strip_protocol(rpath)
        if isinstance(dest, (str, os.PathLike)):
            os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        try:
            with _os_errors(rpath):
                if not key:
                    raise KeyNotFound("the root")
                self.client.get_file(key, dest, progress=progress)
        except FileNotFoundError:
            if isinstance(dest, (str, os.PathLike)) and self.isdir(rpath):
                os.makedirs(dest, exist_ok=True)  # a pseudo-directory: a local one
                return
            raise

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy through this process (the object is held in memory once)."""
        data = self.cat_file(path1)
        self.pipe_file(path2, data)

    def rm_file(self, path: str) -> None:
        key = self._key(path)
        with _os_errors(path):
            self.client.delete(key)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete keys; a pseudo-directory's keys with ``recursive`` (itself needs nothing)."""
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        dirs = {q.rsplit("/", 1)[0] for q in paths if "/" in q}  # parents of what is deleted
        for p in reversed(paths):
            try:
                self.rm_file(p)
            except FileNotFoundError:
                if recursive and p in dirs:
                    continue
                if self.isdir(p):
                    raise IsADirectoryError(errno.EISDIR, "a directory of keys: delete it with "
                                            "recursive=True", p) from None
                raise

    def _open(self, path: str, mode: str = "rb", block_size: Any = None,
              autocommit: bool = True, cache_options: dict | None = None,
              **kwargs: Any) -> MeshFile:
        return MeshFile(self, self._key(path), mode, block_size, autocommit,
                        cache_options=cache_options, **kwargs)


class MeshFile(AbstractBufferedFile):
    """A file of the mesh: reads ranges of the object it opened; writes store on close."""

    def __init__(self, fs: MeshFileSystem, path: str, mode: str = "rb", block_size: Any = None,
                 autocommit: bool = True, cache_options: dict | None = None, **kwargs: Any):
        if mode not in ("rb", "wb", "xb"):
            raise NotImplementedError(f"mode {mode!r}: a mesh object is written whole "
                                      "('wb', 'xb') or read ('rb'); it cannot be appended to")
        self._whole: bytearray | None = None
        self._spool: Any = None
        self._done: Any = None  # a closed write's data, kept until commit when not autocommit
        size = None
        details = None
        if mode == "rb":
            self._object = fs._object_info(path)  # this object is read, whatever comes after
            details = _file_entry(self._object)
            if not _rangeable(self._object):  # read whole once (checksum verified), cut from it
                with _os_errors(path):
                    self._whole = fs.client.get_bytes(path)
                details["size"] = len(self._whole)
            size = details["size"]
        else:
            block_size = fs.spool_bytes  # the buffer is flushed (spooled) only past this
        kwargs.pop("details", None)
        super().__init__(fs, path, mode, block_size, autocommit, cache_options=cache_options,
                         size=size, **kwargs)
        if details is not None:
            self._details = details

    def _fetch_range(self, start: int, end: int) -> bytes:
        a, b = _bounds(self.size, start, end)
        if self._whole is not None:
            return bytes(memoryview(self._whole)[a:b])
        return self.fs._read_range(self._object, a, b)

    # --- writing: spooled, stored on close ---------------------------------------------------

    def _initiate_upload(self) -> None:
        """Nothing: the object is stored whole on close."""

    def _upload_chunk(self, final: bool = False) -> bool:
        if not final and self._spool is None:  # past spool_bytes: on to a temporary file
            self._spool = tempfile.TemporaryFile()
        if self._spool is not None:
            self._spool.write(self.buffer.getbuffer())
        if not final:
            return True
        data = self._spool if self._spool is not None else self.buffer
        if self.autocommit:
            self._store(data)
        else:
            self._done = data  # fsspec's transaction commits it
        return True

    def _store(self, data: Any) -> None:
        replace = self.mode == "wb"
        client = self.fs.client
        with _os_errors(self.path):
            if isinstance(data, io.BytesIO):
                view = data.getbuffer()
                try:
                    client.put_bytes(self.path, view, replace=replace)
                finally:
                    view.release()
            else:
                data.seek(0)
                try:
                    client.put_file(self.path, data, replace=replace)
                finally:
                    data.close()

    def commit(self) -> None:
        if self._done is not None:
            data, self._done = self._done, None
            self._store(data)

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._done = self._spool = None

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and self.writable():  # a failed write stores nothing
            self.discard()
            self.closed = True
            return
        self.close()

