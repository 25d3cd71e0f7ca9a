"""``grid memory``: blocks and named objects from the command line.

    grid memory allocate (--size GB | SIZE) [--node NAME] [--lazy] [--ttl DURATION]
                         [--replicas N] [--spread host|node]
    grid memory deallocate BLOCK_ID
    grid memory list-blocks | stats | list-objects
    grid memory store KEY FILE|- [--block-id ID] [--offset N] [--node NAME] [--replace]
                      [--replicas N] [--spread host|node] [--ttl DURATION] [--evictable]
                      [--compress [lz4|zstd]]
    grid memory expire KEY DURATION|never
    grid memory retrieve KEY|BLOCK_ID [--output FILE|-] [--size N] [--offset N]
    grid memory delete KEY

Every command takes ``--config/-c`` and ``--json``. Sizes printed for people read "4.77 MiB", as
in every command (``mesh/units.py``); ``--size 5.0`` is still GB as the seeds wrote it (GiB).
Files move through the client's streaming calls (``put_file``, ``get_file``,
``read_to_file``), so this process holds a few chunks at a time whatever the size; a progress bar
goes to stderr when stderr is a terminal and the transfer is over 32 MiB.

Replicas (``docs/durability.md``): ``--replicas N`` asks for N copies of a new block, on distinct
machines, or only distinct nodes with ``--spread node`` (defaults: ``mesh.replicas`` and
``mesh.replica_spread`` of the cluster file). ``list-blocks`` and ``list-objects`` say where every
copy is: a "Nodes" column, primary first, and ``"nodes"`` in ``--json`` (the one node of a block
without replicas).

A long listing (``mesh/cli/longlist.py``) prints one block a line in ``--json`` and a plain table.

Errors follow ``mesh/cli/``: a ``MeshError`` or a ``GridError`` ends the command with one red
line on stderr (a JSON object with ``--json``) and exit code 1. Local file problems (a missing input, an unwritable output) are
turned into ``GridError`` here, and so are bad ``--replicas``/``--spread`` values (before any
agent is asked).

Not here: the transfer logic and the object records (``mesh/client/core.py`` and the agents), the
other commands (``mesh/cli/``), the shared helpers (``human``, ``ok``, ``line``, ``echo_json``:
``mesh/cli/common.py``), the progress bar and the output file (``mesh/cli/streams.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from mesh.cli.common import (
    STATE_STYLE,
    GridError,
    InOrder,
    config_option,
    duration,
    echo_json,
    human,
    line,
    load,
    ok,
    quiet_broken_pipe,
)
from mesh.cli import common, longlist
from mesh.cli.streams import Progress, hex_dump, input_size, is_text, output_file
from mesh.client import MeshClient
from mesh.client.core import block_node_hint
from mesh.errors import (
    BlockNotFound,
    CapacityError,
    KeyExists,
    KeyNotFound,
    MeshError,
    OutOfRange,
    PlacementShort,
)
from mesh.units import parse_size

if TYPE_CHECKING:
    from mesh.config import ClusterConfig


@click.group(cls=InOrder)
def memory() -> None:
    """Allocate blocks, store and retrieve files under keys, and watch the memory pool."""


PREVIEW_BYTES = 1024
HEX_PREVIEW_BYTES = 256


# --- helpers ------------------------------------------------------------------------------------


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _client(config_path: str | None) -> MeshClient:
    return MeshClient(load(config_path))


def _offset(value: str) -> int:
    return parse_size(value)


def _info_dict(info: Any) -> dict[str, Any]:
    """An ``ObjectInfo`` for ``--json``: ``nodes`` names the node of an object without replicas;
    ``ttl_s`` the seconds it has left (null: no ttl), ``compression`` and ``raw_length``."""
    doc = dataclasses.asdict(info)
    doc["nodes"] = _nodes(info.nodes, info.node)
    ttl = info.ttl_remaining
    doc.update(ttl_s=None if ttl is None else round(ttl, 3), compression=info.compression,
               raw_length=info.raw_length)
    return doc


def _left(seconds: float | None) -> str:
    """Time left, for people: "-" (none), "42s", "9m 58s", "3h 12m", "2d 4h"."""
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                     ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {s % size // subsize}{sub}"
    return f"{s}s"


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _local_errors(f: Callable) -> Callable:
    """Local file errors become one red line; mesh errors pass through to ``mesh.cli.main``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except MeshError:  # NodeUnavailable is an OSError too: keep its own message
            raise
        except BrokenPipeError:  # click would exit 1 for it: do as shell tools do
            quiet_broken_pipe()
        except OSError as exc:
            raise GridError(_os_message(exc), error_type=type(exc).__name__) from None

    return wrapper


