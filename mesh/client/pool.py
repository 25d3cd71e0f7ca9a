"""Several operations of one client at once: a pool of cores, and ``gather``.

- ``CorePool``: the ``Core`` s (``mesh/client/core.py``) of one client, each with its own link
  (socket, and on a keyed cluster its own sealed session) per agent. An operation borrows one
  core for its whole run and gives it back; a core is made when every core is busy, up to
  ``mesh.client_connections``, and then a borrower waits. The first core (the client's
  ``_core``) is lent whenever it is idle, so a client used one operation at a time uses one
  core, as before. The cores share what they learn: block locations, which blocks have copies,
  the agents' public keys, the nodes found not listening, the version warnings (the same
  objects), and the membership view (the freshest one is handed to a core when it is lent, and
  a view one core dropped after a change of room is dropped for all).
- ``gather``: one operation generator running several others side by side in one thread: it
  waits for the union of their sockets and resumes each one when one of its own sockets is
  ready or its own wait is over. Large transfers to one agent run their parts on several
  borrowed cores (several connections) through it (``mesh/client/parallel.py``).

The pool is bookkeeping only: no waiting here. The clients (``mesh/client/drivers.py``) wait for
a free core with a ``threading.Condition`` (sync) or an ``asyncio.Condition`` (async).

Not here: the operations (``core.py``, ``objects.py``), the sockets' waits (``drivers.py``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from mesh.client.batch import Op, Wait
from mesh.client.core import Core


class CorePool:
    """The cores of one client: ``primary`` (always there) and up to ``size - 1`` more."""

    def __init__(self, primary: Core, size: int, on_new: Callable[[Core], None] | None = None):
        self.primary = primary
        self.size = max(1, size)
        self.cores = [primary]
        self.idle = [primary]
        self.on_new = on_new  # called with each core made after the first
        self.closing = False  # no more lending: the client is closing or closed
        # the freshest membership view lent out: (nodes, refreshed at, heard at)
        self._view = (primary._nodes, primary._nodes_at, primary._nodes_heard_at)

    def take(self, want: Core | None = None, extra: bool = False) -> Core | None:
        """An idle core (``want`` if given: only that one), made if none is idle and the pool
        has room; None when the caller must wait (or, ``closing``, give up). ``extra``: a core
        beyond the first one an operation borrowed (never waited for)."""
        if self.closing:
            return None
        if want is not None:
            if want not in self.idle:
                return None
            self.idle.remove(want)
            return self._lend(want)
        if self.idle:
            core = self.primary if self.primary in self.idle and not extra else self.idle[-1]
            self.idle.remove(core)
            return self._lend(core)
        if len(self.cores) >= self.size:
            return None
        core = sibling(self.primary)
        self.cores.append(core)
        if self.on_new is not None:
            self.on_new(core)
        return self._lend(core)

    def give(self, core: Core) -> None:
        nodes, at, heard = self._view
        if core._nodes_at == float("-inf") and core._nodes_heard_at >= heard:
            self._view = (nodes, float("-inf"), heard)  # it changed the room: all look again
        elif core._nodes_heard_at > heard:
            self._view = (core._nodes, core._nodes_at, core._nodes_heard_at)
        if core not in self.idle:
            self.idle.append(core)

    def _lend(self, core: Core) -> Core:
        nodes, at, heard = self._view
        if heard > core._nodes_heard_at or (heard == core._nodes_heard_at and at < core._nodes_at):
            core._nodes, core._nodes_at, core._nodes_heard_at = nodes, at, heard
        return core

    def busy(self) -> int:
        return len(self.cores) - len(self.idle)

    def close(self) -> None:
        """Close every core (call it once none is busy: their sockets belong to whoever runs
        on them)."""
        self.closing = True
        for core in self.cores:
            core.close()


def sibling(core: Core) -> Core:
    """A new core like ``core`` (same settings, seeds, key, context) sharing what it learns."""
    made = Core(core.settings, core.seeds, core.config, core.ctx, core.links.key)
    made._locations = core._locations
    made.replicated = core.replicated
    made.near = core.near
    made.versions = core.versions
    made.links.server_keys = core.links.server_keys
    made.links.unreached = core.links.unreached
    made.links.before_close = core.links.before_close
    return made


def gather(ops: list[Op]) -> Op:
    """Run ``ops`` side by side; their results in order. The first one that raises stops the
    others (closed: their unfinished requests are dropped with their links) and its error is
    raised."""
    results: list[Any] = [None] * len(ops)
    waiting: dict[int, tuple[Wait, float]] = {}  # op index -> (its wait, when it is over)

    def step(i: int, value: Any, now: float) -> None:
        try:
            wait = next(ops[i]) if value is None else ops[i].send(value)
        except StopIteration as stop:
            results[i] = stop.value
            waiting.pop(i, None)
            return
        waiting[i] = (wait, now + wait.timeout_s)

    try:
        now = time.monotonic()
        for i in range(len(ops)):
            step(i, None, now)
        while waiting:
            sockets: dict[int, Any] = {}
            writable: dict[int, Any] = {}
            for wait, _ in waiting.values():
                for sock in wait.sockets:
                    sockets[id(sock)] = sock
                for sock in wait.writable:
                    writable[id(sock)] = sock
            soonest = min(over for _, over in waiting.values())
            ready = yield Wait(tuple(sockets.values()), max(0.0, soonest - time.monotonic()),
                               tuple(writable.values()))
            now = time.monotonic()
            for i, (wait, over) in list(waiting.items()):
                mine = {s for s in (*wait.sockets, *wait.writable) if s in ready}
                if mine or now >= over:
                    step(i, mine, now)
    finally:
        for op in ops:
            op.close()
    return results
