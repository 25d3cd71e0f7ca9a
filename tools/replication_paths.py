#!/usr/bin/env python3
"""How should a replicated write reach its copies? Measures the candidate paths in one run.

    python tools/replication_paths.py [--size 1GiB] [--chunk 2MiB] [--window 8] [--runs 5] [--json]

A write of ``--size`` bytes from a warm client buffer, in ``--chunk`` pieces with ``--window``
chunks in flight and one reply per chunk, into sink processes that each hold a pre-touched
``--size`` bytearray and copy each received chunk into it at its offset, as an agent does
(``recv_multipart(copy=False)``, then ``view[off:off+n] = frame.buffer``). Modes:

``single``           client DEALER -> one sink. The baseline: one copy.
``client_fanout``    the client sends every chunk to two sinks (two DEALERs, zero-copy sends of
                     memoryview slices); a chunk is done when both replied.
``primary_forward``  the client sends to a primary only; the primary copies the chunk into its
                     own buffer, then forwards the very same received frames to a backup sink
                     over its own DEALER (``copy=False``: libzmq shares the message, no copy),
                     and replies to the client only when the backup acknowledged that chunk
                     (a poll loop over its ROUTER and its DEALER, a dict of pending request ids).
``forward_first``    as ``primary_forward``, but the primary forwards first and then copies, so
                     the backup's receive overlaps the primary's memcpy. Still replies only after
                     both copies applied.

Every mode has its own processes (loopback: the client on 127.0.0.1, the single sink there too,
the second hop's processes on 127.0.0.2 and 127.0.0.3), all started before the first run. Each
run does every mode once, the order rotated from run to run so machine noise and ordering hit
all modes alike; one untimed warm-up pass per mode comes first. Before every pass each sink's
buffer is zeroed (memset, untimed), after it each sink returns the crc32 of its whole buffer and
the bytes it applied (untimed): ``verified`` is true when every sink of every pass equals the
source.

Figures: median GB/s (10**9 bytes/s) over the runs and its ratio to ``single`` (the issue wants
``replicated_write_ratio`` >= 0.7 for 2 copies); the same for each mode's fastest pass
(``*_best_gbps``, ``*_best_ratio``): on the 2-core VM this was written on, noise comes in slow
stretches in which every byte costs up to twice the CPU (``runs_cpu_s_per_gb`` shows them, per
pass), and a median of 5 can land in one. CPU seconds (user+sys of all threads, libzmq's I/O
thread included: /proc/PID/task/*/schedstat, psutil where missing) per GB written, for each
process role of each mode, medians over the runs; GB is the logical write (``--size``), not the
bytes on the wire. ``zmq_io_share``: the part of each role's CPU spent in libzmq's I/O threads
(the send/recv syscalls: the kernel's copies and, on loopback, much of the TCP work); the rest is
mostly Python's main thread (the memcpy into the block, pyzmq). ``cores_busy``: all processes'
CPU seconds per wall second of a pass (2.0: both cores of a 2-core machine saturated). With
``--json`` the last line printed is one JSON object.

A benchmark, not a test: it asserts nothing; every socket has timeouts, every wait a bound,
every child is stopped at the end (STOP request, then terminate by pid, then kill), and children
exit by themselves when the parent goes away or they hear nothing for a while.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh._malloc import tune_for_transfers  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

# request header: op, request id, offset. Reply header: op, request id, a, b.
REQ = struct.Struct("<BQQ")
REP = struct.Struct("<BQQQ")
WRITE, RESET, CRC, STOP = 1, 2, 3, 4

HEADER_ALLOWANCE = 64 * 1024
POLL_MS = 1000  # children wake this often to check on their parent
CHILD_IDLE_S = 600  # a child that hears nothing this long exits
CONTROL_TIMEOUT_S = 60  # RESET, CRC, STOP round trips
START_TIMEOUT_S = 60
SEND_TIMEOUT_MS = 30_000

MODES = ("single", "client_fanout", "primary_forward", "forward_first")
ROLES = {
    "single": ("client", "sink"),
    "client_fanout": ("client", "sink_a", "sink_b"),
    "primary_forward": ("client", "primary", "backup"),
    "forward_first": ("client", "primary", "backup"),
}


# --- children ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (best effort)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent check in the poll loops remains
        pass


def _block(size: int) -> bytearray:
    buf = bytearray(size)
    buf[::4096] = b"\x01" * len(buf[::4096])  # touch every page once
    return buf


def _zero(buf: bytearray) -> None:
    import ctypes

    ctypes.memset((ctypes.c_char * len(buf)).from_buffer(buf), 0, len(buf))


def _router(ctx, host: str, chunk: int, window: int):
    import zmq

    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4 * window + 16)
    sock.setsockopt(zmq.RCVHWM, 4 * window + 16)
    sock.setsockopt(zmq.MAXMSGSIZE, chunk + HEADER_ALLOWANCE)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    sock.setsockopt(zmq.RCVTIMEO, POLL_MS)
    sock.bind(f"tcp://{host}:*")
    return sock


def _dealer(ctx, address: str, chunk: int, window: int):
    import zmq

    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4 * window + 16)
    sock.setsockopt(zmq.RCVHWM, 4 * window + 16)
    sock.setsockopt(zmq.MAXMSGSIZE, chunk + HEADER_ALLOWANCE)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    sock.setsockopt(zmq.RCVTIMEO, CONTROL_TIMEOUT_S * 1000)
    sock.connect(address)
    return sock


class _Local:
    """A child's block and the control requests every child answers itself."""

    def __init__(self, size: int):
        self.buf = _block(size)
        self.view = memoryview(self.buf)
        self.applied = 0

    def control(self, op: int, rid: int) -> bytes | None:
        """The reply to a control request; None for STOP (the caller replies, then exits)."""
        if op == RESET:
            _zero(self.buf)
            self.applied = 0
            return REP.pack(RESET, rid, 0, 0)
        if op == CRC:
            return REP.pack(CRC, rid, zlib.crc32(self.view), self.applied)
        return None

    def apply(self, off: int, payload) -> None:
        data = payload.buffer
        self.view[off : off + len(data)] = data
        self.applied += len(data)


