"""The direct path's framing (``mesh/directwire.py``): whole messages out of a byte stream
however it is cut, and a broken stream refused."""

from __future__ import annotations

import pytest

from mesh import directwire as D


def test_messages_come_out_whole_however_the_stream_is_cut():
    stream = b"".join(D.frame(["begin", i, {"data": bytes(i * 100)}]) for i in range(50))
    stream += b"raw bytes after"
    for step in (1, 7, 4096, len(stream)):
        frames, got = D.Frames(), []
        for i in range(0, len(stream), step):
            frames.feed(stream[i : i + step])
            while len(got) < 50 and (message := frames.next()) is not None:
                got.append(message)
        assert [m[1] for m in got] == list(range(50))
        assert all(m[2]["data"] == bytes(m[1] * 100) for m in got)
        assert frames.take(100) == b"raw bytes after" and frames.next() is None


@pytest.mark.parametrize("data", [
    D.LENGTH.pack(D.MAX_FRAME + 1) + b"x",  # over the limit, refused before it arrives
    D.LENGTH.pack(3) + b"\xc1\xc1\xc1",  # not msgpack
])
def test_a_broken_stream_is_refused(data):
    frames = D.Frames()
    frames.feed(data)
    with pytest.raises(D.BrokenStream):
        frames.next()


def test_the_host_of_an_address():
    assert D.host_of("tcp://127.0.0.5:7000") == "127.0.0.5"
    assert D.host_of("tcp://[::1]:7000") == "::1"
    assert D.host_of("tcp://node-1.example:7000") == "node-1.example"
