"""mesh/security/seal.py: sealed messages open only once, in order, in their own session and
direction, exactly as sealed; everything else is refused with ``SealError`` (never another
exception) and moves no counter; ``SessionLost`` only for the agent's "no such session" naming
this session."""

from __future__ import annotations

import random
import struct

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import ProtocolError
from mesh.security.seal import (
    ENVELOPE_BYTES,
    MAGIC,
    NO_SESSION,
    TAG_BYTES,
    TO_AGENT,
    TO_CLIENT,
    Opener,
    Sealer,
    SealError,
    SessionLost,
    new_session,
    no_session,
    session_of,
)

HEADER = b"\x94\x01\xa4read\x07\x80"  # the shape of a request header; its bytes do not matter
PAYLOAD = bytes(range(256)) * 4
# envelope = MAGIC (2) | session id (8) | counter (8) | direction (1) | frames (1)
COUNTER_AT = 10
DIRECTION_AT = 18
FRAMES_AT = 19

fuzz_settings = settings(max_examples=300, deadline=None, database=None)


class Link:
    """Both ends of one session: what the client seals the agent opens, and back."""

    def __init__(self, session_id: bytes | None = None, key: bytes | None = None):
        sid, k = new_session()
        self.sid = session_id or sid
        self.key = key or k
        self.client_sealer = Sealer(self.sid, self.key, TO_AGENT)
        self.agent_opener = Opener(self.sid, self.key, TO_AGENT)
        self.agent_sealer = Sealer(self.sid, self.key, TO_CLIENT)
        self.client_opener = Opener(self.sid, self.key, TO_CLIENT)


def refused(opener: Opener, frames: list) -> SealError:
    last = opener.last
    with pytest.raises(SealError) as info:
        opener.open(frames)
    assert type(info.value) is SealError and isinstance(info.value, ProtocolError)
    assert info.value.code == "bad_seal"
    assert opener.last == last
    return info.value


def with_envelope(frames: list[bytes], **changes: int | bytes) -> list[bytes]:
    magic, sid, counter, direction, n = struct.unpack(">2s8sQBB", frames[0])
    fields = {"magic": magic, "sid": sid, "counter": counter, "direction": direction, "n": n}
    fields.update(changes)
    env = struct.pack(">2s8sQBB", *fields.values())
    return [env, *frames[1:]]


def flip(frames: list[bytes], frame: int, at: int, mask: int = 0x01) -> list[bytes]:
    out = list(frames)
    b = bytearray(out[frame])
    b[at] ^= mask
    out[frame] = bytes(b)
    return out


# --- what opens ---------------------------------------------------------------------------------


def test_a_header_alone_round_trips():
    link = Link()
    frames = link.client_sealer.seal(HEADER)
    assert len(frames) == 2 and len(frames[0]) == ENVELOPE_BYTES
    assert len(frames[1]) == len(HEADER) + TAG_BYTES
    assert HEADER not in frames[1]
    assert link.agent_opener.open(frames) == (HEADER, None)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_payload_round_trips_from_any_buffer(kind):
    link = Link()
    frames = link.client_sealer.seal(HEADER, kind(PAYLOAD))
    assert len(frames) == 3 and PAYLOAD[:64] not in frames[2]
    header, payload = link.agent_opener.open(frames)
    assert (header, payload) == (HEADER, PAYLOAD)
    assert type(header) is bytes and type(payload) is bytes


def test_empty_header_and_empty_payload_round_trip():
    link = Link()
    assert link.agent_opener.open(link.client_sealer.seal(b"", b"")) == (b"", b"")
    assert link.agent_opener.open(link.client_sealer.seal(b"")) == (b"", None)


@pytest.mark.parametrize("kind", [zmq.Frame, memoryview, bytearray])
def test_received_frames_open_without_being_bytes(kind):
    link = Link()
    frames = link.agent_sealer.seal(HEADER, PAYLOAD)
    assert link.client_opener.open([kind(f) for f in frames]) == (HEADER, PAYLOAD)
    assert session_of([kind(frames[0])]) == link.sid