def _announce(sock) -> None:
    import zmq

    sys.stdout.write(f"READY {sock.getsockopt(zmq.LAST_ENDPOINT).decode()}\n")
    sys.stdout.flush()


def _sink_main(host: str, size: int, chunk: int, window: int) -> None:
    """A ROUTER that copies every WRITE into its block at its offset and acks it."""
    import zmq

    _die_with_parent()
    tune_for_transfers(chunk + HEADER_ALLOWANCE, window)
    parent = os.getppid()
    local = _Local(size)
    ctx = zmq.Context()
    sock = _router(ctx, host, chunk, window)
    _announce(sock)
    heard = time.monotonic()
    try:
        while True:
            try:
                frames = sock.recv_multipart(copy=False)
            except zmq.Again:
                if os.getppid() != parent or time.monotonic() - heard > CHILD_IDLE_S:
                    return
                continue
            heard = time.monotonic()
            identity, header = frames[0], frames[1]
            op, rid, off = REQ.unpack(header.bytes)
            if op == WRITE:
                local.apply(off, frames[2])
                sock.send_multipart([identity, REP.pack(WRITE, rid, 0, 0)])
                continue
            reply = local.control(op, rid)
            sock.send_multipart([identity, reply or REP.pack(STOP, rid, 0, 0)])
            if reply is None:
                return
    finally:
        sock.close(0)
        ctx.term()


def _primary_main(host: str, size: int, chunk: int, window: int, backup: str,
                  forward_first: bool) -> None:
    """A ROUTER that applies every WRITE locally and forwards the same frames (zero-copy) to
    ``backup`` over its DEALER; it acks the client when the backup acked that chunk."""
    import zmq

    _die_with_parent()
    tune_for_transfers(chunk + HEADER_ALLOWANCE, window)
    parent = os.getppid()
    local = _Local(size)
    ctx = zmq.Context()
    router = _router(ctx, host, chunk, window)
    dealer = _dealer(ctx, backup, chunk, window)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(dealer, zmq.POLLIN)
    pending: dict[int, object] = {}  # request id -> the client's identity frame
    _announce(router)
    heard = time.monotonic()
    try:
        while True:
            ready = dict(poller.poll(POLL_MS))
            if not ready:
                if os.getppid() != parent or time.monotonic() - heard > CHILD_IDLE_S:
                    return
                continue
            heard = time.monotonic()
            if dealer in ready:  # the backup's acks: now both copies are applied
                while True:
                    try:
                        reply = dealer.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    _, rid, _, _ = REP.unpack(reply)
                    identity = pending.pop(rid)
                    router.send_multipart([identity, REP.pack(WRITE, rid, 0, 0)])
            if router in ready:
                while True:
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    identity, header = frames[0], frames[1]
                    op, rid, off = REQ.unpack(header.bytes)
                    if op == WRITE:
                        payload = frames[2]
                        pending[rid] = identity
                        if forward_first:
                            dealer.send_multipart([header, payload], copy=False)
                            local.apply(off, payload)
                        else:
                            local.apply(off, payload)
                            dealer.send_multipart([header, payload], copy=False)
                        continue
                    reply = local.control(op, rid)  # about this process's own block only
                    router.send_multipart([identity, reply or REP.pack(STOP, rid, 0, 0)])
                    if reply is None:
                        return
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


