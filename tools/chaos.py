#!/usr/bin/env python3
"""Chaos: kill -9 and SIGSTOP real agents under load, then read back every acknowledged byte.
A benchmark, not a test: it measures and reports; the exit code says whether anything was lost.

    python tools/chaos.py [--agents 4] [--trials 200] [--replicas 2] [--spread node]
                          [--writers 2] [--faults kill,pause] [--fault-order random|cycle]
                          [--pause-s 2,10] [--restart-s 1,3] [--run-s 1,3]
                          [--restore-timeout-s 20] [--op-timeout-s 2] [--max-seconds 3600]
                          [--seed S] [--keep] [--json]

It starts ``--agents`` agents on 127.0.0.1, .2, ... (``tests/support/mesh.py: LocalMesh``,
random ports, ``--agent-mib`` each; the cluster file says ``mesh.replicas: --replicas`` and
``mesh.replica_spread: --spread``, "node" by default since every agent here shares one
machine), then ``--writers`` writer processes (this file with ``--writer``). Each writer loops
over three kinds of operation and keeps a model of what was ACKNOWLEDGED (the call returned
without error):

- ``write``: a random range (1 B - 64 KiB) of one of its random-access blocks (1 MiB, four at a
  time), made with ``allocate(size, replicas=N, spread=S)``;
- ``append``: the next range (1 - 16 KiB) of a growing log block (1 MiB, made the same way; a
  full one is kept and a new one begun);
- ``put``: ``put_bytes(key, data, replace=True, replicas=N)`` of a small object (64 B - 16 KiB,
  eight keys; its block's spread is the cluster file's).

The model is a bytearray per block with a mask of the bytes whose content is known, and per key
the last acknowledged value. A call that fails may or may not have taken effect (a timeout says
nothing), so its range is masked out (a key keeps the failed value as a second acceptable
one), and the writer RETIRES the block or key: it never writes it again, so no later write can
race the one whose fate is unknown. Retired blocks and keys are still checked; the oldest are
freed beyond a cap. Errors are counted by type, never raised.

A trial: writers run ``--run-s`` seconds; the driver asks them what they hold, lists where every
block's copies are (``blocks()``: ``nodes`` and ``epoch`` of each), chooses a victim among the
agents holding a copy of acknowledged data, and injects ONE fault (``--faults``, chosen at
random, or in turn with ``--fault-order cycle``):

- ``kill``: SIGKILL, then after ``--restart-s`` the agent starts again under the same node name;
- ``pause``: SIGSTOP for ``--pause-s`` seconds, then SIGCONT.

Measured per trial:
- ``detect_s``: from the fault until a client's view (``nodes()``) first shows the victim not
  alive (or with a new incarnation: a quick restart can beat the suspect timeout); None when it
  never did (a short pause);
- ``moved_on_s``: from the fault until a listing (LIST of every agent but the victim, polled
  every 0.05 s from the fault on) first shows a set that held a copy on the victim under a higher epoch: the agents'
  own detection (``dead_after_s``, or the restart's new incarnation). None after a pause too
  short to be moved on from;
- ``restore_s``: from the fault until every block and key acknowledged before it reads again
  AND ``copies_restored`` says every block that matters (the acknowledged blocks, the blocks
  of the acknowledged keys, and every block that had a copy on the victim) has ``--replicas``
  current copies again (``stat().nodes``), the repair included; or until
  ``--restore-timeout-s`` after the fault ended (``restored: false``). The probe starts when
  the fault ends (the restart, the SIGCONT), so ``restore_s >= hold_s``. After a kill, a block
  that had a copy on the victim counts only once its set has moved on (a higher epoch):
  before that its ``nodes`` still name the dead copy;
- ``copies_s``: from the fault until the same listing shows every block the victim held (and
  not freed meanwhile) with ``--replicas`` current copies under a higher epoch: full
  redundancy again, even while the victim is still down; ``repair_bytes`` those blocks'
  sizes (the copies made again), ``repair_s`` from ``moved_on_s`` to ``copies_s`` and
  ``repair_mbps`` their ratio: a LOWER BOUND, since a repair of a few MiB can take less than
  one 0.05 s poll; ``unrepaired_blocks`` those still short at the end;
- ``load_mbps``: acknowledged bytes per second (all writers) from the fault to the restore.

Then the writers pause (each finishes its current call and writes its model to a file), and
the driver reads back every acknowledged byte and key with a fresh client, and again with a
second fresh client: ``lost_bytes`` (acknowledged bytes whose block or key is gone or cannot be
read), ``diverging_reads`` (a read that differs from the model where the model knows the
content, or from the other client's read). What is lost or diverging is counted once, then
dropped from the model. Writers resume; the next trial begins.

With ``--replicas 2`` (the default) neither a kill -9 nor a pause may lose an acknowledged
byte or let two reads disagree (``docs/durability.md``). With ``--replicas 1`` a kill -9 loses
the victim's blocks: the contrast, reported, not hidden.

Output: one line per trial and a summary; with ``--json`` the last line is one JSON object
(``trials``, ``lost_bytes``, ``diverging_reads``, ``restore_s_max``, ``detect_s_max``,
``moved_on_s_max``, ``copies_s_max``, ``repair_mbps_min``/``_mean``/``_overall``,
``repair_bytes``, ``repair_s_max``, ``ops``, ``errors``,
``replicas_supported``, ``faults``, ``seconds`` and more, with every trial).
Exit code: 0 when nothing was lost and no read diverged, 1 when something was, 2 when the
harness itself could not finish a check (a writer died or stopped answering, an agent would not
restart), 130 on Ctrl-C or SIGTERM (the summary of the trials done is still printed).

Everything it starts (agents, writers) is stopped by pid at the end (SIGCONT for a paused one,
SIGTERM, then SIGKILL), also on errors and interrupts. Loopback only. Memory is bounded: each
writer holds at most ~33 MiB of model (16 blocks of 1 MiB with their masks, 48 small keys);
at that cap it makes no new blocks until the next check frees retired ones. ``--keep`` keeps
the agents' logs (``node<i>.log``), the writers' logs and models in the temp dir it names.

Not here: the replication itself (``docs/durability.md``), partitions (network namespaces; see
``tests/integration/test_replicas_partition.py`` once written), and client kills (``soak.py``).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import pickle
import queue
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mesh import protocol as P
from mesh.client import MeshClient
from mesh.client.core import BlockInfo
from mesh.errors import BlockNotFound, MeshError
from mesh.units import format_bytes

KEY_PREFIX = "chaos/"
BLOCK_BYTES = 1 << 20  # a random-access block
LIVE_BLOCKS = 4  # random-access blocks a writer writes at a time
LOG_BYTES = 1 << 20  # a log block
MAX_WRITE_BYTES = 64 << 10
APPEND_BYTES = (1 << 10, 16 << 10)
KEY_BYTES = (64, 16 << 10)
LIVE_KEYS = 8
RETIRED_BLOCKS_KEPT = 6  # beyond these, the oldest retired blocks are freed (after a check)
RETIRED_KEYS_KEPT = 16
# A writer's model never holds more than these (so at most ~2 x 16 MiB with the masks): at the
# cap it stops making blocks (or keys) until the next check lets it free retired ones.
MODEL_BLOCKS_MAX = 16
MODEL_KEYS_MAX = 48
BUCKET_S = 0.1  # resolution of the acknowledged-bytes series (repair throughput)
WRITER_REPLY_S = 60.0  # a writer finishes its current call (a few timeouts at most) and answers
STOP_WAIT_S = 10.0
PROBE_EVERY_S = 0.2
WATCH_EVERY_S = 0.05
REPAIR_EVERY_S = 0.05  # how often RepairWatch lists where the copies are
REPAIR_POLL_TIMEOUT_S = 0.5
KNOWN = 0xFF  # mask byte: the model knows this byte's content
EXAMPLES_KEPT = 5  # per trial: which blocks and keys were lost or diverged, and why


# --- the writer (a separate process) ------------------------------------------------------------


@dataclass
class BlockModel:
    kind: str  # "write" (random ranges) or "append" (a log)
    data: bytearray
    mask: bytearray  # KNOWN where an acknowledged write set the byte; 0 elsewhere
    used: int = 0  # a log's next offset
    retired: bool = False
    seq: int = 0  # order of retirement (oldest freed first)
    failed: str | None = None  # the call that retired it: when (wall clock), what, the error
    made: str | None = None  # when it was allocated, and where its copies were then


@dataclass
class KeyModel:
    acked: bytes | None = None  # the last acknowledged value
    maybe: list[bytes] = field(default_factory=list)  # values of puts that failed (fate unknown)
    retired: bool = False
    seq: int = 0
    failed: str | None = None  # the put that retired it: when (wall clock), what, the error
    acked_where: str | None = None  # when the acknowledged put returned, its block and copies


def _stamp() -> str:
    """The wall clock as the agents' logs print it (to match a report with their lines)."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}"