@contextmanager
def _capacity_hint() -> Iterator[None]:
    """The seeds' troubleshooting step for a full mesh: look at what is free (and, for copies
    that cannot be placed, which nodes are up)."""
    try:
        yield
    except CapacityError as exc:
        raise GridError(f"{exc} (check free memory with `grid memory stats`)", node=exc.node,
                        error_type=type(exc).__name__) from None
    except PlacementShort as exc:
        raise GridError(f"{exc}; live nodes and their free memory: `grid memory stats`",
                        node=exc.node, error_type=type(exc).__name__) from None


# --- replicas -------------------------------------------------------------------------------------

MAX_REPLICAS = 16  # what the client and the agents accept (mesh/client/core.py)
SPREADS = ("host", "node")


def replica_options(f: Callable) -> Callable:
    """``--replicas N`` and ``--spread host|node``, read as text so that a bad value is one line
    (``_replicas``), not click's usage error."""
    f = click.option("--spread", metavar="host|node",
                     help="where the copies go: distinct machines (host) or only distinct "
                     "nodes, which may share a machine (node); default: mesh.replica_spread")(f)
    return click.option("--replicas", metavar="N",
                        help=f"copies of the block, 1 to {MAX_REPLICAS}, each on its own node "
                        "(default: mesh.replicas of the cluster file, 1)")(f)


def _replicas(replicas: str | None, spread: str | None) -> tuple[int | None, str | None]:
    """The values of ``--replicas`` and ``--spread`` (``None`` when not given); ``GridError``
    for anything else than a whole number 1..16 and host or node."""
    count = None
    if replicas is not None:
        text = replicas.strip()
        count = int(text) if text.isascii() and text.isdigit() else None
        if count is None or not 1 <= count <= MAX_REPLICAS:
            raise GridError(f"--replicas {replicas!r}: expected a whole number of copies from 1 "
                            f"to {MAX_REPLICAS}")
    if spread is not None:
        spread = spread.strip().lower()
        if spread not in SPREADS:
            raise GridError(f"--spread {spread!r}: expected host (copies on distinct machines) "
                            "or node (distinct nodes, which may share a machine)")
    return count, spread


def _with_spread(cfg: ClusterConfig, spread: str | None) -> ClusterConfig:
    """``cfg`` with ``mesh.replica_spread`` set to ``spread`` (the puts take their spread from
    there: ``put_file`` has no spread of its own)."""
    if spread is None or spread == cfg.mesh.replica_spread:
        return cfg
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, replica_spread=spread))


def _nodes(nodes: tuple[str, ...], node: str) -> list[str]:
    """The nodes holding a copy, primary first: ``node`` alone for a block without replicas."""
    return list(nodes) or [node]


# --- blocks ---------------------------------------------------------------------------------------


@memory.command("allocate")
@config_option
@click.argument("size_arg", metavar="[SIZE]", required=False)
@click.option("--size", "-s", "size_gb", metavar="GB",
              help="size in GB (binary: 1 GB = 2**30 bytes), or with a unit: 512MiB")
@click.option("--node", "-n", help="the node to allocate on (default: the live node with most room)")
@click.option("--lazy", is_flag=True, help="do not back the pages now (they are backed when written)")
@click.option("--ttl", metavar="DURATION",
              help="free the block after this long (90s, 30m, 1h, 2d); default: until deallocated")
