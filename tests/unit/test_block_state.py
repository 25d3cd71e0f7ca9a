"""A block's lifecycle (agents/lifecycle.py): every allowed transition, every forbidden one, and
what each state lets clients do. No processes, no sockets."""

from __future__ import annotations

import itertools
import mmap

import pytest

from agents import lifecycle
from agents.lifecycle import Event, IllegalTransition, State, initial_state, transition
from agents.store import Block

S, E = State, Event

# Written out again here (not read from the module) so a change to the table shows up as a
# failing test that says which transition changed.
ALLOWED = {
    (S.ALLOCATING, E.POPULATED): S.READY,
    (S.ALLOCATING, E.POPULATE_FAILED): S.FREED,
    (S.READY, E.MOVE): S.MOVING,
    (S.READY, E.FREE): S.FREED,
    (S.READY, E.EXPIRE): S.FREED,  # a lease ran out or a ttl is up (agents/store.py: sweep)
    (S.MOVING, E.HAND_OVER): S.HANDING_OVER,
    (S.MOVING, E.MOVE_FAILED): S.READY,
    (S.HANDING_OVER, E.MOVE_FAILED): S.READY,
    (S.HANDING_OVER, E.MOVED_AWAY): S.FREED,
    (S.INCOMING, E.COPIED): S.ARRIVED,
    (S.INCOMING, E.CANCEL): S.CANCELLED,
    (S.INCOMING, E.DROP): S.FREED,
    (S.CANCELLED, E.CANCEL): S.CANCELLED,
    (S.CANCELLED, E.DROP): S.FREED,
    (S.ARRIVED, E.COMMIT): S.READY,
    (S.ARRIVED, E.DROP): S.FREED,
    (S.ALLOCATING, E.SHUTDOWN): S.FREED,
    (S.READY, E.SHUTDOWN): S.FREED,
    (S.MOVING, E.SHUTDOWN): S.FREED,
    (S.HANDING_OVER, E.SHUTDOWN): S.FREED,
    (S.INCOMING, E.SHUTDOWN): S.FREED,
    (S.CANCELLED, E.SHUTDOWN): S.FREED,
    (S.ARRIVED, E.SHUTDOWN): S.FREED,
}
FORBIDDEN = [pair for pair in itertools.product(State, Event) if pair not in ALLOWED]


@pytest.mark.parametrize(("state", "event"), list(ALLOWED), ids=lambda x: x.name)
def test_allowed_transition(state, event):
    assert transition(state, event) is ALLOWED[state, event]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN, ids=lambda x: x.name)
def test_forbidden_transition_raises(state, event):
    with pytest.raises(IllegalTransition, match=state.value):
        transition(state, event)


def test_the_module_table_is_exactly_the_one_above():
    assert lifecycle.TRANSITIONS == ALLOWED


def test_freed_is_terminal():
    for event in Event:
        with pytest.raises(IllegalTransition):
            transition(S.FREED, event)


def test_a_forbidden_transition_is_a_bug_not_a_client_error():
    from mesh.errors import MeshError

    assert not issubclass(IllegalTransition, MeshError)


def test_initial_states():
    assert initial_state(lazy=False, incoming=False) is S.ALLOCATING
    assert initial_state(lazy=True, incoming=False) is S.READY
    assert initial_state(lazy=False, incoming=True) is S.INCOMING
    assert initial_state(lazy=True, incoming=True) is S.INCOMING  # a copy is never served early


# state -> (listed, serves reads, accepts changes)
QUERIES = {
    S.ALLOCATING: (False, False, False),
    S.READY: (True, True, True),
    S.MOVING: (True, True, False),  # reads go on while the copy runs; writes get "moving"
    S.HANDING_OVER: (True, False, False),  # after COMMIT is sent, reads get "moving" too
    S.INCOMING: (False, False, False),  # not served until COMMIT
    S.CANCELLED: (False, False, False),
    S.ARRIVED: (False, False, False),
    S.FREED: (False, False, False),
}


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.name)
def test_queries(state):
    got = (lifecycle.listed(state), lifecycle.serves_reads(state),
           lifecycle.accepts_changes(state))
    assert got == QUERIES[state]


def _block(state: State) -> Block:
    buf = mmap.mmap(-1, 4096)
    return Block("b", 4096, False, 0.0, buf, memoryview(buf), state)


def test_block_advance_walks_a_move_and_refuses_what_would_free_it():
    block = _block(S.READY)
    assert block.advance(E.MOVE) is S.MOVING
    assert block.advance(E.HAND_OVER) is S.HANDING_OVER
    assert block.advance(E.MOVE_FAILED) is S.READY and block.state is S.READY
    with pytest.raises(IllegalTransition, match="BlockStore.free"):
        block.advance(E.FREE)  # freeing gives memory back: only the store does that
    assert block.state is S.READY
    with pytest.raises(IllegalTransition):
        block.advance(E.COMMIT)
    assert block.state is S.READY


def test_block_advance_walks_a_pull():
    block = _block(S.INCOMING)
    assert block.advance(E.COPIED) is S.ARRIVED
    assert block.advance(E.COMMIT) is S.READY
    cancelled = _block(S.INCOMING)
    assert cancelled.advance(E.CANCEL) is S.CANCELLED
    assert cancelled.advance(E.CANCEL) is S.CANCELLED  # a second ABORT changes nothing
    with pytest.raises(IllegalTransition):
        cancelled.advance(E.COPIED)  # a cancelled pull never becomes a copy