# --- the parent ----------------------------------------------------------------------------


class Child:
    """One child process, its endpoint, and a control DEALER to it (from the client)."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        self.sock = None
        self.endpoint = ""

    def wait_ready(self) -> str:
        """The endpoint the child announced (it has touched its block by then)."""
        if not self.endpoint:
            self.endpoint = self._read_ready()
        return self.endpoint

    def _read_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"child {self.proc.args[2:]} did not start")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                byte = os.read(self.proc.stdout.fileno(), 1)  # unbuffered: select sees the rest
                if not byte:
                    raise RuntimeError(f"child {self.proc.args[2:]} exited at start")
                line += byte
        word, endpoint = line.decode().split()
        assert word == "READY"
        return endpoint

    def cpu(self) -> tuple[float, float]:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Mode:
    """A mode's processes and the client sockets that write through it. Started in three steps so
    every mode's children pre-touch their blocks at the same time: ``Mode()`` starts the sinks,
    ``start_primary`` the primary once its backup is up, ``connect`` the client's sockets."""

    def __init__(self, name: str, size: int, chunk: int, window: int):
        self.name = name
        self.common = [str(size), str(chunk), str(window)]
        self.chunk, self.window = chunk, window
        self.children: dict[str, Child] = {}
        self.data: list = []
        try:
            if name == "single":
                self.children["sink"] = Child(["_sink", "127.0.0.1", *self.common])
            elif name == "client_fanout":
                self.children["sink_a"] = Child(["_sink", "127.0.0.2", *self.common])
                self.children["sink_b"] = Child(["_sink", "127.0.0.3", *self.common])
            else:
                self.children["backup"] = Child(["_sink", "127.0.0.3", *self.common])
        except BaseException:
            self.close()
            raise

    def start_primary(self) -> None:
        if "backup" in self.children:
            self.children["primary"] = Child(
                ["_primary", "127.0.0.2", *self.common, self.children["backup"].wait_ready(),
                 "1" if self.name == "forward_first" else "0"])

    def connect(self, ctx) -> None:
        for child in self.children.values():
            child.sock = _dealer(ctx, child.wait_ready(), self.chunk, self.window)
        data = {"single": ["sink"], "client_fanout": ["sink_a", "sink_b"]}.get(self.name,
                                                                              ["primary"])
        self.data = [self.children[r].sock for r in data]

    def control(self, op: int, rid: int) -> dict[str, tuple[int, int]]:
        """``op`` to every child at once (they work in parallel); each one's (a, b)."""
        import zmq

        for child in self.children.values():
            child.sock.send(REQ.pack(op, rid, 0))
        out = {}
        for role, child in self.children.items():
            try:
                rop, rrid, a, b = REP.unpack(child.sock.recv())
            except zmq.Again:
                raise TimeoutError(f"{self.name}/{role}: no reply to op {op}") from None
            if (rop, rrid) != (op, rid):
                raise RuntimeError(f"{self.name}/{role}: unexpected reply {rop} {rrid}")
            out[role] = (a, b)
        return out

    def cpu(self) -> dict[str, tuple[float, float]]:
        """Each role's (zmq I/O threads, other threads) CPU seconds; the client's too."""
        out = {role: child.cpu() for role, child in self.children.items()}
        out["client"] = _cpu_seconds(os.getpid())
        return out

    def close(self) -> None:
        import zmq

        for child in self.children.values():
            if child.sock is not None:
                try:
                    if child.proc.poll() is None:  # asked first; terminated by pid below
                        child.sock.setsockopt(zmq.RCVTIMEO, 5000)
                        child.sock.send(REQ.pack(STOP, 0, 0), zmq.NOBLOCK)
                        child.sock.recv()
                except zmq.ZMQError:  # no answer: terminated by pid below all the same
                    pass
                child.sock.close(0)
                child.sock = None
        for child in self.children.values():
            child.stop()