@replica_options
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def allocate(config_path: str | None, size_arg: str | None, size_gb: str | None,
             node: str | None, lazy: bool, ttl: str | None, replicas: str | None,
             spread: str | None, as_json: bool) -> None:
    """Allocate a block: `--size 5.0` (GB) or SIZE in bytes (`10485760`, or `10MiB`). It lives
    until `grid memory deallocate`, or for `--ttl`; `--replicas N` keeps N copies (`--node` is
    then the first)."""
    if (size_arg is None) == (size_gb is None):
        raise GridError(
            "give the size once: `grid memory allocate --size 5.0` (GB) or "
            "`grid memory allocate 10485760` (bytes)"
            if size_arg is None else
            f"give the size once, not both {size_arg!r} and --size {size_gb!r}"
        )
    nbytes = parse_size(size_gb, default_unit="GB") if size_gb is not None else parse_size(size_arg)
    ttl_s = None if ttl is None else duration(ttl)
    copies, spread = _replicas(replicas, spread)
    cfg = load(config_path)
    if copies is None:
        copies = cfg.mesh.replicas
    with MeshClient(cfg) as client, _capacity_hint():
        block_id = client.allocate(nbytes, node=node, lazy=lazy, ttl_s=ttl_s, replicas=copies,
                                   spread=spread)
        info = client.stat(block_id) if ttl_s is not None or copies > 1 else None
        where = block_node_hint(block_id) or (info or client.stat(block_id)).node
    expires = info.expires if info is not None else None
    nodes = _nodes(info.nodes, info.node) if info is not None else [where]
    shared = info is not None and info.shared_hosts
    if as_json:
        echo_json({"block_id": block_id, "node": nodes[0], "nodes": nodes, "size": nbytes,
                   "lazy": lazy, "expires": expires, "replicas": copies,
                   "shared_hosts": shared})
        return
    ok(f"Allocated {human(nbytes)}" + (f" x {copies} copies" if copies > 1 else ""))
    line(f"Block ID: {block_id}")
    line(f"Node: {nodes[0]}")
    if len(nodes) > 1:
        line(f"Nodes: {', '.join(nodes)}")
    if shared:  # --spread node, and the cluster had no machine of its own for every copy
        line("Note: some copies share a machine (one machine failing loses them together)")
    if expires is not None:
        line(f"Expires: {_when(expires)}")


@memory.command("deallocate")
@config_option
@click.argument("block_id")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def deallocate(config_path: str | None, block_id: str, as_json: bool) -> None:
    """Free a block (and the keys that point into it)."""
    with _client(config_path) as client:
        client.free(block_id)
    if as_json:
        echo_json({"block_id": block_id, "deallocated": True})
        return
    ok(f"Deallocated block: {block_id}")


@memory.command("list-blocks")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def list_blocks(config_path: str | None, as_json: bool) -> None:
    """Every block on the live agents, with the keys stored in it."""
    import gc

    gc.disable()  # a short-lived process making 100,000s of records: no cycles to look for
    with _client(config_path) as client:
        blocks = client.block_records()  # (no BlockInfo for each: longlist.block_rows)
        objects = client.keys()
        keys: dict[str, list[str]] = {}
        for info in objects:
            if info.block_id is not None:
                keys.setdefault(info.block_id, []).append(info.key)
    failed = {**objects.failed_nodes, **blocks.failed_nodes}
    if len(blocks) > longlist.LARGE_LISTING_ROWS:
        longlist.print_blocks(blocks, keys, failed, as_json, _when)
        _incomplete(failed)
        return
    rows = longlist.block_rows(blocks, keys)
    if as_json:
        echo_json({"blocks": rows, "failed_nodes": failed})
    else:
        table = common.Table(title="Allocated Memory Blocks")
        for col, just in [("Block ID", "left"), ("Nodes", "left"), ("Size", "right"),
                          ("Key", "left"), ("Created", "left"), ("Expires", "left")]:
            table.add_column(col, justify=just)
        for r in rows:
            key = ", ".join(r["keys"]) or ("(put in progress)" if r["pending"] else "-")
            table.add_row(common.Text(r["block_id"]), common.Text(", ".join(r["nodes"])),
                          human(r["size"]),
                          common.Text(key),
                          _when(r["created"]), _when(r["expires"]) if r["expires"] else "-")
        common.out.print(table)
    _incomplete(failed)