def test_both_directions_of_one_session_under_one_key():
    link = Link()
    for i in range(3):
        request = b"request %d" % i
        assert link.agent_opener.open(link.client_sealer.seal(request)) == (request, None)
        reply = b"reply %d" % i
        assert link.client_opener.open(link.agent_sealer.seal(reply, PAYLOAD)) == (reply, PAYLOAD)


def test_counters_increase_from_one_and_the_opener_follows():
    link = Link()
    for expected in (1, 2, 3):
        frames = link.client_sealer.seal(HEADER)
        assert link.client_sealer.counter == expected
        assert struct.unpack(">Q", frames[0][COUNTER_AT:DIRECTION_AT])[0] == expected
        link.agent_opener.open(frames)
        assert link.agent_opener.last == expected


def test_gaps_are_fine_but_what_was_skipped_cannot_come_later():
    link = Link()
    first, second, third = (link.client_sealer.seal(b"%d" % i) for i in (1, 2, 3))
    assert link.agent_opener.open(first) == (b"1", None)
    assert link.agent_opener.open(third) == (b"3", None)  # 2 was lost: fine
    refused(link.agent_opener, second)


def test_constructors_refuse_wrong_sizes():
    sid, key = new_session()
    for cls in (Sealer, Opener):
        with pytest.raises(ValueError):
            cls(sid[:7], key, TO_AGENT)
        with pytest.raises(ValueError):
            cls(sid, key + b"x", TO_AGENT)


# --- what is refused ----------------------------------------------------------------------------


def test_a_replayed_message_is_refused():
    link = Link()
    frames = link.client_sealer.seal(HEADER, PAYLOAD)
    link.agent_opener.open(frames)
    refused(link.agent_opener, frames)


def test_an_older_message_after_a_newer_is_refused():
    link = Link()
    older = link.client_sealer.seal(b"older")
    newer = link.client_sealer.seal(b"newer")
    link.agent_opener.open(newer)
    refused(link.agent_opener, older)


def test_a_message_of_another_session_is_refused():
    mine, theirs = Link(), Link()
    refused(mine.agent_opener, theirs.client_sealer.seal(HEADER))  # other id, other key
    # a forger who knows the session id but not the key: same id, same counter, other key
    forger = Sealer(mine.sid, new_session()[1], TO_AGENT)
    refused(mine.agent_opener, forger.seal(HEADER))
    refused(mine.agent_opener, forger.seal(HEADER, PAYLOAD))
    assert mine.agent_opener.open(mine.client_sealer.seal(HEADER)) == (HEADER, None)


def test_a_session_id_swapped_in_the_envelope_is_refused():
    mine, theirs = Link(), Link()
    # their message relabelled as mine: the right id, the wrong key
    refused(mine.agent_opener, with_envelope(theirs.client_sealer.seal(HEADER), sid=mine.sid))
    # my message relabelled as theirs: not this session
    refused(mine.agent_opener, with_envelope(mine.client_sealer.seal(HEADER), sid=theirs.sid))
    # and theirs, relabelled, does not open at their end either
    ours = with_envelope(mine.client_sealer.seal(HEADER), sid=theirs.sid)
    refused(theirs.agent_opener, ours)


def test_every_tampered_byte_is_refused_and_moves_no_counter():
    link = Link()
    frames = link.client_sealer.seal(HEADER, PAYLOAD[:40])
    opener = link.agent_opener
    for i, frame in enumerate(frames):
        for at in range(len(frame)):
            for mask in (0x01, 0x80):
                refused(opener, flip(frames, i, at, mask))
    assert opener.last == 0
    assert opener.open(frames) == (HEADER, PAYLOAD[:40])


@pytest.mark.parametrize("change", [
    {"counter": 2}, {"counter": 2**64 - 1}, {"direction": TO_CLIENT}, {"direction": 7},
    {"n": 2}, {"n": 4}, {"n": 0}, {"magic": b"ZM"},
])
def test_a_tampered_envelope_is_refused(change):
    link = Link()
    frames = link.client_sealer.seal(HEADER, PAYLOAD)
    refused(link.agent_opener, with_envelope(frames, **change))
    assert link.agent_opener.open(frames) == (HEADER, PAYLOAD)