def _failure(what: str, exc: BaseException) -> str:
    """One failed call, to name in a report."""
    return f"{_stamp()} {what}: {type(exc).__name__}: {str(exc)[:200]}"


def supports_replicas(method: Any) -> bool:
    """Whether a client method takes ``replicas`` (the driver refuses ``--replicas`` above 1
    without it, rather than measure single copies under the name of replicas)."""
    try:
        return "replicas" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class Writer:
    """One writer's operations and model. The loop (``writer_main``) calls ``step`` between
    commands from the driver."""

    def __init__(self, client: MeshClient, wid: str, seed: int, replicas: int,
                 spread: str = "node"):
        self.client = client
        self.wid = wid
        self.rng = random.Random(seed)
        # put_bytes has no spread of its own: the cluster file's mesh.replica_spread is the same
        self.alloc_kw = {"replicas": replicas, "spread": spread}
        self.put_kw = {"replicas": replicas}
        self.blocks: dict[str, BlockModel] = {}
        self.keys: dict[str, KeyModel] = {}
        self.log: str | None = None
        self.next_key = 0
        self.retire_seq = 0
        self.ops: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.acked: collections.Counter[int] = collections.Counter()  # bucket -> bytes
        self.skipped = 0  # operations not tried: the model was at its cap

    # the three operations

    def step(self) -> None:
        kind = self.rng.choices(["write", "append", "put"], weights=[5, 3, 2])[0]
        try:
            # at the model's cap (logs fill up in a long trial) a write to a live block stands in
            if not getattr(self, f"_{kind}")() and (kind == "write" or not self._write()):
                self.skipped += 1  # nothing can be done until the next check frees some
                time.sleep(0.01)
        except Exception as exc:  # noqa: BLE001 - errors are expected during faults: counted
            self._error(exc)

    def _error(self, exc: BaseException) -> None:
        name = type(exc).__name__ if isinstance(exc, MeshError) else f"unexpected:{type(exc).__name__}"
        self.errors[name] += 1

    def _ack(self, kind: str, nbytes: int) -> None:
        self.ops[kind] += 1
        self.acked[int(time.monotonic() / BUCKET_S)] += nbytes

    def _allocate(self, kind: str, size: int) -> str | None:
        if len(self.blocks) >= MODEL_BLOCKS_MAX:
            return None
        block_id = self.client.allocate(size, **self.alloc_kw)
        self.ops["alloc"] += 1
        made = _stamp()
        try:
            made += f" on {list(self.client.stat(block_id).nodes)}"
        except MeshError:
            pass
        self.blocks[block_id] = BlockModel(kind, bytearray(size), bytearray(size), made=made)
        return block_id

    def _retire_block(self, block_id: str) -> None:
        self.retire_seq += 1
        block = self.blocks[block_id]
        block.retired, block.seq = True, self.retire_seq
        if self.log == block_id:
            self.log = None

    def _write_range(self, kind: str, block_id: str, offset: int, data: bytes) -> bool:
        block = self.blocks[block_id]
        end = offset + len(data)
        try:
            self.client.write(block_id, data, offset)
        except Exception as exc:  # noqa: BLE001
            self._error(exc)
            block.failed = _failure(f"{kind} [{offset}, {end})", exc)
            block.mask[offset:end] = bytes(len(data))  # it may or may not have landed
            self._retire_block(block_id)
            return False
        block.data[offset:end] = data
        block.mask[offset:end] = b"\xff" * len(data)
        self._ack(kind, len(data))
        return True

    def _write(self) -> bool:
        live = [b for b, m in self.blocks.items() if m.kind == "write" and not m.retired]
        if len(live) < LIVE_BLOCKS:
            block_id = self._allocate("write", BLOCK_BYTES)
            if block_id is None and not live:
                return False
            if block_id is not None:
                live.append(block_id)
        block_id = self.rng.choice(live)
        n = self.rng.randint(1, MAX_WRITE_BYTES)
        offset = self.rng.randrange(0, BLOCK_BYTES - n + 1)
        self._write_range("write", block_id, offset, self.rng.randbytes(n))
        return True

    def _append(self) -> bool:
        if self.log is None:
            self.log = self._allocate("append", LOG_BYTES)
            if self.log is None:
                return False
        block = self.blocks[self.log]
        n = self.rng.randint(*APPEND_BYTES)
        if block.used + n > len(block.data):  # full: keep it (checked), begin the next
            self._retire_block(self.log)
            return True
        if self._write_range("append", self.log, block.used, self.rng.randbytes(n)):
            block.used += n
        return True

    def _put(self) -> bool:
        live = [k for k, m in self.keys.items() if not m.retired]
        if not live and len(self.keys) >= MODEL_KEYS_MAX:
            return False
        if len(live) < LIVE_KEYS and len(self.keys) < MODEL_KEYS_MAX:
            key = f"{KEY_PREFIX}{self.wid}/{self.next_key}"
            self.next_key += 1
            self.keys[key] = KeyModel()
        else:
            key = self.rng.choice(live)
        data = self.rng.randbytes(self.rng.randint(*KEY_BYTES))
        model = self.keys[key]
        try:
            info = self.client.put_bytes(key, data, replace=True, **self.put_kw)
        except Exception as exc:  # noqa: BLE001
            self._error(exc)
            model.failed = _failure(f"put_bytes replace of {len(data)} B", exc)
            model.maybe.append(data)
            self.retire_seq += 1
            model.retired, model.seq = True, self.retire_seq
            return True
        model.acked, model.maybe = data, []
        model.acked_where = f"{_stamp()} {info.block_id} on {list(info.nodes) or [info.node]}"
        self._ack("put", len(data))
        return True

    # what the driver asks for

    def manifest(self) -> dict:
        """The acknowledged blocks (with at least one known byte) and keys."""
        return {"blocks": [b for b, m in self.blocks.items() if KNOWN in m.mask],
                "keys": [k for k, m in self.keys.items() if m.acked is not None]}

    def dump(self, path: str) -> dict:
        """Write the model to ``path`` and hand back this trial's counters (then reset)."""
        model = {"blocks": {b: {"kind": m.kind, "data": m.data, "mask": m.mask,
                                "failed": m.failed, "made": m.made}
                            for b, m in self.blocks.items()},
                 "keys": {k: {"acked": m.acked, "maybe": m.maybe, "failed": m.failed,
                              "acked_where": m.acked_where} for k, m in self.keys.items()}}
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(model, f, protocol=5)
        os.replace(tmp, path)
        out = {"ops": dict(self.ops), "errors": dict(self.errors),
               "acked": {str(k): v for k, v in self.acked.items()},
               "blocks": len(self.blocks), "keys": len(self.keys), "skipped": self.skipped}
        self.ops, self.errors, self.acked = (collections.Counter(), collections.Counter(),
                                             collections.Counter())
        self.skipped = 0
        return out

    def drop(self, blocks: Iterable[str], keys: Iterable[str]) -> None:
        """Forget what the driver found lost or diverging (counted once), and free the oldest
        retired blocks and keys beyond the caps (they have just been checked)."""
        for b in blocks:
            if self.blocks.pop(b, None) is not None and self.log == b:
                self.log = None
        for k in keys:
            self.keys.pop(k, None)
        retired = sorted((m.seq, b) for b, m in self.blocks.items() if m.retired)
        for _, b in retired[: max(0, len(retired) - RETIRED_BLOCKS_KEPT)]:
            del self.blocks[b]
            try:
                self.client.free(b)
                self.ops["free"] += 1
            except Exception as exc:  # noqa: BLE001
                self._error(exc)
        retired = sorted((m.seq, k) for k, m in self.keys.items() if m.retired)
        for _, k in retired[: max(0, len(retired) - RETIRED_KEYS_KEPT)]:
            del self.keys[k]
            try:
                self.client.delete(k)
                self.ops["delete"] += 1
            except Exception as exc:  # noqa: BLE001
                self._error(exc)


