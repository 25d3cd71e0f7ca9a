"""Unit tests of request deadlines (issue 10, defect 6): what a request carries and when the
agent must refuse it (``mesh/protocol.py``), and that every call a ``BatchRun`` sends carries
one (``mesh/client/batch.py``)."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from mesh import protocol as P
from mesh.client.batch import Batch, BatchRun, Call
from mesh.config import MeshSettings
from mesh.errors import ConfigError, DeadlineExceeded, MeshTimeout, error_from_wire


def test_deadline_is_when_the_client_gives_up_less_the_clock_skew():
    assert P.deadline_for(1000.0, 10.0, 0.25) == 1009.75
    # the skew never eats more than half of a short timeout
    assert P.deadline_for(1000.0, 0.2, 0.25) == 1000.1
    assert P.deadline_for(1000.0, 10.0, 0.0) == 1010.0


def test_past_deadline_only_after_it_and_only_when_carried():
    assert not P.past_deadline({}, 1e12)
    assert not P.past_deadline({"deadline": 100.0}, 100.0)
    assert P.past_deadline({"deadline": 100.0}, 100.001)


def test_a_malformed_deadline_is_a_bad_request():
    header = P.encode_request(P.PING, 3, {"deadline": "soon"})
    with pytest.raises(P.BadRequest) as err:
        P.parse_request([header])
    assert err.value.code == "bad_request" and err.value.request_id == 3
    assert P.parse_request([P.encode_request(P.PING, 4, {"deadline": 5})]).fields["deadline"] == 5


def test_every_call_sent_carries_its_deadline_and_a_given_one_is_kept():
    calls = [Call("A", P.PING, {}), Call("A", P.PING, {"deadline": 1.0})]
    run = BatchRun(Batch(calls, timeout_s=4.0), itertools.count(1))
    sent = run.ready(0.0, wall_now=500.0, clock_skew_s=0.5)
    deadlines = [msgpack.unpackb(frames[0])[3]["deadline"] for _, frames in sent]
    assert deadlines == [503.5, 1.0]
    assert calls[0].fields == {}  # the call's own fields are not changed
    no_clock = BatchRun(Batch([Call("A", P.PING, {})], timeout_s=4.0), itertools.count(1))
    (_, frames), = no_clock.ready(0.0)
    assert "deadline" not in msgpack.unpackb(frames[0])[3]


def test_deadline_exceeded_is_a_timeout_on_the_wire():
    exc = error_from_wire("deadline_exceeded", "late", "w2")
    assert isinstance(exc, DeadlineExceeded) and isinstance(exc, MeshTimeout)
    assert exc.node == "w2"


def test_clock_skew_setting_is_checked():
    assert MeshSettings().clock_skew_s == 0.25
    assert MeshSettings(clock_skew_s=0).clock_skew_s == 0
    with pytest.raises(ConfigError, match="clock_skew_s"):
        MeshSettings(clock_skew_s=-1)