def test_a_refused_message_with_a_high_counter_does_not_block_later_ones():
    link = Link()
    genuine = link.client_sealer.seal(HEADER)
    forged = with_envelope(link.client_sealer.seal(HEADER), counter=2**64 - 1)
    refused(link.agent_opener, forged)
    assert link.agent_opener.open(genuine) == (HEADER, None)


def test_a_truncated_message_is_refused():
    link = Link()
    frames = link.client_sealer.seal(HEADER, PAYLOAD)
    refused(link.agent_opener, frames[:2])  # the envelope still says 3 frames
    refused(link.agent_opener, with_envelope(frames[:2], n=2))  # and if it is made to say 2
    refused(link.agent_opener, frames[:1])
    refused(link.agent_opener, [frames[0], frames[1], frames[2][:-1]])
    refused(link.agent_opener, [frames[0], frames[1][:TAG_BYTES - 1], frames[2]])
    refused(link.agent_opener, [frames[0], frames[1], b""])
    refused(link.agent_opener, [frames[0][:-1], frames[1], frames[2]])
    # a payload frame added to a header-only message
    short = link.client_sealer.seal(HEADER)
    refused(link.agent_opener, [*short, frames[2]])
    refused(link.agent_opener, with_envelope([*short, frames[2]], n=3))
    assert link.agent_opener.open(short) == (HEADER, None)


def test_a_payload_spliced_onto_another_messages_header_is_refused():
    link = Link()
    a = link.client_sealer.seal(HEADER, PAYLOAD)
    b = link.client_sealer.seal(HEADER, PAYLOAD)  # same plaintexts, other counter
    refused(link.agent_opener, [b[0], b[1], a[2]])
    refused(link.agent_opener, [b[0], a[1], b[2]])
    refused(link.agent_opener, [a[0], b[1], b[2]])
    refused(link.agent_opener, [a[0], a[2], a[1]])  # parts swapped
    assert link.agent_opener.open(a) == (HEADER, PAYLOAD)
    assert link.agent_opener.open(b) == (HEADER, PAYLOAD)


def test_a_message_reflected_to_its_sender_is_refused():
    link = Link()
    mine = link.client_sealer.seal(HEADER, PAYLOAD)
    refused(link.client_opener, mine)  # the client's own request sent back to it
    refused(link.client_opener, with_envelope(mine, direction=TO_CLIENT))  # relabelled
    reply = link.agent_sealer.seal(HEADER)
    refused(link.agent_opener, reply)
    refused(link.agent_opener, with_envelope(reply, direction=TO_AGENT))
    assert link.agent_opener.open(mine) == (HEADER, PAYLOAD)
    assert link.client_opener.open(reply) == (HEADER, None)


@pytest.mark.parametrize("count", [1, 4])
def test_garbage_of_every_length_is_refused(count):
    link = Link()
    rng = random.Random(count)
    for n in range(41):
        for fill in (b"\x00" * n, b"\xff" * n, rng.randbytes(n), (MAGIC + link.sid * 5)[:n]):
            refused(link.agent_opener, [fill] * count)
            refused(link.agent_opener, [rng.randbytes(rng.randrange(41)) for _ in range(count)])
    refused(link.agent_opener, [])
    assert link.agent_opener.open(link.client_sealer.seal(HEADER)) == (HEADER, None)


@pytest.mark.parametrize("with_payload", [False, True])
def test_garbage_in_any_one_frame_is_refused(with_payload):
    link = Link()
    rng = random.Random(with_payload)
    frames = link.client_sealer.seal(HEADER, PAYLOAD if with_payload else None)
    for i in range(len(frames)):
        for n in range(41):
            for fill in (b"\x00" * n, rng.randbytes(n)):
                bad = list(frames)
                bad[i] = fill
                refused(link.agent_opener, bad)
    assert link.agent_opener.open(frames)[0] == HEADER