class LineReader:
    """Lines from a file descriptor without blocking longer than asked (select + os.read, so
    nothing waits in a buffer that select cannot see)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def line(self, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf and not self.eof:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def writer_main(config: str, wid: str, seed: int, replicas: int, spread: str,
                op_timeout_s: float) -> int:
    """Commands on stdin, one JSON line each, one JSON reply on stdout each: ``resume`` (with
    what to drop), ``manifest``, ``pause`` (with the model's path), ``stop``. Between commands,
    while running, one operation at a time. Exits when stdin closes (the driver is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when writers stop
    stdin = LineReader(sys.stdin.fileno())

    def reply(doc: dict) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    with MeshClient(config, timeout_s=op_timeout_s) as client:
        w = Writer(client, wid, seed, replicas, spread)
        running = False
        while True:
            raw = stdin.line(0.0 if running else 1.0)
            if raw is None:
                if stdin.eof:
                    return 0
                if running:
                    w.step()
                continue
            cmd = json.loads(raw)
            if cmd["cmd"] == "resume":
                w.drop(cmd.get("blocks", []), cmd.get("keys", []))
                running = True
                reply({"ok": True})
            elif cmd["cmd"] == "manifest":
                reply(w.manifest())
            elif cmd["cmd"] == "pause":
                running = False
                reply(w.dump(cmd["path"]))
            elif cmd["cmd"] == "stop":
                reply({"ok": True})
                return 0


# --- the driver's side of a writer ----------------------------------------------------------------


class HarnessError(Exception):
    """The harness could not do its part (a writer died, an agent would not restart): the run
    stops and says so (exit 2); never a verdict about the mesh."""


class WriterProc:
    def __init__(self, config: Path, wid: str, seed: int, replicas: int, spread: str,
                 op_timeout_s: float, tmp: Path):
        self.wid = wid
        self.model_path = tmp / f"model-{wid}.pkl"
        self.log_path = tmp / f"writer-{wid}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--writer", wid, "--config", str(config),
                 "--writer-seed", str(seed), "--replicas", str(replicas), "--spread", spread,
                 "--op-timeout-s", str(op_timeout_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        self.replies: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.replies.put(json.loads(line))
            except ValueError:
                continue
        self.replies.put(None)  # the pipe closed: the writer is gone

    def ask(self, cmd: dict, timeout_s: float = WRITER_REPLY_S) -> dict:
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
            doc = self.replies.get(timeout=timeout_s)
        except (OSError, queue.Empty):
            doc = None
        if doc is None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise HarnessError(f"writer {self.wid} did not answer {cmd['cmd']!r} "
                               f"(exit {self.proc.poll()}):\n{tail}")
        return doc

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"cmd": "stop"}, timeout_s=STOP_WAIT_S)
            except HarnessError:
                pass
        stop_pid(self.proc)


def stop_pid(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, of one process we started (by its pid, through its Popen)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_WAIT_S)


# --- checks -----------------------------------------------------------------------------------


def copies_short(client: MeshClient, blocks: Iterable[str], replicas: int,
                 before: dict[str, BlockInfo] | None = None, victim: str | None = None,
                 killed: bool = False, gone_ok: Iterable[str] = (),
                 first_only: bool = True) -> tuple[list[tuple[str, str]], dict[str, BlockInfo]]:
    """The blocks of ``blocks`` without ``replicas`` current copies (``stat().nodes``, primary
    first), each with why, and the ``stat`` of every block that answered.

    ``before``: each block's ``stat`` just before the fault; with ``killed``, a block whose set
    then named ``victim`` counts only under a later epoch: until its set moves on, ``nodes``
    still names the dead copy. A block of ``gone_ok`` that is found nowhere is not short (it was
    freed meanwhile: a replaced key's old block). ``first_only``: stop at the first short block
    (a probe asks again anyway; a block that cannot be found costs a timeout)."""
    before = before or {}
    gone_ok = set(gone_ok)
    short: list[tuple[str, str]] = []
    infos: dict[str, BlockInfo] = {}
    for block_id in dict.fromkeys(blocks):
        try:
            info = client.stat(block_id)
        except BlockNotFound as exc:
            if block_id not in gone_ok:
                short.append((block_id, f"BlockNotFound: {exc}"))
        except MeshError as exc:
            short.append((block_id, f"{type(exc).__name__}: {exc}"))
        else:
            infos[block_id] = info
            nodes = set(info.nodes)
            prior = before.get(block_id)
            if len(nodes) < replicas:
                why = f"{len(nodes)} current copies {list(info.nodes)} (epoch {info.epoch})"
                short.append((block_id, f"{why}, {replicas} wanted"))
            elif killed and prior is not None and victim in prior.nodes and \
                    info.epoch <= prior.epoch:
                why = f"its set {list(info.nodes)} (epoch {info.epoch})"
                short.append((block_id, f"{why} still names the killed copy on {victim}"))
        if short and first_only:
            break
    return short, infos


def copies_restored(client: MeshClient, blocks: Iterable[str], replicas: int = 2,
                    before: dict[str, BlockInfo] | None = None, victim: str | None = None,
                    killed: bool = False, gone_ok: Iterable[str] = ()) -> bool:
    """Whether every block of ``blocks`` has ``replicas`` current copies again, as ``stat()``
    reports them (its ``nodes``, primary first: ``docs/durability.md``), none of them a copy
    killed since ``before`` (``copies_short``). False when a block has fewer copies or cannot be
    stat'ed."""
    short, _ = copies_short(client, blocks, replicas, before, victim, killed, gone_ok)
    return not short


def differing_bytes(read: bytes | bytearray, model: bytes | bytearray, mask: bytes | bytearray) -> int:
    """How many bytes of ``read`` differ from ``model`` where ``mask`` is KNOWN (0xFF)."""
    n = len(model)
    if len(read) != n:
        return mask.count(KNOWN)
    x = (int.from_bytes(read, "little") ^ int.from_bytes(model, "little")) \
        & int.from_bytes(mask, "little")
    return n - x.to_bytes(n, "little").count(0) if x else 0


def verify(config: Path, models: dict[str, dict], op_timeout_s: float) -> dict:
    """Read back every acknowledged byte and key of every writer's model, twice, each time with
    a fresh client; what is lost or diverging goes to ``drop`` (per writer) to be counted once."""
    out = {"lost_bytes": 0, "lost_blocks": 0, "lost_keys": 0, "diverging_reads": 0,
           "diverging_bytes": 0, "checked_bytes": 0, "checked_blocks": 0, "checked_keys": 0,
           "examples": [], "drop": {}}

    def example(what: str, name: str, why: str, m: dict) -> None:
        if len(out["examples"]) < EXAMPLES_KEPT:
            out["examples"].append({what: name, "why": why, "writer": wid,
                                    "retired_by": m.get("failed"),
                                    **({"acked": m["acked_where"]} if m.get("acked_where")
                                       else {}),
                                    **({"made": m["made"]} if m.get("made") else {})})
    with MeshClient(config, timeout_s=op_timeout_s) as first, \
            MeshClient(config, timeout_s=op_timeout_s) as second:
        for wid, model in models.items():
            drop = out["drop"][wid] = {"blocks": [], "keys": []}
            for block_id, m in model["blocks"].items():
                known = m["mask"].count(KNOWN)
                out["checked_blocks"] += 1
                out["checked_bytes"] += known
                try:
                    a = first.read(block_id)
                except MeshError as exc:
                    if known:
                        out["lost_bytes"] += known
                        out["lost_blocks"] += 1
                        example("lost_block", block_id, f"{type(exc).__name__}: {exc}", m)
                    drop["blocks"].append(block_id)
                    continue
                try:
                    b = second.read(block_id)
                except MeshError:
                    b = None  # read once, then not: a diverging read of its own kind
                diff = differing_bytes(a, m["data"], m["mask"])
                if diff or b is None or a != b:
                    out["diverging_reads"] += 1
                    example("diverging_block", block_id,
                            f"{diff} bytes differ from the model" if diff else
                            "the second read failed" if b is None else "two reads differ", m)
                    out["diverging_bytes"] += diff or (len(a) if b is None else
                                                       sum(x != y for x, y in zip(a, b)))
                    drop["blocks"].append(block_id)
            for key, m in model["keys"].items():
                acceptable = ([m["acked"]] if m["acked"] is not None else []) + m["maybe"]
                if m["acked"] is not None:
                    out["checked_keys"] += 1
                    out["checked_bytes"] += len(m["acked"])
                try:
                    a = bytes(first.get_bytes(key))
                except MeshError as exc:  # (never acknowledged: its absence is allowed)
                    if m["acked"] is not None:
                        out["lost_bytes"] += len(m["acked"])
                        out["lost_keys"] += 1
                        example("lost_key", key, f"{type(exc).__name__}: {exc}"
                                + (f" (after {len(m['maybe'])} failed puts)" if m["maybe"] else ""),
                                m)
                    drop["keys"].append(key)
                    continue
                try:
                    b = bytes(second.get_bytes(key))
                except MeshError:
                    b = None
                if a not in acceptable or b != a:
                    out["diverging_reads"] += 1
                    example("diverging_key", key,
                            "two reads differ" if a in acceptable else
                            f"{len(a)} bytes, neither the acknowledged value nor a failed put's", m)
                    out["diverging_bytes"] += len(a)
                    drop["keys"].append(key)
    return out


def probe_restored(config: Path, manifest: dict, replicas: int, op_timeout_s: float,
                   deadline: float, before: dict[str, BlockInfo] | None = None,
                   victim: str | None = None,
                   killed: bool = False) -> tuple[float | None, list[str]]:
    """Until every block and key of ``manifest`` reads again and every block that matters has
    its copies back (``copies_short``: the acknowledged blocks, the blocks the acknowledged keys
    name now, and every block of ``before`` with a copy on ``victim``), or ``deadline``: (the
    monotonic time it was so, else None; what was still short at the deadline)."""
    blocks, keys = set(manifest["blocks"]), set(manifest["keys"])
    wanted_keys = set(keys)
    before = before or {}
    held = [b for b, info in before.items() if victim in info.nodes]
    short: list[tuple[str, str]] = []
    with MeshClient(config, timeout_s=op_timeout_s) as client:
        while True:
            for b in list(blocks):
                try:
                    client.read(b)
                    blocks.discard(b)
                except MeshError:
                    pass
            for k in list(keys):
                try:
                    client.get_bytes(k)
                    keys.discard(k)
                except MeshError:
                    pass
            if blocks or keys:
                short = [(b, "does not read") for b in sorted(blocks)] + \
                    [(k, "key does not read") for k in sorted(keys)]
            else:
                try:
                    listing = client.keys()
                except MeshError as exc:
                    listing = None
                    short = [("keys()", f"{type(exc).__name__}: {exc}")]
                if listing is not None:
                    key_blocks = {i.key: i.block_id for i in listing
                                  if i.key in wanted_keys and i.block_id}
                    unlisted = sorted(wanted_keys - set(key_blocks))
                    short = [(k, "key not listed") for k in unlisted[:1]]
                    if not short:
                        check = [*manifest["blocks"], *key_blocks.values(), *held]
                        # a key's block may be replaced (and freed) by the next put any moment;
                        # the victim's other blocks may be freed too; the key itself reads
                        gone_ok = set(check) - set(manifest["blocks"])
                        short, _ = copies_short(client, check, replicas, before, victim,
                                                killed, gone_ok)
                    if not short:
                        return time.monotonic(), []
            if time.monotonic() >= deadline:
                return None, [f"{what}: {why}" for what, why in short[:EXAMPLES_KEPT]]
            time.sleep(PROBE_EVERY_S)


class Watch(threading.Thread):
    """From the fault on, a client's view of the victim: when it first shows it not alive (or
    under a new incarnation: a restart quicker than the suspect timeout)."""

    def __init__(self, config: Path, victim: str, incarnation: int | None, deadline: float):
        super().__init__(daemon=True)
        self.config, self.victim, self.incarnation = config, victim, incarnation
        self.deadline = deadline
        self.stop = threading.Event()
        self.detected_at: float | None = None
        self.seen: str | None = None

    def run(self) -> None:
        with MeshClient(self.config, timeout_s=0.5) as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                try:
                    nodes = client.nodes()
                except MeshError:
                    nodes = None
                now = time.monotonic()
                if nodes is not None:
                    rec = next((n for n in nodes if n.name == self.victim), None)
                    if rec is None or rec.state != "alive" or rec.incarnation != self.incarnation:
                        self.detected_at = now
                        self.seen = ("gone" if rec is None else rec.state
                                     if rec.state != "alive" else "new incarnation")
                        return
                self.stop.wait(WATCH_EVERY_S)


class RepairWatch(threading.Thread):
    """From the fault on, where the copies of the blocks the victim held are: every
    ``REPAIR_EVERY_S`` it lists the blocks of every other agent (LIST, asked of each directly
    with a short timeout; the victim's own view is stale or gone) and keeps each block's newest
    set. It notes when a set that named the victim first moved on (a higher epoch than
    ``before``: the agents' detection) and when each of those blocks has ``replicas`` current
    copies again under a higher epoch (repaired). Ends when every such block is repaired or
    gone (freed), or at ``stop`` or ``deadline``."""

    def __init__(self, config: Path, before: dict[str, BlockInfo], victim: str, replicas: int,
                 survivors: dict[str, str], deadline: float):
        super().__init__(daemon=True)
        self.config, self.replicas, self.deadline = config, replicas, deadline
        self.survivors = survivors  # name -> address, every agent but the victim
        self.before = {b: i for b, i in before.items() if victim in i.nodes}
        self.stop = threading.Event()
        self.moved_on_at: float | None = None
        self.moved: set[str] = set()  # blocks whose set moved on
        self.repaired_at: dict[str, float] = {}
        self.sizes: dict[str, int] = {}
        self.gone: set[str] = set()

    def newest(self, client: MeshClient) -> dict[str, dict] | None:
        """block id -> the record of its newest set among the survivors; None when one of
        them did not answer (a block missing from the others may then still be there)."""
        best: dict[str, dict] = {}
        for address in self.survivors.values():
            after: int | None = 0
            while after is not None:
                try:
                    page = client._run(client._core.call(address, P.LIST, {"after": after},
                                                         timeout_s=REPAIR_POLL_TIMEOUT_S))
                except MeshError:
                    return None
                for rec in page.get("blocks", []):
                    held = best.get(rec["block"])
                    if held is None or int(rec.get("epoch") or 0) > int(held.get("epoch") or 0):
                        best[rec["block"]] = rec
                after = page.get("next")
        return best

    def run(self) -> None:
        waiting = set(self.before)
        with MeshClient(self.config, timeout_s=REPAIR_POLL_TIMEOUT_S) as client:
            while waiting and not self.stop.is_set() and time.monotonic() < self.deadline:
                newest = self.newest(client)
                now = time.monotonic()
                for b in list(waiting) if newest is not None else ():
                    rec = newest.get(b)
                    if rec is None:
                        self.gone.add(b)  # freed meanwhile (or lost: the read-back says)
                        waiting.discard(b)
                        continue
                    if int(rec.get("epoch") or 0) > self.before[b].epoch:
                        self.moved.add(b)
                        if self.moved_on_at is None:
                            self.moved_on_at = now
                        if len(set(rec.get("nodes") or ())) >= self.replicas:
                            self.repaired_at[b] = now
                            self.sizes[b] = int(rec["size"])
                            waiting.discard(b)
                self.stop.wait(REPAIR_EVERY_S)

    def unrepaired(self, killed: bool) -> int:
        """Blocks that needed a new copy and have none yet: after a kill, every block the
        victim held (not freed); after a pause, those whose set moved on from it."""
        need = set(self.before) if killed else self.moved
        return len(need - set(self.repaired_at) - self.gone)


# --- the driver ---------------------------------------------------------------------------------


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    lo_f = float(lo)
    hi_f = float(hi) if hi else lo_f
    if not 0 <= lo_f <= hi_f:
        raise argparse.ArgumentTypeError(f"want MIN,MAX with 0 <= MIN <= MAX, got {text!r}")
    return lo_f, hi_f


def _victim(client: MeshClient, manifest: dict, names: list[str],
            rng: random.Random) -> tuple[str, int, dict[str, BlockInfo], dict[str, str]]:
    """An agent holding a copy of acknowledged data (so a fault there puts some at stake), the
    bytes of acknowledged blocks and keys it holds a copy of, and where every block's copies
    are (``blocks()``: the newest set of each), and the block each acknowledged key names."""
    held: collections.Counter[str] = collections.Counter()
    wanted_blocks, wanted_keys = set(manifest["blocks"]), set(manifest["keys"])
    before: dict[str, BlockInfo] = {}
    key_blocks: dict[str, str] = {}
    try:
        before = {info.block_id: info for info in client.blocks()}
        for info in client.keys():
            if info.key in wanted_keys:
                key_blocks[info.key] = info.block_id or ""
                where = before.get(info.block_id) if info.block_id else None
                for node in set(where.nodes if where is not None else
                                info.nodes or (info.node,)):
                    held[node] += info.length
    except MeshError:
        pass
    for block_id in wanted_blocks:
        info = before.get(block_id)
        if info is not None:
            for node in set(info.nodes):
                held[node] += info.size
    candidates = sorted(n for n in held if n in names) or names
    victim = rng.choice(candidates)
    return victim, held.get(victim, 0), before, key_blocks


class Chaos:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.replicas_supported = (supports_replicas(MeshClient.allocate)
                                   and supports_replicas(MeshClient.put_bytes)
                                   and "nodes" in BlockInfo.__dataclass_fields__)
        self.trials: list[dict] = []
        self.ops: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.harness_error: str | None = None
        self.interrupted = False
        self.stopped_early = False
        self.pids: list[int] = []  # every process started (all stopped by the end)

    def run(self) -> dict:
        from support.mesh import LocalMesh

        args = self.args
        start = time.monotonic()
        self.end = start + args.max_seconds
        tmp = Path(tempfile.mkdtemp(prefix="mesh-chaos-"))
        mesh = None
        writers: list[WriterProc] = []
        self.paused: subprocess.Popen | None = None
        try:
            mesh = LocalMesh.create(tmp, args.agents, memory_gb=args.agent_mib / 1024,
                                    replicas=args.replicas, replica_spread=args.spread)
            mesh.start_all()
            for i in range(args.writers):
                writers.append(WriterProc(mesh.config_path, f"w{i}", self.rng.randrange(2**32),
                                          args.replicas, args.spread, args.op_timeout_s, tmp))
            drop: dict[str, dict] = {}
            for n in range(args.trials):
                if time.monotonic() >= self.end:
                    self.stopped_early = True
                    break
                trial = self.trial(n + 1, mesh, writers, drop)
                drop = trial.pop("drop")
                self.trials.append(trial)
                print(self.line(trial), flush=True)
        except KeyboardInterrupt:
            self.interrupted = True
        except HarnessError as exc:
            self.harness_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported, and everything is still stopped
            self.harness_error = f"{type(exc).__name__}: {exc}"
        finally:
            # an interrupt here must not leave processes behind: finish the cleanup first
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                if self.paused is not None and self.paused.poll() is None:
                    self.paused.send_signal(signal.SIGCONT)
                for w in writers:
                    w.stop()
                if mesh is not None:
                    mesh.stop_all()
                self.pids = [w.proc.pid for w in writers] + [
                    p.pid for p in (mesh.started if mesh is not None else [])]
            finally:
                signal.signal(signal.SIGINT, old)
                if args.keep:
                    print(f"kept {tmp}", file=sys.stderr)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
        return self.summary(time.monotonic() - start)

    def trial(self, n: int, mesh: Any, writers: list[WriterProc], drop: dict) -> dict:
        args, rng = self.args, self.rng
        config = mesh.config_path
        names = [a.name for a in mesh.nodes]
        for w in writers:
            d = drop.get(w.wid, {})
            w.ask({"cmd": "resume", "blocks": d.get("blocks", []), "keys": d.get("keys", [])})
        time.sleep(rng.uniform(*args.run_s))
        manifest: dict[str, list[str]] = {"blocks": [], "keys": []}
        for w in writers:
            m = w.ask({"cmd": "manifest"})
            manifest["blocks"] += m["blocks"]
            manifest["keys"] += m["keys"]
        kind = (args.faults[(n - 1) % len(args.faults)] if args.fault_order == "cycle"
                else rng.choice(args.faults))
        with MeshClient(config, timeout_s=args.op_timeout_s) as client:
            victim, at_stake, before, key_blocks = _victim(client, manifest, names, rng)
            try:
                incarnation = next((x.incarnation for x in client.nodes() if x.name == victim),
                                   None)
            except MeshError:
                incarnation = None
        agent = mesh.node(victim)
        hold_s = rng.uniform(*(args.restart_s if kind == "kill" else args.pause_s))
        fault_at, fault_clock = time.monotonic(), _stamp()
        watch = Watch(config, victim, incarnation, fault_at + hold_s + args.restore_timeout_s)
        repairs = RepairWatch(config, before, victim, args.replicas,
                              {a.name: a.address for a in mesh.nodes if a.name != victim},
                              fault_at + hold_s + args.restore_timeout_s)
        if kind == "kill":
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait(timeout=STOP_WAIT_S)
            watch.start()
            repairs.start()
            time.sleep(hold_s)
            try:
                mesh.start(victim)  # the same node name, a new incarnation, empty memory
            except RuntimeError as exc:
                raise HarnessError(f"{victim} did not restart: {exc}") from exc
        else:
            self.paused = agent.proc
            agent.proc.send_signal(signal.SIGSTOP)
            watch.start()
            repairs.start()
            time.sleep(hold_s)
            agent.proc.send_signal(signal.SIGCONT)
            self.paused = None
        fault_end = time.monotonic()
        restored_at, short = probe_restored(
            config, manifest, args.replicas, args.op_timeout_s,
            min(fault_end + args.restore_timeout_s, self.end), before, victim, kind == "kill")
        watch.stop.set()
        watch.join(timeout=5)
        if restored_at is not None and (kind == "kill" or repairs.moved):
            repairs.join(timeout=2.0)  # copies restored: its next poll sees the same
        repairs.stop.set()
        repairs.join(timeout=5)
        window_end = restored_at if restored_at is not None else time.monotonic()
        reports = {}
        for w in writers:
            reports[w.wid] = w.ask({"cmd": "pause", "path": str(w.model_path)})
        models = {}
        for w in writers:
            with open(w.model_path, "rb") as f:
                models[w.wid] = pickle.load(f)
        check = verify(config, models, args.op_timeout_s)
        del models
        ops: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        load_bytes = skipped = 0
        lo, hi = int(fault_at / BUCKET_S), int(window_end / BUCKET_S)
        for r in reports.values():
            ops.update(r["ops"])
            errors.update(r["errors"])
            skipped += r["skipped"]
            load_bytes += sum(v for k, v in r["acked"].items() if lo <= int(k) <= hi)
        self.ops.update(ops)
        self.errors.update(errors)
        window_s = max(window_end - fault_at, BUCKET_S)
        repair_bytes = sum(repairs.sizes.values())
        last_repair = max(repairs.repaired_at.values(), default=None)
        repair_s = repair_mbps = copies_s = None
        if last_repair is not None and repairs.moved_on_at is not None:
            copies_s = round(last_repair - fault_at, 3)
            repair_s = last_repair - repairs.moved_on_at
            repair_mbps = round(repair_bytes / max(repair_s, REPAIR_EVERY_S) / 1e6, 3)
            repair_s = round(repair_s, 3)
        for ex in check["examples"]:  # where its copies were just before the fault
            name = ex.get("lost_block") or ex.get("diverging_block")
            name = name or key_blocks.get(ex.get("lost_key") or ex.get("diverging_key"))
            if name in before:
                ex["before_fault"] = {"block": name, "nodes": list(before[name].nodes),
                                      "epoch": before[name].epoch}
        return {
            "trial": n, "fault": kind, "victim": victim, "hold_s": round(hold_s, 2),
            "fault_clock": fault_clock,
            "at_stake_bytes": at_stake,
            "victim_blocks": sum(victim in i.nodes for i in before.values()),
            "detect_s": None if watch.detected_at is None else round(watch.detected_at - fault_at, 3),
            "detected_as": watch.seen,
            "moved_on_s": (None if repairs.moved_on_at is None
                           else round(repairs.moved_on_at - fault_at, 3)),
            "restored": restored_at is not None,
            "restore_s": round(window_end - fault_at, 3),
            "copies_s": copies_s,
            "repaired_blocks": len(repairs.repaired_at),
            "unrepaired_blocks": repairs.unrepaired(kind == "kill"),
            "repair_bytes": repair_bytes,
            "repair_s": repair_s, "repair_mbps": repair_mbps,
            "short_at_deadline": short,
            "load_mbps": round(load_bytes / window_s / 1e6, 3),
            "ops": sum(ops.values()), "errors": sum(errors.values()), "skipped_full": skipped,
            **{k: v for k, v in check.items() if k != "drop"},
            "drop": check["drop"],
        }

    @staticmethod
    def line(t: dict) -> str:
        detect = "not seen" if t["detect_s"] is None else f"{t['detect_s']:.2f} s ({t['detected_as']})"
        restore = f"{t['restore_s']:.2f} s" + ("" if t["restored"] else
                                               f" (NOT restored by the deadline: "
                                               f"{'; '.join(t['short_at_deadline'][:2])})")
        moved = "" if t["moved_on_s"] is None else f", sets moved on at {t['moved_on_s']:.2f} s"
        repair = ("nothing repaired" if not t["repaired_blocks"] else
                  f"repaired {t['repaired_blocks']} blocks, {format_bytes(t['repair_bytes'])}"
                  + ("" if t["repair_mbps"] is None else
                     f", all copies back at {t['copies_s']:.2f} s ({t['repair_s']:.2f} s "
                     f"after the sets moved on, >= {t['repair_mbps']} MB/s)"))
        if t["unrepaired_blocks"]:
            repair += f", {t['unrepaired_blocks']} blocks NOT repaired"
        return (f"trial {t['trial']}: {t['fault']} {t['victim']} for {t['hold_s']} s "
                f"(a copy of {format_bytes(t['at_stake_bytes'])} of acknowledged blocks and keys, "
                f"{t['victim_blocks']} blocks in all): detect {detect}{moved}, "
                f"restore {restore}, "
                f"{repair}; lost {format_bytes(t['lost_bytes'])} "
                f"({t['lost_blocks']} blocks, {t['lost_keys']} keys), "
                f"diverging reads {t['diverging_reads']}; checked "
                f"{format_bytes(t['checked_bytes'])}; ops {t['ops']}, errors {t['errors']}, "
                f"{t['load_mbps']} MB/s acknowledged from fault to restore")

    def summary(self, seconds: float) -> dict:
        t = self.trials
        detects = [x["detect_s"] for x in t if x["detect_s"] is not None]
        repair = [x["repair_mbps"] for x in t if x["repair_mbps"] is not None]
        repair_s = [x["repair_s"] for x in t if x["repair_s"] is not None]
        moved = [x["moved_on_s"] for x in t if x["moved_on_s"] is not None]
        copies = [x["copies_s"] for x in t if x["copies_s"] is not None]
        faults = collections.Counter(x["fault"] for x in t)
        return {
            "bench": "chaos", "trials": len(t), "agents": self.args.agents,
            "writers": self.args.writers, "replicas": self.args.replicas,
            "spread": self.args.spread, "fault_order": self.args.fault_order,
            "replicas_supported": self.replicas_supported, "seed": self.args.seed,
            "faults": {k: faults.get(k, 0) for k in self.args.faults},
            "lost_bytes": sum(x["lost_bytes"] for x in t),
            "lost_blocks": sum(x["lost_blocks"] for x in t),
            "lost_keys": sum(x["lost_keys"] for x in t),
            "lost_bytes_by_fault": {k: sum(x["lost_bytes"] for x in t if x["fault"] == k)
                                    for k in self.args.faults},
            "diverging_reads": sum(x["diverging_reads"] for x in t),
            "diverging_bytes": sum(x["diverging_bytes"] for x in t),
            "checked_bytes": sum(x["checked_bytes"] for x in t),
            "detect_s_max": max(detects) if detects else None,
            "undetected_trials": len(t) - len(detects),
            "moved_on_s_max": max(moved) if moved else None,
            "copies_s_max": max(copies) if copies else None,
            "restore_s_max": max((x["restore_s"] for x in t), default=None),
            "unrestored_trials": sum(not x["restored"] for x in t),
            "restore_s_by_fault": {k: max((x["restore_s"] for x in t if x["fault"] == k),
                                          default=None) for k in self.args.faults},
            "repaired_trials": len(repair),
            "repaired_blocks": sum(x["repaired_blocks"] for x in t),
            "unrepaired_blocks": sum(x["unrepaired_blocks"] for x in t),
            "repair_bytes": sum(x["repair_bytes"] for x in t),
            "repair_s_max": max(repair_s) if repair_s else None,
            "repair_mbps_min": min(repair) if repair else None,
            "repair_mbps_mean": round(sum(repair) / len(repair), 3) if repair else None,
            # bytes repaired over the seconds spent repairing, all trials together
            "repair_mbps_overall": (round(sum(x["repair_bytes"] for x in t
                                              if x["repair_s"] is not None)
                                          / max(sum(repair_s), REPAIR_EVERY_S) / 1e6, 3)
                                    if repair_s else None),
            "load_mbps_mean": round(sum(x["load_mbps"] for x in t) / len(t), 3) if t else None,
            "ops": sum(self.ops.values()), "ops_by_kind": dict(self.ops),
            "errors": sum(self.errors.values()), "errors_by_type": dict(self.errors),
            "seconds": round(seconds, 1), "stopped_early": self.stopped_early,
            "interrupted": self.interrupted, "harness_error": self.harness_error,
            "pids_started": self.pids,
            "per_trial": t,
        }


def exit_code(result: dict) -> int:
    if result["interrupted"]:
        return 130
    if result["lost_bytes"] or result["diverging_reads"]:
        return 1
    if result["harness_error"]:
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--agent-mib", type=int, default=256, help="memory of each agent")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--replicas", type=int, default=2, help="copies per block (and key)")
    p.add_argument("--spread", choices=("node", "host"), default="node",
                   help="how far apart copies must be (every agent here is on one machine)")
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--faults", default="kill,pause", help="comma-separated: kill, pause")
    p.add_argument("--fault-order", choices=("random", "cycle"), default="random",
                   help="each trial's fault: chosen at random, or the --faults in turn")
    p.add_argument("--pause-s", type=_pair, default=(2.0, 10.0), help="MIN,MAX of a SIGSTOP")
    p.add_argument("--restart-s", type=_pair, default=(1.0, 3.0),
                   help="MIN,MAX from a kill -9 to the restart")
    p.add_argument("--run-s", type=_pair, default=(1.0, 3.0),
                   help="MIN,MAX of load before each fault")
    p.add_argument("--restore-timeout-s", type=float, default=20.0,
                   help="after the fault ends, how long to wait for every read to succeed")
    p.add_argument("--op-timeout-s", type=float, default=2.0, help="each client request")
    p.add_argument("--max-seconds", type=float, default=3600.0,
                   help="no trial starts after this; what was measured is reported")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the agents' logs and the models")
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.add_argument("--writer", help=argparse.SUPPRESS)
    p.add_argument("--writer-seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.writer:
        return writer_main(args.config, args.writer, args.writer_seed, args.replicas,
                           args.spread, args.op_timeout_s)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    bad = [f for f in args.faults if f not in ("kill", "pause")]
    if bad or not args.faults:
        p.error(f"--faults: kill and/or pause, got {bad or 'nothing'}")
    if args.agents < 4:
        p.error("--agents: at least 4 (a victim, and room for two copies besides)")
    if args.writers < 1 or args.trials < 0:
        p.error("--writers at least 1, --trials at least 0")
    if not 1 <= args.replicas < args.agents:
        p.error("--replicas: at least 1, and fewer than --agents (room for a repair)")
    if args.replicas > 1 and not (supports_replicas(MeshClient.allocate)
                                  and supports_replicas(MeshClient.put_bytes)):
        p.error("--replicas above 1: this client has no replicas (try --replicas 1)")
    if args.seed is None:
        args.seed = random.randrange(2**32)

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    result = Chaos(args).run()
    r = result
    print(f"{r['trials']} trials ({', '.join(f'{k} {v}' for k, v in r['faults'].items())}) in "
          f"{r['seconds']} s, {r['agents']} agents, {r['writers']} writers, replicas "
          f"{r['replicas']} (spread {r['spread']}): "
          f"lost {format_bytes(r['lost_bytes'])} ({r['lost_blocks']} blocks, {r['lost_keys']} "
          f"keys), diverging reads {r['diverging_reads']}; detect max {r['detect_s_max']} s, "
          f"restore max {r['restore_s_max']} s ({r['unrestored_trials']} not restored); "
          f"repaired {format_bytes(r['repair_bytes'])} in {r['repaired_trials']} trials, "
          f"{r['repair_mbps_mean']} MB/s mean, {r['repair_mbps_min']} min; "
          f"{r['ops']} ops, {r['errors']} errors {r['errors_by_type']}")
    if r["harness_error"]:
        print(f"harness error: {r['harness_error']}")
    if r["interrupted"]:
        print("interrupted: the trials above are all there is")
    if r["stopped_early"]:
        print(f"stopped at --max-seconds {args.max_seconds}")
    if args.json:
        print(json.dumps(result))
    return exit_code(result)


if __name__ == "__main__":
    sys.exit(main())
