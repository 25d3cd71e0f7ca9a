"""The real ``grid memory`` executable against three real agents (one mesh for the module).

Every call is a separate ``grid`` process, so whatever one call stores, the next one finds
through the agents alone. Tests share the mesh: each cleans up what it made and checks only its
own blocks and keys.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.mesh import free_port_pair, running_mesh

GRID = Path(sys.executable).parent / "grid"
MiB = 1024**2


@dataclass
class Run:
    code: int
    raw: bytes  # stdout as bytes
    err: str

    @property
    def out(self) -> str:
        return self.raw.decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("memory-cli")) as m:
        yield m


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GRID_CONFIG"}
    env["COLUMNS"] = "200"
    return env


def grid(config: Path, *args: str, stdin=None, timeout: float = 60, **kw) -> Run:
    """``grid memory ARGS -c CONFIG``; ``stdin``: bytes, a file object, or nothing."""
    data = stdin if isinstance(stdin, bytes) else None
    p = subprocess.run(
        [str(GRID), "memory", *args, "-c", str(config)], input=data,
        stdin=subprocess.DEVNULL if stdin is None else (None if data is not None else stdin),
        capture_output=True, env=_env(), cwd=config.parent, timeout=timeout, **kw,
    )
    return Run(p.returncode, p.stdout, p.stderr.decode("utf-8", errors="replace"))


def ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\nstdout: {run.out}\nstderr: {run.err}"
    assert "Traceback" not in run.err
    return run


def one_error(run: Run, *needles: str) -> None:
    """Exit 1, one red line on stderr containing every needle, nothing on stdout."""
    assert run.code == 1, f"exit {run.code}\nstdout: {run.out}\nstderr: {run.err}"
    assert "Traceback" not in run.err
    assert len(run.err.strip().splitlines()) == 1, run.err
    if run.err.startswith("{"):  # --json: one JSON object (tests/integration/test_cli_json.py)
        message = json.loads(run.err)["error"]["message"]
    else:
        assert run.err.startswith("✗ "), run.err
        message = run.err
    for needle in needles:
        assert needle in message, run.err
    assert run.raw == b"", run.out


def field(run: Run, name: str) -> str:
    m = re.search(rf"^{name}: (.+)$", run.out, re.M)
    assert m, run.out
    return m.group(1).strip()


def write_random(path: Path, size: int, piece: int = 16 * MiB) -> str:
    """A file of ``size`` random bytes, written in pieces; returns its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(piece, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


# --- blocks ---------------------------------------------------------------------------------------


def test_allocate_in_both_seed_forms_list_and_deallocate(mesh):
    cfg = mesh.config_path
    r = ok(grid(cfg, "allocate", "--size", "0.01"))  # GB
    assert r.out.splitlines()[0] == "✓ Allocated 10.24 MiB"
    a = field(r, "Block ID")
    assert field(r, "Node") in {"node1", "node2", "node3"}

    r = ok(grid(cfg, "allocate", "10485760", "--node", "node2"))  # bytes
    assert r.out.splitlines() == ["✓ Allocated 10.00 MiB", f"Block ID: {field(r, 'Block ID')}",
                                  "Node: node2"]
    b = field(r, "Block ID")

    r = ok(grid(cfg, "allocate", "-s", "1MiB", "-n", "node3", "--lazy"))
    assert r.out.splitlines()[0] == "✓ Allocated 1.00 MiB" and field(r, "Node") == "node3"
    c = field(r, "Block ID")

    doc = json.loads(ok(grid(cfg, "allocate", "3KiB", "--json")).out)
    assert doc["size"] == 3072 and doc["node"] in {"node1", "node2", "node3"}
    d = doc["block_id"]

    table = ok(grid(cfg, "list-blocks")).out
    assert "Allocated Memory Blocks" in table
    for header in ("Block ID", "Node", "Size", "Key", "Created"):
        assert header in table
    for block in (a, b, c, d):
        assert block in table
    assert re.search(rf"{b}\s+│ node2\s+│\s+10.00 MiB │ -\s+│ \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d", table), table

    rows = {x["block_id"]: x for x in json.loads(ok(grid(cfg, "list-blocks", "--json")).out)["blocks"]}
    assert rows[a]["size"] == 10737418 and rows[b] == {**rows[b], "node": "node2", "size": 10 * MiB}
    assert rows[c]["lazy"] is True and rows[d]["size"] == 3072 and rows[d]["keys"] == []

    for block in (a, b, c):
        assert ok(grid(cfg, "deallocate", block)).out.strip() == f"✓ Deallocated block: {block}"
    assert json.loads(ok(grid(cfg, "deallocate", d, "--json")).out) == {
        "block_id": d, "deallocated": True}
    left = {x["block_id"] for x in json.loads(ok(grid(cfg, "list-blocks", "--json")).out)["blocks"]}
    assert not left & {a, b, c, d}


def test_stats_table_and_json(mesh):
    cfg = mesh.config_path
    block = field(ok(grid(cfg, "allocate", "2MiB", "-n", "node3")), "Block ID")
    try:
        r = ok(grid(cfg, "stats"))
        lines = r.out.splitlines()
        assert lines[0] == "Distributed Memory Pool Statistics"
        assert re.fullmatch(r"Total Blocks: [1-9]\d*", lines[1]), lines[1]
        assert "Node Memory Usage" in r.out
        for header in ("Node", "State", "Blocks", "Used", "Capacity", "Host free"):
            assert header in r.out
        assert re.search(r"│ node3 │ alive │\s+\d+ │\s+[\d.]+ MiB │\s+1.00 GiB │", r.out), r.out

        doc = json.loads(ok(grid(cfg, "stats", "--json")).out)
        nodes = {n["node"]: n for n in doc["nodes"]}
        assert set(nodes) == {"node1", "node2", "node3"}
        assert all(n["state"] == "alive" and n["capacity"] == 1024**3 for n in nodes.values())
        assert nodes["node3"]["blocks"] >= 1 and nodes["node3"]["used"] >= 2 * MiB
        assert doc["total_blocks"] >= 1 and doc["live_nodes"] == 3
    finally:
        ok(grid(cfg, "deallocate", block))


# --- named objects --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5_000_003])
def test_store_and_retrieve_files_byte_for_byte(mesh, tmp_path, size):
    cfg = mesh.config_path
    src, back = tmp_path / "in.bin", tmp_path / "out.bin"
    write_random(src, size)
    key = f"file-{size}"
    r = ok(grid(cfg, "store", key, str(src)))
    want = {0: "0 B", 1: "1 B", 5_000_003: "4.77 MiB"}[size]
    assert r.out.splitlines()[0] == f"✓ Stored {want} as key: {key}"
    field(r, "Block ID"), field(r, "Node")
    assert r.err == ""
    try:
        # another process finds it through the agents alone
        objects = json.loads(ok(grid(cfg, "list-objects", "--json")).out)["objects"]
        mine = next(o for o in objects if o["key"] == key)
        assert mine["length"] == size and mine["content_type"] == "file"
        r = ok(grid(cfg, "retrieve", key, "-o", str(back)))
        assert r.out.strip() == f"✓ Retrieved {want} to {back}"
        assert filecmp.cmp(src, back, shallow=False)
    finally:
        ok(grid(cfg, "delete", key))


@pytest.mark.slow
def test_300_mib_file_round_trip(mesh, tmp_path):
    cfg = mesh.config_path
    src, back = tmp_path / "big.bin", tmp_path / "big.out"
    digest = write_random(src, 300 * MiB)
    r = ok(grid(cfg, "store", "big", str(src), "--json", timeout=120))
    assert json.loads(r.out)["length"] == 300 * MiB
    assert r.err == ""  # no progress bar when stderr is not a terminal
    try:
        r = ok(grid(cfg, "retrieve", "big", "--output", str(back), timeout=120))
        assert r.err == ""
        assert back.stat().st_size == 300 * MiB and sha256_of(back) == digest
    finally:
        src.unlink()
        back.unlink(missing_ok=True)
        ok(grid(cfg, "delete", "big"))


def test_store_into_a_block_at_an_offset_and_retrieve_ranges(mesh, tmp_path):
    cfg = mesh.config_path
    block = field(ok(grid(cfg, "allocate", "1MiB", "-n", "node1")), "Block ID")
    one, two = os.urandom(1000), os.urandom(20_000)
    (tmp_path / "one").write_bytes(one)
    (tmp_path / "two").write_bytes(two)
    try:
        r = ok(grid(cfg, "store", "part1", str(tmp_path / "one"), "--block-id", block))
        assert field(r, "Block ID") == block and field(r, "Node") == "node1"
        r = ok(grid(cfg, "store", "part2", str(tmp_path / "two"), "--block-id", block,
                    "--offset", "4KiB"))
        assert r.out.startswith("✓ Stored 19.53 KiB as key: part2")

        rows = json.loads(ok(grid(cfg, "list-blocks", "--json")).out)["blocks"]
        assert sorted(next(x for x in rows if x["block_id"] == block)["keys"]) == ["part1", "part2"]
        assert "part1, part2" in ok(grid(cfg, "list-blocks")).out

        # a key, whole and in part (offsets relative to the object)
        ok(grid(cfg, "retrieve", "part2", "-o", str(tmp_path / "whole")))
        assert (tmp_path / "whole").read_bytes() == two
        ok(grid(cfg, "retrieve", "part2", "--offset", "10", "--size", "100", "-o",
                str(tmp_path / "piece")))
        assert (tmp_path / "piece").read_bytes() == two[10:110]
        # the block, raw (offsets relative to the block)
        ok(grid(cfg, "retrieve", block, "--offset", "4096", "--size", "20000", "-o",
                str(tmp_path / "raw")))
        assert (tmp_path / "raw").read_bytes() == two
        r = ok(grid(cfg, "retrieve", block, "--size", "1000", "-o", "-"))
        assert r.raw == one and r.err == ""
        r = ok(grid(cfg, "retrieve", block, "-o", str(tmp_path / "all")))
        assert (tmp_path / "all").stat().st_size == MiB and r.out.startswith("✓ Retrieved 1.00 MiB")

        # the keys did not own the block: deleting them leaves it
        ok(grid(cfg, "delete", "part1"))
        ok(grid(cfg, "delete", "part2"))
        assert block in ok(grid(cfg, "list-blocks")).out
    finally:
        ok(grid(cfg, "deallocate", block))


def test_stdin_store_and_stdout_retrieve(mesh, tmp_path):
    cfg = mesh.config_path
    data = os.urandom(3_000_001)
    r = ok(grid(cfg, "store", "piped", "-", stdin=data))
    assert r.out.startswith("✓ Stored 2.86 MiB as key: piped")
    try:
        r = ok(grid(cfg, "retrieve", "piped", "-o", "-"))
        assert r.raw == data and r.err == ""
    finally:
        ok(grid(cfg, "delete", "piped"))


@pytest.mark.slow
def test_a_pipe_larger_than_the_spool_threshold(mesh, tmp_path):
    """Standard input of unknown size over 64 MiB (a real pipe, not a redirected file)."""
    cfg = mesh.config_path
    src = tmp_path / "pipe.bin"
    digest = write_random(src, 80 * MiB + 7)
    p = subprocess.run(
        f"cat {src} | {GRID} memory store pipe80 - -c {cfg}", shell=True, capture_output=True,
        env=_env(), timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode().startswith("✓ Stored 80.00 MiB as key: pipe80")
    try:
        back = tmp_path / "pipe.out"
        with open(back, "wb") as f:
            p = subprocess.run([str(GRID), "memory", "retrieve", "pipe80", "-o", "-", "-c", str(cfg)],
                               stdout=f, stderr=subprocess.PIPE, env=_env(), timeout=120)
        assert p.returncode == 0 and p.stderr == b""
        assert sha256_of(back) == digest
    finally:
        ok(grid(cfg, "delete", "pipe80"))


def test_preview_of_text_binary_and_blocks(mesh, tmp_path):
    cfg = mesh.config_path
    (tmp_path / "hello.txt").write_text("hello, mesh\nsecond line [bold]not markup[/bold]\n")
    (tmp_path / "long.txt").write_text("é" * 2500)  # 5000 bytes, cut mid-character at 1 KiB
    (tmp_path / "bin").write_bytes(bytes(range(256)) * 4)
    for key, name in (("hello", "hello.txt"), ("long", "long.txt"), ("bin", "bin")):
        ok(grid(cfg, "store", key, str(tmp_path / name)))
    block = field(ok(grid(cfg, "allocate", "4KiB")), "Block ID")
    try:
        r = ok(grid(cfg, "retrieve", "hello"))
        lines = r.out.splitlines()
        assert lines[:2] == ["hello, mesh", "second line [bold]not markup[/bold]"]
        assert "48 bytes in all;" in lines[2] and "use --output FILE for everything" in lines[2]

        r = ok(grid(cfg, "retrieve", "long"))
        assert r.out.splitlines()[0] == "é" * 512
        assert "5,000 bytes in all" in r.out and "showing the first 1,024" in r.out

        r = ok(grid(cfg, "retrieve", "bin"))
        assert r.out.splitlines()[0].startswith("00000000  00 01 02 03 04 05 06 07 08 09")
        assert len([x for x in r.out.splitlines() if re.match(r"[0-9a-f]{8}  ", x)]) == 16
        assert "1,024 bytes in all (1.00 KiB), showing the first 256" in r.out
        assert "use --output FILE for everything" in r.out

        r = ok(grid(cfg, "retrieve", block))  # a fresh block: zeros
        assert r.out.startswith("00000000  00 00") and "4,096 bytes in all" in r.out

        doc = json.loads(ok(grid(cfg, "retrieve", "hello", "--json")).out)
        assert doc["text"].startswith("hello, mesh") and doc["size"] == 48
    finally:
        for key in ("hello", "long", "bin"):
            ok(grid(cfg, "delete", key))
        ok(grid(cfg, "deallocate", block))


def test_list_objects_delete_and_replace(mesh, tmp_path):
    cfg = mesh.config_path
    (tmp_path / "a").write_bytes(b"a" * 100)
    (tmp_path / "b").write_bytes(b"b" * 200)
    ok(grid(cfg, "store", "obj-a", str(tmp_path / "a"), "-n", "node2"))
    ok(grid(cfg, "store", "obj-b", str(tmp_path / "b")))
    r = ok(grid(cfg, "list-objects"))
    assert "Stored Objects" in r.out
    for header in ("Key", "Block", "Size", "Node", "Type", "Created"):
        assert header in r.out
    assert re.search(r"│ obj-a\s+│ block_\S+\s+│\s+100 B │ node2\s+│ file\s+│ \d{4}-", r.out), r.out

    one_error(grid(cfg, "store", "obj-a", str(tmp_path / "b")), "obj-a", "--replace")  # exists
    r = ok(grid(cfg, "store", "obj-a", str(tmp_path / "b"), "--replace"))
    assert r.out.startswith("✓ Stored 200 B as key: obj-a")

    assert ok(grid(cfg, "delete", "obj-a")).out.strip() == "✓ Deleted key: obj-a"
    assert json.loads(ok(grid(cfg, "delete", "obj-b", "--json")).out) == {
        "key": "obj-b", "deleted": True}
    keys = {o["key"] for o in json.loads(ok(grid(cfg, "list-objects", "--json")).out)["objects"]}
    assert not keys & {"obj-a", "obj-b"}
    one_error(grid(cfg, "retrieve", "obj-a"), "grid memory list-objects")


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (["deallocate", "block_7_node2_zzzz"], ["block_7_node2_zzzz", "grid memory list-blocks"]),
        (["retrieve", "block_7_node2_zzzz"], ["block_7_node2_zzzz", "grid memory list-blocks"]),
        (["retrieve", "no-such-key", "-o", "x.out"], ["no-such-key", "grid memory list-objects"]),
        (["delete", "no-such-key"], ["Key not found", "grid memory list-objects"]),
        (["allocate", "-s", "2"], ["No available nodes for memory allocation", "grid memory stats"]),
        (["allocate", "--size", "lots"], ["invalid size 'lots'"]),
        (["allocate", "-s", "-1"], ["invalid size '-1'", "negative"]),
        (["allocate", "0"], ["size"]),
        (["allocate"], ["give the size once"]),
        (["allocate", "5", "--size", "5"], ["give the size once"]),
        (["allocate", "1MiB", "-n", "nope"], ["unknown node 'nope'"]),
        (["store", "k", "missing.bin"], ["missing.bin: no such file"]),
        (["store", "k", "."], ["is a directory"]),
        (["store", "k", "-", "--offset", "5"], ["--offset needs --block-id"]),
        (["store", "k", "-", "--block-id", "block_7_node2_zzzz"], ["grid memory list-blocks"]),
        (["retrieve", "k", "--size", "lots"], ["invalid size 'lots'"]),
        (["retrieve", "k", "-o", "-", "--json"], ["pick one"]),
    ],
)
def test_user_errors_are_one_line(mesh, args, needles):
    one_error(grid(mesh.config_path, *args, stdin=b"x"), *needles)


