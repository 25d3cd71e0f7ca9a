"""The client's pool of cores and ``gather`` (``mesh/client/pool.py``), without agents: cores
are made but never connect; ``gather`` runs plain generators."""

from __future__ import annotations

import time

import pytest
import zmq

from mesh.client.batch import Wait
from mesh.client.core import Core
from mesh.client.pool import CorePool, gather
from mesh.config import MeshSettings


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def _core(ctx, **settings) -> Core:
    return Core(MeshSettings(**settings), {"tcp://127.0.0.1:9": None}, None, ctx)


def test_the_primary_is_lent_first_and_cores_are_made_up_to_the_size(ctx):
    primary = _core(ctx)
    made = []
    pool = CorePool(primary, 3, on_new=made.append)
    assert pool.take() is primary
    second, third = pool.take(), pool.take()
    assert made == [second, third] and len({primary, second, third}) == 3
    assert pool.take() is None  # all busy, no room: the caller waits
    pool.give(primary)
    assert pool.take(extra=True) is primary  # (the only idle one)
    pool.give(second)
    assert pool.take(want=primary) is None and pool.take(want=second) is second
    for core in (primary, second, third):
        pool.give(core)
    assert pool.take() is primary and pool.busy() == 1
    pool.close()
    assert pool.take() is None and all(c.closed for c in pool.cores)


def test_cores_share_locations_keys_and_the_freshest_view(ctx):
    primary = _core(ctx)
    pool = CorePool(primary, 2)
    a, b = pool.take(), pool.take()
    a._locations["blk"] = ("tcp://127.0.0.1:9", 10)
    a.links.server_keys["tcp://x"] = b"k" * 32
    assert b._locations["blk"] == ("tcp://127.0.0.1:9", 10)
    assert b.links.server_keys["tcp://x"] == b"k" * 32
    a._nodes, a._nodes_at, a._nodes_heard_at = {"n": "view"}, 5.0, 5.0
    pool.give(a)
    pool.give(b)
    b = pool.take(want=b)
    assert b._nodes == {"n": "view"} and b._nodes_at == 5.0
    b.invalidate_nodes()  # b changed the room: every core looks again
    pool.give(b)
    a = pool.take(want=a)
    assert a._nodes_at == float("-inf")


def _op(name: str, sock, log: list, rounds: int, timeout_s: float):
    for i in range(rounds):
        ready = yield Wait((sock,) if sock is not None else (), timeout_s)
        log.append((name, i, bool(ready)))
    return name


def test_gather_resumes_each_op_when_its_socket_is_ready_or_its_wait_is_over():
    a, b = object(), object()
    log: list = []
    g = gather([_op("a", a, log, 2, 60.0), _op("b", b, log, 1, 60.0), _op("c", None, log, 1, 0.0)])
    wait = next(g)
    assert set(wait.sockets) == {a, b} and wait.timeout_s == 0.0  # c only sleeps, not at all
    wait = g.send(set())
    assert log == [("c", 0, False)]  # a and b wait on
    assert set(wait.sockets) == {a, b} and wait.timeout_s > 50
    wait = g.send({b})
    assert log[-1] == ("b", 0, True) and wait.sockets == (a,)
    g.send({a})
    with pytest.raises(StopIteration) as stop:
        g.send({a})
    assert stop.value.value == ["a", "b", "c"]


def test_gather_stops_the_others_at_the_first_error():
    closed = []

    def failing():
        yield Wait((), 0.0)
        raise ValueError("boom")

    def waiting():
        try:
            yield Wait((), 60.0)
        finally:
            closed.append(time.monotonic())

    g = gather([waiting(), failing()])
    next(g)
    with pytest.raises(ValueError, match="boom"):
        g.send(set())
    assert len(closed) == 1