def _incomplete(failed: dict[str, str]) -> None:
    """A listing that misses nodes says so: one line on stderr and exit 1 (after the rows)."""
    if failed:
        raise GridError("listing incomplete, no answer from " + "; ".join(
            f"{node} ({why})" for node, why in sorted(failed.items())),
            node=next(iter(failed)) if len(failed) == 1 else None)


@memory.command("stats")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def stats(config_path: str | None, as_json: bool) -> None:
    """Blocks, used and free memory on every node."""
    with _client(config_path) as client:
        doc = client.stats()
    if as_json:
        echo_json(doc)
        return
    common.out.print("[bold]Distributed Memory Pool Statistics[/bold]", highlight=False)
    common.out.print(f"Total Blocks: {doc['total_blocks']}", highlight=False)
    common.out.print(
        f"Used: {human(doc['total_used'])} of {human(doc['total_capacity'])} on "
        f"{doc['live_nodes']} live node(s)", highlight=False,
    )
    common.out.print()
    table = common.Table(title="Node Memory Usage")
    for col, just in [("Node", "left"), ("State", "left"), ("Blocks", "right"), ("Used", "right"),
                      ("Capacity", "right"), ("Host free", "right"), ("Note", "left")]:
        table.add_column(col, justify=just)
    for r in doc["nodes"]:
        style = STATE_STYLE.get(r["state"], "")
        up = r["state"] != "down"
        table.add_row(
            common.Text(r["node"]), common.Text(r["state"], style=style),
            str(r["blocks"]) if up else "-", human(r["used"]) if up else "-",
            human(r["capacity"]), human(r["host_available"]) if up else "-",
            common.Text(r.get("reason") or ""),
        )
    common.out.print(table)


# --- named objects --------------------------------------------------------------------------------


@memory.command("store")
@config_option
@click.argument("key")
@click.argument("file", metavar="FILE|-")
@click.option("--block-id", help="store into this existing block (no allocation)")
@click.option("--offset", default="0", show_default=True,
              help="where in --block-id the bytes go (bytes, or with a unit: 4KiB)")
@click.option("--node", "-n", help="the node for a new block (default: the live node with most room)")
@click.option("--replace", is_flag=True, help="overwrite the key if it exists")
@replica_options
@click.option("--ttl", metavar="DURATION", help="its agent deletes it this long after (90s, 30m, "
              "1h, 2d); change it later with `grid memory expire`")
@click.option("--evictable", is_flag=True, help="a cache entry: its agent may evict it to make "
              "room for new data (mesh.eviction_policy)")