def test_ranges_past_the_end_and_unwritable_outputs(mesh, tmp_path):
    cfg = mesh.config_path
    (tmp_path / "f").write_bytes(b"z" * 10)
    ok(grid(cfg, "store", "ten", str(tmp_path / "f")))
    try:
        one_error(grid(cfg, "retrieve", "ten", "--offset", "5", "--size", "6", "-o", "-"),
                  "past the end", "10 bytes")
        run = grid(cfg, "retrieve", "ten", "-o", str(tmp_path / "no" / "dir" / "x"))
        one_error(run, "No such file or directory", str(tmp_path / "no" / "dir" / "x"))
        assert ".part" not in run.err  # the user's path, not the hidden temporary one
        one_error(grid(cfg, "retrieve", "ten", "-o", str(tmp_path)), "is a directory")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no partial files left
    finally:
        ok(grid(cfg, "delete", "ten"))


def test_unreachable_agents(tmp_path):
    nodes = [{"name": f"gone{i}", "host": f"127.0.0.{i}", "memory_gb": 1,
              "mesh_port": free_port_pair(f"127.0.0.{i}")} for i in (1, 2)]
    cfg = tmp_path / "gone.yaml"
    cfg.write_text(yaml.safe_dump({"name": "gone", "nodes": nodes,
                                   "mesh": {"connect_timeout_s": 0.5}}))
    (tmp_path / "f").write_bytes(b"data")
    for args in (["stats"], ["allocate", "-s", "1"], ["store", "k", str(tmp_path / "f")],
                 ["retrieve", "k"], ["deallocate", "block_0_gone1_abc"]):
        one_error(grid(cfg, *args, timeout=30), "no mesh agent answered", "grid agents start")


