"""The same-host path's messages (``mesh/localwire.py``) and its copy (``mesh/memcopy.py``)."""

from __future__ import annotations

import os
import socket

import pytest

from mesh import localwire as L
from mesh import memcopy

BEGIN = {"block": "b", "offset": 0, "length": 4, "write": False, "have": 0}


def test_a_well_formed_request_parses():
    assert L.parse_request([L.BEGIN, 3, dict(BEGIN)]) == (L.BEGIN, 3, BEGIN)
    assert L.parse_request([L.HELLO, 1, {}]) == (L.HELLO, 1, {})
    assert L.parse_request([L.END, 2, {"pin": 9}]) == (L.END, 2, {"pin": 9})


@pytest.mark.parametrize("message", [
    None, [], ["begin", 1], ["begin", "1", dict(BEGIN)], ["begin", True, dict(BEGIN)],
    ["nope", 1, {}], ["begin", 1, []], ["begin", 1, {**BEGIN, "offset": -1}],
    ["begin", 1, {**BEGIN, "length": "4"}], ["begin", 1, {**BEGIN, "write": 1}],
    ["begin", 1, {**BEGIN, "offset": True}], ["end", 1, {}], ["end", 1, {"pin": -3}],
])
def test_a_malformed_request_is_refused_by_name(message):
    with pytest.raises(L.BadMessage):
        L.parse_request(message)


def test_replies_round_trip_and_bad_ones_are_refused():
    assert L.parse_reply(L.reply_ok(4, {"pin": 1})) == (4, True, {"pin": 1})
    assert L.parse_reply(L.reply_error(5, "busy", "later")) == \
        (5, False, {"code": "busy", "message": "later"})
    for bad in (None, [1, 2], ["1", 0, {}], [1, 7, {}], [1, 0, []]):
        with pytest.raises(L.BadMessage):
            L.parse_reply(bad)


def test_a_descriptor_travels_with_its_message_and_garbage_is_refused():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = os.memfd_create("t")
    try:
        L.send(a, ["hello", 1, {}], (fd,))
        message, fds = L.recv(b)
        assert message == ["hello", 1, {}] and len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(fd).st_ino
        os.close(fds[0])
        a.send(b"\xc1")
        with pytest.raises(L.BadMessage):
            L.recv(b)
        a.send(b"x" * (L.MAX_MESSAGE + 1))
        with pytest.raises(L.BadMessage):
            L.recv(b)
        a.close()
        with pytest.raises(EOFError):
            L.recv(b)
    finally:
        os.close(fd)
        b.close()


@pytest.mark.parametrize("n", [0, 1, 4095, memcopy.PARALLEL_MIN - 1, memcopy.PARALLEL_MIN,
                               memcopy.PARALLEL_MIN * 2 + 12345])
def test_copy_moves_every_byte_whatever_the_size(n):
    src = os.urandom(n)
    for source in (memoryview(bytearray(src)), memoryview(src)):  # writable, and read-only
        dst = bytearray(n)
        memcopy.copy(memoryview(dst), source)
        assert dst == src


def test_copy_refuses_buffers_of_different_lengths():
    with pytest.raises(ValueError):
        memcopy.copy(memoryview(bytearray(4)), memoryview(b"abc"))