@click.option("--compress", type=click.Choice(["lz4", "zstd"]), is_flag=False, flag_value="lz4",
              default=None, help="store it compressed (lz4 when no algorithm is given); "
              "retrieve decompresses it")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def store(config_path: str | None, key: str, file: str, block_id: str | None, offset: str,
          node: str | None, replace: bool, replicas: str | None, spread: str | None,
          ttl: str | None, evictable: bool, compress: str | None, as_json: bool) -> None:
    """Store FILE (or standard input, `-`) under KEY; `--replicas N` keeps N copies of its block."""
    copies, spread = _replicas(replicas, spread)
    ttl_s = None if ttl is None else duration(ttl)
    if block_id is not None and (copies is not None or spread is not None):
        raise GridError("give --replicas/--spread or --block-id, not both (an existing block "
                        "keeps the copies it was allocated with)")
    at = _offset(offset)
    if at and block_id is None:
        raise GridError("--offset needs --block-id (a new block always starts at 0)")
    if node is not None and block_id is not None:
        raise GridError("give --node or --block-id, not both (the block's node holds the object)")
    if file != "-":
        if not os.path.exists(file):
            raise GridError(f"{file}: no such file")
        if os.path.isdir(file):
            raise GridError(f"{file}: is a directory")
    cfg = _with_spread(load(config_path), spread)
    source: Any = sys.stdin.buffer if file == "-" else file
    with MeshClient(cfg) as client, Progress(f"store {key}", input_size(file)) as bar:
        try:
            with _capacity_hint():
                info = client.put_file(key, source, node, block_id=block_id, offset=at,
                                       replace=replace, progress=bar, replicas=copies,
                                       ttl=ttl_s, evictable=evictable, compression=compress)
        except KeyExists as exc:
            raise GridError(f"{exc} (grid memory store --replace)", node=exc.node,
                            error_type=type(exc).__name__) from None
    nodes = _nodes(info.nodes, info.node)
    if as_json:
        echo_json(_info_dict(info))
        return
    ok(f"Stored {human(info.raw_length)} as key: {info.key}")
    if info.compression:
        line(f"Compressed: {human(info.length)} ({info.compression}, "
             f"{info.raw_length / max(1, info.length):.1f}x)")
    if info.expires is not None:
        line(f"Expires: {_when(info.expires)} (in {_left(info.ttl_remaining)})")
    line(f"Block ID: {info.block_id or '- (empty object)'}")
    line(f"Node: {info.node}")
    if len(nodes) > 1:
        line(f"Nodes: {', '.join(nodes)}")


def _not_found(name: str) -> GridError:
    return GridError(
        f"Not found: {name!r} is neither a stored key nor a block ID (list stored objects with "
        "`grid memory list-objects`; list current blocks with `grid memory list-blocks`)"
    )


@memory.command("retrieve")
@config_option
@click.argument("name", metavar="KEY|BLOCK_ID")
@click.option("--output", "-o", metavar="FILE|-",
              help="write every byte to FILE (`-`: standard output); default: a preview")
@click.option("--size", "size_", metavar="N", help="bytes to read (default: to the end)")
@click.option("--offset", default="0", show_default=True, metavar="N", help="where to start reading")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def retrieve(config_path: str | None, name: str, output: str | None, size_: str | None,
             offset: str, as_json: bool) -> None:
    """Read an object by KEY, or a raw range of a block by BLOCK_ID."""
    if as_json and output == "-":
        raise GridError("--json and `--output -` both write to standard output; pick one")
    at = _offset(offset)
    size = None if size_ is None else parse_size(size_)
    ranged = size is not None or at != 0
    cfg = load(config_path)
    with MeshClient(cfg) as client:
        key = None
        try:
            info = client.object_info(name)
            key = info.key
        except KeyNotFound:
            info = None
        if info is not None:
            if at > info.raw_length or (size is not None and at + size > info.raw_length):
                raise OutOfRange(
                    f"range of {size if size is not None else info.raw_length - at} bytes at "
                    f"offset {at} is past the end of object {name!r} ({info.raw_length} bytes)"
                )
            block_id, base = info.block_id, info.offset
            total = info.raw_length - at if size is None else size
        else:
            try:
                block_size = client.stat(name).size
            except BlockNotFound:
                raise _not_found(name) from None
            if at > block_size:
                raise OutOfRange(f"offset {at} is past the end of block {name} ({block_size} bytes)")
            block_id, base = name, 0
            total = block_size - at if size is None else size

        def read_range(dest: Any, n: int, progress: Any = None) -> int:
            if n and info is not None and info.compression:  # whole, decompressed, then cut
                return dest.write(memoryview(client.get_bytes(key))[at : at + n])
            if n == 0:
                return 0
            return client.read_to_file(block_id, dest, offset=base + at, size=n, progress=progress)

        if output is None:
            _preview(name, key, block_id, total, read_range, as_json)
            return
        with output_file(output) as dest, Progress(f"retrieve {name}", total) as bar:
            if key is not None and not ranged:
                client.get_file(key, dest, progress=bar)  # checksum verified
            else:
                read_range(dest, total, bar)
    if output == "-":
        return
    if as_json:
        echo_json({"name": name, "key": key, "block_id": block_id, "offset": at,
                    "size": total, "output": output})
        return
    ok(f"Retrieved {human(total)} to {output}")