# --- the progress bar ---------------------------------------------------------------------------


def test_progress_bar_only_on_a_terminal(mesh, tmp_path):
    cfg = mesh.config_path
    src = tmp_path / "40m"
    write_random(src, 40 * MiB)
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        p = subprocess.run([str(GRID), "memory", "store", "bar", str(src), "-c", str(cfg)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                           # a real terminal type: with TERM=dumb (as in CI) rich draws no bar
                           env={**_env(), "TERM": "xterm-256color"}, timeout=60)
    finally:
        os.close(slave)
    try:
        assert p.returncode == 0
        assert p.stdout.decode().startswith("✓ Stored 40.00 MiB as key: bar")
        reader.join(timeout=5)
        os.close(master)
        shown = b"".join(chunks).decode("utf-8", errors="replace")
        assert "store bar" in shown and "MiB" in shown, shown
        # stderr to a pipe: no bar
        r = ok(grid(cfg, "retrieve", "bar", "-o", str(tmp_path / "back")))
        assert r.err == ""
        assert filecmp.cmp(src, tmp_path / "back", shallow=False)
    finally:
        ok(grid(cfg, "delete", "bar"))


# --- pure helpers -------------------------------------------------------------------------------


def test_sizes_print_in_binary_units_as_every_command_does():
    from mesh.cli.memory import human
    from mesh.cli.streams import hex_dump as _hex_dump, is_text as _is_text

    assert human(5 * 1024**3) == "5.00 GiB"
    assert human(10 * MiB) == "10.00 MiB"
    assert human(1536) == "1.50 KiB"
    assert human(7) == "7 B"
    assert _is_text(b"caf\xc3", truncated=True) == "caf"
    assert _is_text(b"caf\xc3", truncated=False) is None
    assert _is_text(b"\x00\x01", truncated=False) is None
    assert _hex_dump(b"AB\x00") == "00000000  41 42 00" + " " * 39 + "  |AB.|"


def test_store_with_a_ttl_compressed_and_evictable_then_expire_and_retrieve(mesh, tmp_path):
    src = tmp_path / "log.txt"
    src.write_bytes(b"line of a log that repeats itself\n" * 3000)
    cfg = mesh.config_path
    doc = json.loads(ok(grid(cfg, "store", "cli-log", str(src), "--ttl", "10m", "--compress",
                             "zstd", "--evictable", "--json")).out)
    assert doc["compression"] == "zstd" and doc["raw_length"] == src.stat().st_size
    assert doc["length"] < doc["raw_length"] // 20 and doc["evictable"] is True
    assert 590 < doc["ttl_s"] <= 600
    # a preview, a range and the whole file: the bytes as stored, never the compressed frame
    assert ok(grid(cfg, "retrieve", "cli-log")).out.startswith("line of a log that repeats")
    assert ok(grid(cfg, "retrieve", "cli-log", "--offset", "5", "--size", "9", "-o", "-")
              ).raw == b"of a log "
    ok(grid(cfg, "retrieve", "cli-log", "-o", str(tmp_path / "back.txt")))
    assert (tmp_path / "back.txt").read_bytes() == src.read_bytes()
    listed = ok(grid(cfg, "list-objects")).out
    assert "zstd" in listed and "(evictable)" in listed and re.search(r"\b9m \d+s\b", listed)
    assert "expires at" in ok(grid(cfg, "expire", "cli-log", "1h")).err + \
        ok(grid(cfg, "expire", "cli-log", "1h")).out
    assert json.loads(ok(grid(cfg, "expire", "cli-log", "never", "--json")).out)["ttl_s"] is None
    one_error(grid(cfg, "expire", "cli-log", "soon"), "DURATION 'soon'")
    one_error(grid(cfg, "expire", "cli-nobody", "1h"), "Key not found")
    one_error(grid(cfg, "store", "cli-empty", "/dev/null", "--ttl", "1h"), "empty object")
    ok(grid(cfg, "delete", "cli-log"))
