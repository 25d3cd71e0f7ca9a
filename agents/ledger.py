"""The per-host promise ledger: what every mesh agent on this host has promised, so that agents
sharing a host never promise the same RAM twice.

One small text file per host (and user), one line per agent process::

    <pid> <promised bytes> <unbacked bytes> <node>

``promised`` is everything the agent has handed out (blocks backed, being backed, lazy, and its
key records); ``unbacked`` is the part of it that does not hold pages yet (blocks still being
populated, copies moving in, lazy blocks), i.e. what will still come out of the host's available
RAM. An agent takes the file's ``flock`` while it checks an allocation and writes its own line,
so two agents allocating at the same instant see each other. Lines of processes that are gone
are ignored (and dropped at the next write): a killed agent's promises die with it.

Where: ``<mesh.state_dir>/promises.ledger`` when the cluster file sets a state directory, else
``/dev/shm/memory-mesh-<uid>.ledger`` (the temp directory when there is no /dev/shm). Agents share
a ledger when they share that path.

Covers: reading the other agents' totals and writing this agent's line. Does not cover the room
rule itself (``agents/store.py: host_room``) or reading the host's memory (``mesh/hostmem.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


RECHECK_S = 1.0  # others(): the liveness of the same lines is asked again this often


@dataclass(frozen=True)
class Others:
    """The totals of every other live agent on the host."""

    promised: int = 0
    unbacked: int = 0


def default_path(state_dir: str | None) -> Path:
    if state_dir:
        return Path(state_dir).expanduser() / "promises.ledger"
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    return base / f"memory-mesh-{os.getuid()}.ledger"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _parse(text: str) -> list[tuple[int, int, int, str]]:
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        try:
            pid, promised, unbacked = int(parts[0]), int(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            continue  # a torn or foreign line: ignore it
        out.append((pid, promised, unbacked, parts[3] if len(parts) > 3 else ""))
    return out


class PromiseLedger:
    """This agent's view of the host's ledger file at ``path``."""

    def __init__(self, path: str | os.PathLike, node: str, pid: int | None = None):
        self.path = Path(path)
        self.node = node
        self.pid = os.getpid() if pid is None else pid
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "r+")
        self._seen: tuple[str, float, Others] | None = None  # (text, when, totals): others()

    @contextlib.contextmanager
    def locked(self) -> Iterator[Others]:
        """Hold the host's lock; yields the other agents' totals. Call ``write`` inside."""
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            yield self._others(self._entries())
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def others(self) -> Others:
        """The other agents' totals, read under a shared lock (for room in heartbeats and
        gauges). The file is read each time; while it reads the same, the totals are those
        counted last, and whether their processes live is asked again every ``RECHECK_S``
        (a heartbeat asks twice, and with 100 agents on a host the lines are 100)."""
        fcntl.flock(self._file, fcntl.LOCK_SH)
        try:
            self._file.seek(0)
            text = self._file.read()
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        now = time.monotonic()
        seen = self._seen
        if seen is None or seen[0] != text or now - seen[1] >= RECHECK_S:
            seen = self._seen = (text, now, self._others(_parse(text)))
        return seen[2]

    def write(self, promised: int, unbacked: int) -> None:
        """Replace this agent's line (call it while ``locked``)."""
        keep = [e for e in self._entries() if e[0] != self.pid and _alive(e[0])]
        keep.append((self.pid, promised, unbacked, self.node))
        text = "".join(f"{p} {pr} {u} {n}\n" for p, pr, u, n in keep)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(text)
        self._file.flush()

    def update(self, promised: int, unbacked: int) -> None:
        with self.locked():
            self.write(promised, unbacked)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.update(0, 0)
            self._file.close()

    def _entries(self) -> list[tuple[int, int, int, str]]:
        self._file.seek(0)
        return _parse(self._file.read())

    def _others(self, entries: list[tuple[int, int, int, str]]) -> Others:
        promised = unbacked = 0
        for pid, p, u, _ in entries:
            if pid != self.pid and _alive(pid):
                promised += max(0, p)
                unbacked += max(0, u)
        return Others(promised, unbacked)