def _preview(name: str, key: str | None, block_id: str | None, total: int,
             read_range: Callable[[Any, int], int], as_json: bool) -> None:
    buf = io.BytesIO()
    read_range(buf, min(PREVIEW_BYTES, total))
    data = buf.getvalue()
    text = is_text(data, truncated=len(data) < total)
    if as_json:
        echo_json({"name": name, "key": key, "block_id": block_id, "size": total,
                    "preview_bytes": len(data), "text": text,
                    "hex": None if text is not None else data[:HEX_PREVIEW_BYTES].hex()})
        return
    if text is not None:
        if text:
            click.echo(text if text.endswith("\n") else text + "\n", nl=False)
        shown = len(data)
    else:
        click.echo(hex_dump(data[:HEX_PREVIEW_BYTES]))
        shown = min(len(data), HEX_PREVIEW_BYTES)
    size = f"{total:,} bytes in all" + (f" ({human(total)})" if total >= 1024 else "")
    part = f", showing the first {shown:,}" if shown < total else ""
    common.out.print(f"[dim]── {size}{part}; use --output FILE for everything[/dim]",
                     highlight=False)


@memory.command("list-objects")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def list_objects(config_path: str | None, as_json: bool) -> None:
    """Every key stored in the mesh."""
    with _client(config_path) as client:
        infos = client.keys()
    if as_json:
        echo_json({"objects": [_info_dict(i) for i in infos], "failed_nodes": infos.failed_nodes})
        _incomplete(infos.failed_nodes)
        return
    table = common.Table(title="Stored Objects")
    for col, just in [("Key", "left"), ("Block", "left"), ("Size", "right"), ("Nodes", "left"),
                      ("Type", "left"), ("Created", "left"), ("Expires in", "right"),
                      ("Stored", "right")]:
        table.add_column(col, justify=just)
    for i in infos:
        block = "-" if i.block_id is None else (
            i.block_id if i.offset == 0 else f"{i.block_id} @{i.offset}")
        stored = "-" if not i.compression else \
            f"{human(i.length)} {i.compression} {i.raw_length / max(1, i.length):.1f}x"
        table.add_row(common.Text(i.key), common.Text(block), human(i.raw_length),
                      common.Text(", ".join(_nodes(i.nodes, i.node))),
                      i.content_type + (" (evictable)" if i.evictable else ""), _when(i.created),
                      _left(i.ttl_remaining), stored)
    common.out.print(table)
    _incomplete(infos.failed_nodes)


@memory.command("expire")
@config_option
@click.argument("key")
@click.argument("ttl", metavar="DURATION|never")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def expire(config_path: str | None, key: str, ttl: str, as_json: bool) -> None:
    """Delete KEY that long from now (90s, 30m, 1h, 2d), or `never`."""
    seconds = None if ttl.strip().lower() == "never" else duration(ttl, "DURATION")
    with _client(config_path) as client:
        info = client.expire(key, seconds)
    if as_json:
        echo_json(_info_dict(info))
        return
    if info.expires is None:
        ok(f"Key {key} no longer expires")
    else:
        ok(f"Key {key} expires at {_when(info.expires)} (in {_left(info.ttl_remaining)})")


@memory.command("delete")
@config_option
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
@_local_errors
def delete(config_path: str | None, key: str, as_json: bool) -> None:
    """Remove KEY (and free its block when the block was allocated for it)."""
    with _client(config_path) as client:
        client.delete(key)
    if as_json:
        echo_json({"key": key, "deleted": True})
        return
    ok(f"Deleted key: {key}")
