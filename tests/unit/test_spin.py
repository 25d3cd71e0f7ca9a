"""mesh/spin.py: polling a moment before sleeping is bounded, and returns what it found."""

from __future__ import annotations

import socket
import time

import zmq

from mesh.spin import spin_poll


def test_spin_poll_returns_the_first_answer_and_stops():
    answers = iter([[], [], [("sock", 1)], [("other", 1)]])
    calls = []

    def poll(timeout_ms: int):
        calls.append(timeout_ms)
        return next(answers)

    assert spin_poll(poll, 1.0) == [("sock", 1)]
    assert calls == [0, 0, 0]  # never a blocking poll, and none after the answer


def test_spin_poll_gives_up_after_its_time_with_the_empty_answer():
    calls = []
    t0 = time.perf_counter()
    assert spin_poll(lambda timeout_ms: calls.append(timeout_ms) or [], 0.002) == []
    assert 0.002 <= time.perf_counter() - t0 < 1.0 and set(calls) == {0}


def test_a_plain_socket_with_bytes_waiting_is_found_without_a_wait():
    a, b = socket.socketpair()
    try:
        items = [(a, zmq.POLLIN)]
        assert spin_poll(lambda t: zmq.zmq_poll(items, t), 0.001) == []
        b.send(b"x")
        deadline = time.monotonic() + 5
        got = []
        while not got and time.monotonic() < deadline:
            got = spin_poll(lambda t: zmq.zmq_poll(items, t), 0.01)
        assert got == [(a.fileno(), zmq.POLLIN)]
    finally:
        a.close()
        b.close()
