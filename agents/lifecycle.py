"""A block's lifecycle on one agent: its states, the events that move it between them, and what
each state allows.

The happy paths, on the source and on the target of a move::

    ALLOC:  ALLOCATING ──▶ READY            (a lazy ALLOC starts READY)
    MOVE:   READY ──▶ MOVING ──▶ HANDING_OVER ──▶ FREED          (a failed move: back to READY)
    PULL:   INCOMING ──▶ ARRIVED ──COMMIT──▶ READY               (ABORT: CANCELLED, then FREED)

Every allowed transition (``TRANSITIONS``)::

    state           event              new state
    ALLOCATING      POPULATED          READY
                    POPULATE_FAILED    FREED
    READY           MOVE               MOVING
                    FREE               FREED
                    EXPIRE             FREED
    MOVING          HAND_OVER          HANDING_OVER
                    MOVE_FAILED        READY
    HANDING_OVER    MOVE_FAILED        READY
                    MOVED_AWAY         FREED
    INCOMING        COPIED             ARRIVED
                    CANCEL             CANCELLED
                    DROP               FREED
    CANCELLED       CANCEL             CANCELLED
                    DROP               FREED
    ARRIVED         COMMIT             READY
                    DROP               FREED
    any but FREED   SHUTDOWN           FREED

- ALLOCATING: pages are being backed on a worker thread; not served ("still being allocated").
- READY: served: reads, writes, frees, key changes. A READY block may also carry a lease (it is
  pending until a key names it) or a time to live (``agents/store.py``); when either runs out,
  EXPIRE frees it. Only a READY block expires: one being backed or moved is given more time.
- MOVING: being copied to another node (this agent is the source). Reads go on; writes, frees and
  key changes are refused with ``BlockMoving`` (the client retries them).
- HANDING_OVER: the target holds a verified copy and this agent has sent (or is sending) COMMIT,
  so the target may take writes: reads are refused with ``BlockMoving`` too, so nobody reads the
  old copy once the new one may change. MOVE_FAILED (the COMMIT went unanswered) serves it again.
- INCOMING: a copy being pulled here (this agent is the target); not served until COMMIT.
- CANCELLED: the source sent ABORT while the pull was running; the pull stops and drops it.
- ARRIVED: the copy is complete (its checksum went back to the source), waiting for the source's
  COMMIT for at most ``COMMIT_WAIT_S`` (``agents/moves.py``), then DROP.
- FREED: gone from the store (terminal).

Covers: ``State``, ``Event``, ``transition(state, event)`` (raises ``IllegalTransition`` for a
transition the table does not allow), ``initial_state``, and the queries the handlers ask:
``listed``, ``serves_reads``, ``accepts_changes``. Pure: no I/O, no clock, no locks.

Does not cover: which error a client gets for a refused request (``agents/store.py`` and the
handlers choose ``BlockNotFound`` or ``BlockMoving`` from the queries), the timestamps that go
with a state (``Block.commit_by``, ``Block.pull_started`` in ``agents/store.py``), and the
MOVE/PULL/COMMIT/ABORT exchange that drives the moving states (``agents/moves.py``; the wire
format is drawn in ``mesh/protocol.py``).
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    ALLOCATING = "allocating"
    READY = "ready"
    MOVING = "moving"
    HANDING_OVER = "handing over"
    INCOMING = "incoming"
    CANCELLED = "cancelled"
    ARRIVED = "arrived"
    FREED = "freed"


class Event(enum.Enum):
    POPULATED = "populated"  # the allocation's pages are backed
    POPULATE_FAILED = "populate failed"
    MOVE = "move"  # a MOVE request starts copying the block to a peer
    HAND_OVER = "hand over"  # the peer's copy checked out; COMMIT goes to it now
    MOVE_FAILED = "move failed"  # the copy or the commit failed; the original stays
    MOVED_AWAY = "moved away"  # the peer committed: the block lives there now
    COPIED = "copied"  # a pull finished; the copy waits for COMMIT
    CANCEL = "cancel"  # ABORT from the source while the pull runs
    COMMIT = "commit"  # COMMIT from the source: serve the copy
    DROP = "drop"  # an incoming copy failed, was aborted, or was never committed
    FREE = "free"  # a client's FREE, or a key that owned the block went away
    EXPIRE = "expire"  # its lease ran out (a pending put's client is gone) or its ttl is up
    SHUTDOWN = "shutdown"  # the agent stops


class IllegalTransition(RuntimeError):
    """A transition the table does not allow. This is a bug in the agent, never a client's
    fault: the loop logs it and answers "internal" (so it is not a ``MeshError``)."""


S, E = State, Event

# (state, event) -> new state; every pair not listed is illegal.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.ALLOCATING, E.POPULATED): S.READY,
    (S.ALLOCATING, E.POPULATE_FAILED): S.FREED,
    (S.READY, E.MOVE): S.MOVING,
    (S.READY, E.FREE): S.FREED,
    (S.READY, E.EXPIRE): S.FREED,
    (S.MOVING, E.HAND_OVER): S.HANDING_OVER,
    (S.MOVING, E.MOVE_FAILED): S.READY,
    (S.HANDING_OVER, E.MOVE_FAILED): S.READY,
    (S.HANDING_OVER, E.MOVED_AWAY): S.FREED,
    (S.INCOMING, E.COPIED): S.ARRIVED,
    (S.INCOMING, E.CANCEL): S.CANCELLED,
    (S.INCOMING, E.DROP): S.FREED,
    (S.CANCELLED, E.CANCEL): S.CANCELLED,  # a second ABORT changes nothing
    (S.CANCELLED, E.DROP): S.FREED,
    (S.ARRIVED, E.COMMIT): S.READY,
    (S.ARRIVED, E.DROP): S.FREED,
    **{(state, E.SHUTDOWN): S.FREED for state in State if state is not S.FREED},
}


def transition(state: State, event: Event) -> State:
    """The state after ``event``; ``IllegalTransition`` if ``event`` cannot happen in ``state``."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(f"a block that is {state.value} cannot take {event.value!r}") \
            from None


def initial_state(lazy: bool, incoming: bool) -> State:
    """A new block's state: a copy moving in is INCOMING; a lazy allocation needs no backing."""
    if incoming:
        return S.INCOMING
    return S.READY if lazy else S.ALLOCATING


def listed(state: State) -> bool:
    """Clients see the block: STAT and LIST show it, requests on it get past "not found"."""
    return state in (S.READY, S.MOVING, S.HANDING_OVER)


def serves_reads(state: State) -> bool:
    return state in (S.READY, S.MOVING)


def accepts_changes(state: State) -> bool:
    """Writes, frees, key changes and a new move (one move at a time)."""
    return state is S.READY
