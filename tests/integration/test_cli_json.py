"""`--json` on every `grid` command that prints, the one JSON error line, the exit codes, and one
way of printing a size, through the real `grid` executable against real agents.

Every command that prints has `--json`; its stdout then parses as JSON with the fields scripts
read. With `--json` anywhere on the command line an error is one line on stderr,
`{"error": {"type", "message", "node"}}`, with the exit code of text mode. The exit codes are
the table of docs/memory-cli.md ("Exit codes"); `test_every_documented_exit_code_is_produced`
keeps that table and these tests together. Rebalance and drain run without Ray (`--no-ray`,
`--dry-run`), as in tests/integration/test_cli_rebalance.py.
"""

from __future__ import annotations

import fcntl
import json
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from support.cli import cli_env
from support.mesh import LocalMesh, cluster_file, running_mesh

from mesh.units import format_bytes

GRID = Path(sys.executable).parent / "grid"
ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("json-cli")) as m:
        yield m


def grid(*args: str, config: Path | str | None, cwd: Path, env: dict | None = None,
         timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    """``grid ARGS [-c CONFIG]`` as a user runs it (the test's own state directory)."""
    env = env if env is not None else cli_env(cwd)
    cmd = [str(GRID), *args] + ([] if config is None else ["-c", str(config)])
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def doc_of(run: subprocess.CompletedProcess) -> Any:
    """The JSON document of a run that succeeded (nothing on stderr)."""
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert run.stderr == "", run.stderr
    return json.loads(run.stdout)


def json_error(run: subprocess.CompletedProcess, code: int, error_type: str, *needles: str,
               node: Any = None) -> dict:
    """Exit ``code``; stderr is exactly one line, one JSON object naming the error."""
    assert run.returncode == code, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    error = json.loads(lines[0])["error"]
    assert set(error) == {"type", "message", "node"}, error
    assert error["type"] == error_type, error
    for needle in needles:
        assert needle in error["message"], error
    assert error["node"] == node, error
    return error


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of the one rich table in ``text``, as {column header: cell}."""
    header = next(line for line in text.splitlines() if line.startswith("┃"))
    names = [c.strip() for c in header.strip("┃").split("┃")]
    return [dict(zip(names, (c.strip() for c in line.strip("│").split("│"))))
            for line in text.splitlines() if line.startswith("│")]


# --- every command that prints ------------------------------------------------------------------


def test_memory_commands_print_json(mesh, tmp_path):
    cfg = mesh.config_path
    alloc = doc_of(grid("memory", "allocate", "1MiB", "-n", "node2", "--json", config=cfg,
                        cwd=tmp_path))
    block = alloc["block_id"]
    assert (alloc["node"], alloc["nodes"], alloc["size"]) == ("node2", ["node2"], MiB)
    blocks = doc_of(grid("memory", "list-blocks", "--json", config=cfg, cwd=tmp_path))
    assert {b["block_id"]: b["size"] for b in blocks["blocks"]}[block] == MiB
    assert blocks["failed_nodes"] == {}
    stats = doc_of(grid("memory", "stats", "--json", config=cfg, cwd=tmp_path))
    assert stats["live_nodes"] == 3 and {n["node"] for n in stats["nodes"]} >= {"node2"}

    (tmp_path / "notes.txt").write_text("hello json\n")
    stored = doc_of(grid("memory", "store", "jnotes", "notes.txt", "--json", config=cfg,
                         cwd=tmp_path))
    assert (stored["key"], stored["length"]) == ("jnotes", 11)
    preview = doc_of(grid("memory", "retrieve", "jnotes", "--json", config=cfg, cwd=tmp_path))
    assert (preview["key"], preview["size"], preview["text"]) == ("jnotes", 11, "hello json\n")
    back = doc_of(grid("memory", "retrieve", "jnotes", "-o", "back.txt", "--json", config=cfg,
                       cwd=tmp_path))
    assert back["output"] == "back.txt" and (tmp_path / "back.txt").read_text() == "hello json\n"
    objects = doc_of(grid("memory", "list-objects", "--json", config=cfg, cwd=tmp_path))
    assert "jnotes" in {o["key"] for o in objects["objects"]}
    assert doc_of(grid("memory", "delete", "jnotes", "--json", config=cfg, cwd=tmp_path)) == {
        "key": "jnotes", "deleted": True}
    assert doc_of(grid("memory", "deallocate", block, "--json", config=cfg, cwd=tmp_path)) == {
        "block_id": block, "deallocated": True}


def write_config(tmp_path: Path, n: int, extra_nodes: list | None = None) -> Path:
    return cluster_file(tmp_path, n, "json-cli", extra_nodes)


def test_agents_start_restart_stop_and_status_print_json(tmp_path):
    cfg = write_config(tmp_path, 2)
    try:
        start = doc_of(grid("agents", "start", "--json", config=cfg, cwd=tmp_path))
        assert start["action"] == "start" and start["ok"] is True
        assert start["state_dir"] == str(tmp_path / "state")
        assert [(r["node"], r["ok"]) for r in start["nodes"]] == [("n1", True), ("n2", True)]
        pids = {r["node"]: r["pid"] for r in start["nodes"]}
        assert all(isinstance(pid, int) and pid > 0 for pid in pids.values()), start

        again = doc_of(grid("agents", "restart", "--node", "n2", "--json", config=cfg,
                            cwd=tmp_path))
        assert [(r["node"], r["ok"]) for r in again["stopped"]] == [("n2", True)]
        assert [(r["node"], r["ok"]) for r in again["nodes"]] == [("n2", True)]
        assert again["nodes"][0]["pid"] not in (None, pids["n2"])

        status = doc_of(grid("agents", "status", "--json", config=cfg, cwd=tmp_path))
        assert {r["node"] for r in status["nodes"]} == {"n1", "n2"}
    finally:
        stop = grid("agents", "stop", "--json", config=cfg, cwd=tmp_path)
    stopped = doc_of(stop)
    assert stopped["action"] == "stop" and stopped["ok"] is True
    assert sorted(r["node"] for r in stopped["nodes"]) == ["n1", "n2"]


def test_a_node_that_fails_is_in_the_document_and_the_one_error_line(tmp_path):
    cfg = write_config(tmp_path, 1, extra_nodes=[
        {"name": "far", "host": "far-away.invalid", "memory_gb": 1, "ssh": {"timeout": 2}}])
    try:
        run = grid("agents", "start", "--json", config=cfg, cwd=tmp_path)
        json_error(run, 1, "GridError", "start failed on 1 node(s): far: ", node="far")
        doc = json.loads(run.stdout)
        assert doc["ok"] is False
        assert {r["node"]: r["ok"] for r in doc["nodes"]} == {"n1": True, "far": False}
    finally:
        grid("agents", "stop", "--node", "n1", config=cfg, cwd=tmp_path)
    # deploy has no node to reach over SSH in a local cluster: an error before any output
    run = grid("agents", "deploy", "--node", "n1", "--json", config=cfg, cwd=tmp_path)
    json_error(run, 1, "GridError", "managed over SSH")
    assert run.stdout == ""


def test_demo_prints_json(tmp_path):
    cfg = write_config(tmp_path, 2)
    doc = doc_of(grid("demo", "--size", "1MiB", "--json", config=cfg, cwd=tmp_path))
    assert doc["agents"] == ["n1", "n2"] and doc["started"] == ["n1", "n2"]
    assert doc["stopped"] == ["n1", "n2"] and doc["size"] == MiB
    assert sorted(r["node"] for r in doc["nodes"]) == ["n1", "n2"]
    assert all(r["match"] and r["write_gbps"] > 0 and r["read_gbps"] > 0 for r in doc["nodes"])
    assert {r["node"]: r["state"] for r in doc["status"]} == {"n1": "alive", "n2": "alive"}


def test_keys_commands_print_json(tmp_path):
    cfg = write_config(tmp_path, 2)
    keys = tmp_path / "state" / "keys"
    init = doc_of(grid("keys", "init", "--json", config=cfg, cwd=tmp_path))
    assert init == {"keys_dir": str(keys), "made": ["agent n1", "agent n2", "client admin"]}
    assert doc_of(grid("keys", "init", "--json", config=cfg, cwd=tmp_path))["made"] == []
    added = doc_of(grid("keys", "add", "ro", "--role", "reader", "--json", config=cfg,
                        cwd=tmp_path))
    assert (added["name"], added["role"]) == ("ro", "reader")
    assert added["secret_file"] == str(keys / "clients" / "ro.key_secret")
    assert added["told"] == [] and set(added["not_told"]) == {"n1", "n2"}  # no agent runs
    listed = doc_of(grid("keys", "list", "--json", config=cfg, cwd=tmp_path))
    assert {(k["name"], k["status"]) for k in listed} >= {("ro", "active"), ("admin", "active")}
    revoked = doc_of(grid("keys", "revoke", "ro", "--json", config=cfg, cwd=tmp_path))
    assert (revoked["name"], revoked["revoked"], revoked["told"]) == ("ro", True, [])
    json_error(grid("keys", "revoke", "ro", "--json", config=cfg, cwd=tmp_path), 1,
               "ConfigError", "'ro' is already revoked")


def _ballast(mesh: LocalMesh, node: str, count: int, size: int = 20 * MiB) -> None:
    with mesh.client() as c:
        for i in range(count):
            c.write(c.allocate(size, node=node), bytes([i + 1]) * size)


def test_rebalance_and_drain_print_json(tmp_path):
    with running_mesh(tmp_path, memory_gb=0.25) as small:
        cfg = small.config_path
        _ballast(small, "node1", 12)  # 240 of 256 MiB: pressure 1.0
        dry = doc_of(grid("rebalance", "--dry-run", "--json", config=cfg, cwd=tmp_path))
        assert dry["dry_run"] is True and dry["moves"] == []
        assert len(dry["planned"]) == 4 and {m["source"] for m in dry["planned"]} == {"node1"}
        assert all(m["size"] == 20 * MiB for m in dry["planned"])
        assert dry["pressure"]["node1"]["before"] > dry["pressure"]["node1"]["after"]

        done = doc_of(grid("rebalance", "--no-ray", "--json", config=cfg, cwd=tmp_path))
        assert done["dry_run"] is False and done["planned"] == []
        assert len(done["moves"]) == 4 and all(m["ok"] and m["error"] is None
                                               for m in done["moves"])
        assert done["master"] is not None and "pressure" in done["master"]

        with small.client() as c:
            on_node2 = [b.block_id for b in c.blocks() if b.node == "node2"]
        assert on_node2
        drained = doc_of(grid("agents", "drain", "node2", "--no-ray", "--json", config=cfg,
                              cwd=tmp_path))
        assert drained["node"] == "node2" and drained["moved"] == len(on_node2)
        assert sorted(m["block"] for m in drained["moves"]) == sorted(on_node2)

        watch = grid("rebalance", "--watch", "--passes", "2", "--interval", "0.2", "--no-ray",
                     "--json", config=cfg, cwd=tmp_path)
        assert watch.returncode == 0 and watch.stderr == "", watch.stderr
        passes = [json.loads(line) for line in watch.stdout.splitlines()]
        assert [p["pass"] for p in passes] == [1, 2] and all("pressure" in p for p in passes)

        json_error(grid("agents", "drain", "nope", "--no-ray", "--json", config=cfg,
                        cwd=tmp_path), 1, "MeshError", "unknown node 'nope'", node="nope")


# --- one size convention ------------------------------------------------------------------------


def test_a_size_reads_the_same_in_every_command(mesh, tmp_path):
    cfg = mesh.config_path
    block = doc_of(grid("memory", "allocate", "512MiB", "-n", "node1", "--json", config=cfg,
                        cwd=tmp_path))["block_id"]
    try:
        deadline = time.monotonic() + 20
        while True:  # heartbeats carry "used" about every 0.5 s; stats ask the agent itself
            status = doc_of(grid("agents", "status", "--json", config=cfg, cwd=tmp_path))
            stats = doc_of(grid("memory", "stats", "--json", config=cfg, cwd=tmp_path))
            heard = {r["node"]: r for r in status["nodes"]}["node1"]
            asked = {r["node"]: r for r in stats["nodes"]}["node1"]
            if heard["used"] == asked["used"] >= 512 * MiB:
                break
            assert time.monotonic() < deadline, (heard, asked)
            time.sleep(0.5)
        agents_row = {r["Node"]: r for r in table_rows(
            grid("agents", "status", config=cfg, cwd=tmp_path).stdout)}["node1"]
        stats_row = {r["Node"]: r for r in table_rows(
            grid("memory", "stats", config=cfg, cwd=tmp_path).stdout)}["node1"]
        blocks_row = {r["Block ID"]: r for r in table_rows(
            grid("memory", "list-blocks", config=cfg, cwd=tmp_path).stdout)}[block]
    finally:
        doc_of(grid("memory", "deallocate", block, "--json", config=cfg, cwd=tmp_path))
    assert blocks_row["Size"] == "512.00 MiB"
    used, capacity = format_bytes(asked["used"]), format_bytes(asked["capacity"])
    assert agents_row["Used"] == stats_row["Used"] == used and used.endswith("MiB")
    assert agents_row["Capacity"] == stats_row["Capacity"] == capacity == "1.00 GiB"


# --- errors and exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(("args", "code", "error_type", "needle", "node"), [
    (("memory", "deallocate", "block_0_node1_nothere"), 1, "BlockNotFound",
     "block_0_node1_nothere", None),
    (("memory", "retrieve", "no-such-key"), 1, "GridError", "'no-such-key'", None),
    (("memory", "allocate", "lots"), 1, "InvalidSize", "invalid size 'lots'", None),
    (("memory", "allocate", "1MiB", "--replicas", "0"), 1, "GridError", "--replicas '0'", None),
    (("memory", "store", "k", "missing.bin"), 1, "GridError", "missing.bin: no such file", None),
    (("resource-sharing", "request", "-n", "nope", "-t", "memory", "-a", "1"), 1, "GridError",
     "unknown node 'nope'", "nope"),
    (("memory", "allocat"), 2, "usage", "No such command 'allocat'", None),
    (("memory", "stats", "--bogus"), 2, "usage", "No such option '--bogus'", None),
    (("memory", "deallocate"), 2, "usage", "Missing argument 'BLOCK_ID'", None),
])
def test_errors_in_json_mode_are_one_json_line(mesh, tmp_path, args, code, error_type, needle,
                                               node):
    run = grid(*args, "--json", config=mesh.config_path, cwd=tmp_path)
    error = json_error(run, code, error_type, needle, node=node)
    assert run.stdout == ""
    text = grid(*args, config=mesh.config_path, cwd=tmp_path)  # the same error, as text
    assert text.returncode == code and "Traceback" not in text.stderr
    assert not text.stderr.lstrip().startswith("{") and error["message"] in text.stderr


def test_an_unknown_node_is_an_error_in_json(mesh, tmp_path):
    run = grid("memory", "allocate", "1MiB", "-n", "nope", "--json", config=mesh.config_path,
               cwd=tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    error = json.loads(run.stderr)["error"]
    assert len(run.stderr.splitlines()) == 1 and "unknown node 'nope'" in error["message"]
    assert error["node"] == "nope"


def test_a_listing_that_misses_a_node_prints_its_document_then_the_error(tmp_path):
    with running_mesh(tmp_path, n=2) as two:
        two.kill("node2")
        run = grid("memory", "list-blocks", "--json", config=two.config_path, cwd=tmp_path)
    # node2 is still alive in the membership view for seconds after the kill, and does not answer
    json_error(run, 1, "GridError", "listing incomplete", node="node2")
    assert "node2" in json.loads(run.stdout)["failed_nodes"]


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe of ``fd`` (either end)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _interrupted(mesh: LocalMesh, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``grid memory store K -`` reading a pipe that stays open, interrupted (Ctrl-C) once it
    has taken the first bytes: it is inside the command by then."""
    proc = subprocess.Popen([str(GRID), "memory", "store", "ctrl-c", "-", *extra, "-c",
                             str(mesh.config_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(tmp_path), cwd=tmp_path)
    try:
        assert proc.stdin is not None
        proc.stdin.write("x" * 100)
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while _unread(proc.stdin.fileno()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_exits_130(mesh, tmp_path):
    run = _interrupted(mesh, tmp_path, "--json")
    json_error(run, 130, "KeyboardInterrupt", "aborted")
    assert run.stdout == ""
    text = _interrupted(mesh, tmp_path)
    assert text.returncode == 130 and text.stderr.strip() == "aborted", text.stderr
    with mesh.client() as c:
        assert "ctrl-c" not in {i.key for i in c.keys()}


def test_a_reader_that_went_away_exits_141(mesh, tmp_path):
    proc = subprocess.Popen([str(GRID), "memory", "stats", "--json", "-c",
                             str(mesh.config_path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path),
                            cwd=tmp_path)
    assert proc.stdout is not None
    proc.stdout.close()  # long before grid has started: its first write finds no reader
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 141 and err == b"", err


def documented_exit_codes() -> dict[int, str]:
    """The table under "## Exit codes" in docs/memory-cli.md: {code: meaning}."""
    text = (ROOT / "docs" / "memory-cli.md").read_text()
    section = text.split("\n## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2].strip() for m in re.finditer(r"^\| (\d+) \| ([^|]+)\|", section, re.M)}


# Each documented code and the test of this module that produces it.
PRODUCED_BY = {
    0: test_memory_commands_print_json,
    1: test_errors_in_json_mode_are_one_json_line,
    2: test_errors_in_json_mode_are_one_json_line,
    130: test_ctrl_c_exits_130,
    141: test_a_reader_that_went_away_exits_141,
}


def test_every_documented_exit_code_is_produced():
    assert set(documented_exit_codes()) == set(PRODUCED_BY)