def _write(socks: list, dv: memoryview, chunk: int, window: int, rid0: int,
           timeout_s: float) -> float:
    """Write all of ``dv`` to every socket in ``socks``, ``window`` chunks in flight, a chunk done
    when every socket acked it; seconds taken."""
    import zmq

    size = len(dv)
    nchunks = (size + chunk - 1) // chunk
    copies = len(socks)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    waiting: dict[int, int] = {}  # request id -> acks still missing
    sent = done = 0
    deadline = time.monotonic() + timeout_s
    t0 = time.perf_counter()
    while done < nchunks:
        while sent < nchunks and len(waiting) < window:
            off = sent * chunk
            rid = rid0 + sent
            header = REQ.pack(WRITE, rid, off)
            piece = dv[off : off + chunk]
            for s in socks:
                s.send_multipart([header, piece], copy=False)
            waiting[rid] = copies
            sent += 1
        left_ms = int((deadline - time.monotonic()) * 1000)
        ready = poller.poll(min(30_000, left_ms)) if left_ms > 0 else []
        if not ready:
            raise TimeoutError(f"pass not done in {timeout_s:.0f} s, or no ack for 30 s "
                               f"({done}/{nchunks} chunks done)")
        for s, _ in ready:
            while True:
                try:
                    reply = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                op, rid, _, _ = REP.unpack(reply)
                if op != WRITE or rid not in waiting:
                    raise RuntimeError(f"unexpected reply op {op} rid {rid}")
                waiting[rid] -= 1
                if waiting[rid] == 0:
                    del waiting[rid]
                    done += 1
    return time.perf_counter() - t0


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user+sys) of ``pid``'s threads: (libzmq's I/O threads, every other thread:
    Python's main thread, pyzmq's garbage-collector thread, libzmq's reapers). Each thread's
    on-CPU time in ns from /proc/PID/task/*/schedstat (what utime+stime are scaled from; psutil's
    cpu_times counts 10 ms clock ticks, coarse against a 1 s pass); psutil, as (0, all), where
    that is missing."""
    try:
        io = other = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read()
            except FileNotFoundError:  # the thread just exited
                continue
            if name.startswith("ZMQbg/IO"):
                io += ns
            else:
                other += ns
        return io / 1e9, other / 1e9
    except (OSError, ValueError, IndexError):
        import psutil

        t = psutil.Process(pid).cpu_times()
        return 0.0, t.user + t.system


def _warm_source(n: int) -> bytearray:
    return bytearray(os.urandom(1 << 20)) * (n >> 20) + bytearray(os.urandom(n & ((1 << 20) - 1)))


def replication_paths(args: argparse.Namespace) -> dict:
    import psutil
    import zmq

    size, chunk = parse_size(args.size), parse_size(args.chunk)
    window, runs = args.window, args.runs
    if size <= 0 or chunk <= 0 or window <= 0 or runs <= 0:
        raise SystemExit("size, chunk, window and runs must be positive")
    need = (1 + 7) * size  # the source and seven children's blocks
    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        raise SystemExit(f"needs about {format_bytes(need)} of memory; "
                         f"{format_bytes(avail)} available")
    started = time.monotonic()
    deadline = started + args.max_seconds
    load_before = os.getloadavg()
    tune_for_transfers(chunk + HEADER_ALLOWANCE, window)
    data = _warm_source(size)
    dv = memoryview(data)
    want_crc = zlib.crc32(dv)
    timeout_s = 30 + size / 50e6  # one pass; 50 MB/s would be a broken machine
    ctx = zmq.Context()
    modes: dict[str, Mode] = {}
    gbps: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, dict[str, list[float]]] = {m: {r: [] for r in ROLES[m]} for m in MODES}
    io_share: dict[str, dict[str, list[float]]] = {m: {r: [] for r in ROLES[m]} for m in MODES}
    busy: dict[str, list[float]] = {m: [] for m in MODES}
    failures: list[str] = []
    rid = 1
    try:
        for name in MODES:
            modes[name] = Mode(name, size, chunk, window)
        for mode in modes.values():
            mode.start_primary()
        for mode in modes.values():
            mode.connect(ctx)
        for run in range(-1, runs):  # run -1: the untimed warm-up pass
            order = MODES[run % len(MODES):] + MODES[: run % len(MODES)] if run >= 0 else MODES
            line = []
            for name in order:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"over --max-seconds {args.max_seconds}")
                mode = modes[name]
                mode.control(RESET, rid)
                rid += 1
                before = mode.cpu()
                client_before = time.process_time()  # this process, all threads, exact
                seconds = _write(mode.data, dv, chunk, window, rid, timeout_s)
                client_after = time.process_time()  # this process, all threads, exact
                after = mode.cpu()
                rid += (size + chunk - 1) // chunk
                sums = mode.control(CRC, rid)
                rid += 1
                for role, (crc, applied) in sums.items():
                    if crc != want_crc or applied != size:
                        failures.append(f"run {run + 1} {name}/{role}: crc {crc:08x} (want "
                                        f"{want_crc:08x}), {applied} of {size} bytes applied")
                if run < 0:
                    continue
                gbps[name].append(size / seconds / 1e9)
                gb = size / 1e9
                used = {role: sum(after[role]) - sum(before[role]) for role in ROLES[name]}
                used["client"] = client_after - client_before
                for role in ROLES[name]:
                    cpu[name][role].append(used[role] / gb)
                    io_share[name][role].append(
                        (after[role][0] - before[role][0]) / max(used[role], 1e-9))
                busy[name].append(sum(used.values()) / seconds)
                line.append(f"{name} {gbps[name][-1]:.2f}")
            if run >= 0 and not args.json:
                print(f"run {run + 1}: " + "  ".join(line) + " GB/s", flush=True)
    finally:
        for mode in modes.values():
            mode.close()
        ctx.term()
    result: dict = {"bench": "replication_paths", "size_bytes": size, "chunk_bytes": chunk,
                    "window": window, "runs": runs}
    for name in MODES:
        result[f"{name}_gbps"] = round(statistics.median(gbps[name]), 3)
    for name in MODES[1:]:
        result[f"{name}_ratio"] = round(result[f"{name}_gbps"] / result["single_gbps"], 3)
    # each mode's fastest pass: the machine may drift between a fast state and one in which every
    # byte costs up to twice the CPU (runs_cpu_s_per_gb shows it), and a median of 5 can land in
    # either; the best pass is each path in the fast state
    for name in MODES:
        result[f"{name}_best_gbps"] = round(max(gbps[name]), 3)
    for name in MODES[1:]:
        result[f"{name}_best_ratio"] = round(result[f"{name}_best_gbps"]
                                             / result["single_best_gbps"], 3)
    result["verified"] = not failures
    if failures:
        result["verify_failures"] = failures[:10]
    result["cpu_s_per_gb"] = {
        name: {**{role: round(statistics.median(v), 3) for role, v in cpu[name].items()},
               "total": round(statistics.median(
                   [sum(cpu[name][r][i] for r in ROLES[name]) for i in range(runs)]), 3)}
        for name in MODES}
    # libzmq's I/O threads' part of each role's CPU (the rest: Python's main thread, mostly)
    result["zmq_io_share"] = {name: {role: round(statistics.median(v), 2)
                                     for role, v in io_share[name].items()} for name in MODES}
    # CPU seconds of all processes per wall second of the pass: how many of the cores it kept busy
    result["cores_busy"] = {name: round(statistics.median(busy[name]), 2) for name in MODES}
    result["runs_gbps"] = {name: [round(x, 3) for x in gbps[name]] for name in MODES}
    # per run, all roles' CPU s/GB: a slow pass with the usual CPU lost its time elsewhere (other
    # load on the machine); one with more CPU per GB worked harder for the same bytes
    result["runs_cpu_s_per_gb"] = {
        name: [round(sum(cpu[name][r][i] for r in ROLES[name]), 3) for i in range(runs)]
        for name in MODES}
    result["cpus"] = os.cpu_count()
    result["load_before"] = [round(x, 2) for x in load_before]
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_sink":
        _sink_main(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    if argv and argv[0] == "_primary":
        _primary_main(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5], argv[6] == "1")
        return 0
    parser = argparse.ArgumentParser(prog="tools/replication_paths.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--chunk", default="2MiB")
    parser.add_argument("--window", type=int, default=8, help="chunks in flight")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=600,
                        help="give up (and stop every child) after this long")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    result = replication_paths(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{format_bytes(result['size_bytes'])} x {result['runs']} runs, chunk "
          f"{format_bytes(result['chunk_bytes'])}, window {result['window']}, "
          f"{result['cpus']} CPUs, load before {result['load_before']}")
    for name in MODES:
        ratio = "" if name == "single" else f"  ratio {result[f'{name}_ratio']:.2f}"
        roles = "  ".join(f"{r} {v:.2f}" for r, v in result["cpu_s_per_gb"][name].items())
        best = f"{result[f'{name}_best_gbps']:.2f}" + (
            "" if name == "single" else f" ratio {result[f'{name}_best_ratio']:.2f}")
        print(f"  {name:<16} {result[f'{name}_gbps']:.2f} GB/s{ratio:<13}  (best {best})"
              f"  CPU s/GB: {roles}"
              f"  (cores busy {result['cores_busy'][name]:.2f})")
        print(f"  {'':<16} libzmq I/O threads' share of each role's CPU: " + "  ".join(
            f"{r} {v:.0%}" for r, v in result["zmq_io_share"][name].items()))
    print(f"verified {result['verified']}" + (
        "" if result["verified"] else ": " + "; ".join(result["verify_failures"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
