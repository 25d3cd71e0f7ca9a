"""Unit tests of the wire protocol (``mesh/protocol.py``): request and reply frames, error
codes. Heartbeat frames are tested with the membership they carry (``test_membership.py``)."""

from __future__ import annotations

import msgpack
import pytest

from mesh import protocol as P
from mesh.errors import BlockNotFound, OutOfRange, ProtocolError, VersionMismatch, error_from_wire


def test_request_round_trip():
    header = P.encode_request(P.WRITE, 7, {"block": "b", "offset": 3})
    req = P.parse_request([header, b"xyz"])
    assert (req.op, req.request_id, req.fields, req.payload) == (P.WRITE, 7, {"block": "b", "offset": 3}, [b"xyz"])


@pytest.mark.parametrize(
    "frames, code",
    [
        ([], "bad_frame"),
        ([b"\xc1\xc1garbage"], "bad_frame"),
        ([msgpack.packb({"not": "a list"})], "bad_frame"),
        ([msgpack.packb([P.VERSION, "read", 1])], "bad_frame"),
        ([msgpack.packb([99, "ping", 1, {}])], "version_mismatch"),
        ([msgpack.packb([P.VERSION, "explode", 1, {}])], "unknown_op"),
        ([msgpack.packb([P.VERSION, "read", 1, {"block": "b", "offset": 0}])], "bad_request"),
        ([msgpack.packb([P.VERSION, "read", 1, {"block": "b", "offset": "0", "length": 1}])], "bad_request"),
        ([msgpack.packb([P.VERSION, "alloc", 1, {"size": True, "lazy": False}])], "bad_request"),
        ([msgpack.packb([P.VERSION, "write", 1, {"block": "b", "offset": 0}])], "bad_frame"),
        ([msgpack.packb([P.VERSION, "ping", 1, {}]), b"extra"], "bad_frame"),
        ([b"x" * (P.MAX_HEADER_BYTES + 1)], "bad_frame"),
        ([msgpack.packb([P.VERSION, "ping", 1, {}])[:-2]], "bad_frame"),
    ],
)
def test_bad_requests_are_refused_with_a_code(frames, code):
    with pytest.raises(P.BadRequest) as info:
        P.parse_request(frames)
    assert info.value.code == code


def test_error_reply_maps_to_typed_exception():
    reply = P.parse_reply([P.encode_error(P.READ, 3, "out_of_range", "past the end")])
    assert not reply.ok and reply.request_id == 3
    with pytest.raises(OutOfRange, match="past the end"):
        reply.raise_for_error()
    assert isinstance(error_from_wire("unknown_block", "x"), BlockNotFound)
    assert type(error_from_wire("no-such-code", "x")).__name__ == "AgentError"


def test_reply_with_other_version_is_refused():
    with pytest.raises(VersionMismatch):
        P.parse_reply([msgpack.packb([2, "ping", 1, 0, {}])])
    with pytest.raises(ProtocolError):
        P.parse_reply([b"garbage"])