def test_an_envelope_of_this_session_with_garbage_after_it_is_refused():
    link = Link()
    rng = random.Random(0)
    for counter in (1, 2, 2**32, 2**64 - 1):
        env = MAGIC + link.sid + struct.pack(">QBB", counter, TO_AGENT, 2)
        for n in range(41):
            refused(link.agent_opener, [env, rng.randbytes(n)])
            refused(link.agent_opener, [env, rng.randbytes(n), rng.randbytes(n)])
            refused(link.agent_opener, [env[:-1] + b"\x03", rng.randbytes(n), rng.randbytes(n)])


# --- session lost -------------------------------------------------------------------------------


def test_no_session_is_session_lost_only_with_the_right_session_id():
    link = Link()
    with pytest.raises(SessionLost) as info:
        link.client_opener.open(no_session(link.sid))
    assert info.value.code == "session_lost" and not isinstance(info.value, SealError)
    with pytest.raises(SessionLost):
        link.client_opener.open([zmq.Frame(no_session(link.sid)[0])])
    other = Link()
    refused(link.client_opener, no_session(other.sid))
    refused(link.client_opener, [NO_SESSION + link.sid[:7]])
    refused(link.client_opener, [NO_SESSION + link.sid + b"\x00"])
    refused(link.client_opener, [NO_SESSION])
    refused(link.client_opener, [b"MZ?" + link.sid])
    refused(link.client_opener, [*no_session(link.sid), b""])
    assert link.client_opener.last == 0
    assert link.client_opener.open(link.agent_sealer.seal(HEADER)) == (HEADER, None)


def test_session_of_names_the_claimed_session():
    link = Link()
    frames = link.client_sealer.seal(HEADER, PAYLOAD)
    assert session_of(frames) == link.sid
    assert session_of(frames[:1]) == link.sid  # only the envelope is looked at
    assert session_of(with_envelope(frames, sid=b"12345678")) == b"12345678"  # unchecked
    assert session_of([]) is None
    assert session_of([frames[0][:-1]]) is None
    assert session_of([frames[0] + b"\x00"]) is None
    assert session_of([b"ZM" + frames[0][2:]]) is None
    assert session_of(no_session(link.sid)) is None
    assert session_of([b""]) is None


# --- properties ---------------------------------------------------------------------------------


@fuzz_settings
@given(with_payload=st.booleans(), data=st.data())
def test_any_change_to_a_genuine_message_is_refused(with_payload, data):
    link = Link()
    frames = link.client_sealer.seal(HEADER, PAYLOAD[:64] if with_payload else None)
    i = data.draw(st.integers(0, len(frames) - 1))
    kind = data.draw(st.sampled_from(["flip", "cut", "extend", "replace"]))
    bad = list(frames)
    if kind == "flip":
        at = data.draw(st.integers(0, len(bad[i]) - 1))
        bad = flip(bad, i, at, data.draw(st.integers(1, 255)))
    elif kind == "cut":
        bad[i] = bad[i][: data.draw(st.integers(0, len(bad[i]) - 1))]
    elif kind == "extend":
        bad[i] = bad[i] + data.draw(st.binary(min_size=1, max_size=32))
    else:
        new = data.draw(st.binary(max_size=len(bad[i]) + 16))
        bad[i] = new
        if new == frames[i]:
            return
    refused(link.agent_opener, bad)
    assert link.agent_opener.open(frames) == (HEADER, PAYLOAD[:64] if with_payload else None)


@fuzz_settings
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_arbitrary_frames_are_refused(frames):
    link = Link()
    refused(link.agent_opener, frames)


def test_the_sizes_the_link_repeats_are_the_seals():
    """mesh/security/link.py repeats a few sizes so that clients without keys never load the
    seal (nor cryptography); they must agree."""
    from mesh.security import link

    from mesh.security import seal

    assert link.SESSION_ID_BYTES == seal.SESSION_ID_BYTES
    assert link.KEY_BYTES == seal.KEY_BYTES
    assert link.SEALED_OVERHEAD_BYTES == 2 * TAG_BYTES + ENVELOPE_BYTES
