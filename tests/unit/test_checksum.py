"""mesh/checksum.py: new checksums are xxh3, stored crc32 ones keep verifying, an unknown
algorithm is refused by name, and running checksums equal one-shot ones however the bytes are cut.
The expected values come from the libraries themselves (zlib, xxhash), not from the module."""

from __future__ import annotations

import os
import zlib

import pytest
import xxhash
from hypothesis import given, settings, strategies as st

from mesh import checksum
from mesh.errors import IntegrityError

DATA = os.urandom(100_003)


def xxh3(data) -> str:
    return f"xxh3:{xxhash.xxh3_64_intdigest(bytes(data)):016x}"


def crc32(data) -> str:
    return f"crc32:{zlib.crc32(bytes(data)):08x}"


def test_new_checksums_are_xxh3_with_16_hex_digits():
    h = checksum.new()
    h.update(memoryview(DATA))
    assert h.algorithm == "xxh3"
    assert h.text() == xxh3(DATA)
    assert len(h.text()) == len("xxh3:") + 16
    assert checksum.of([DATA]) == xxh3(DATA)
    assert checksum.of([]) == xxh3(b"")


def test_a_stored_crc32_checksum_keeps_verifying():
    stored = crc32(DATA)
    checksum.verify(stored, [memoryview(DATA)[:10], memoryview(DATA)[10:]])
    assert checksum.hasher_for(stored).algorithm == "crc32"
    with pytest.raises(IntegrityError, match="read back with checksum crc32:"):
        checksum.verify(stored, [DATA[:-1] + bytes([DATA[-1] ^ 1])])


def test_a_stored_xxh3_checksum_verifies_and_a_flipped_bit_does_not():
    stored = xxh3(DATA)
    checksum.verify(stored, [DATA])
    damaged = bytearray(DATA)
    damaged[50_000] ^= 0x10
    with pytest.raises(IntegrityError, match=f"stored {stored}"):
        checksum.verify(stored, [damaged], "object 'k'")


@pytest.mark.parametrize("stored", ["md5:0123", "", "xxh3", "XXH3:00", "sha256:ab:cd", None, 7])
def test_an_unknown_algorithm_is_refused_by_name(stored):
    with pytest.raises(IntegrityError, match="no algorithm this version knows"):
        checksum.verify(stored, [DATA])
    with pytest.raises(IntegrityError):
        checksum.hasher_for(stored)


def test_new_refuses_an_unknown_algorithm():
    with pytest.raises(IntegrityError, match="unknown checksum algorithm 'blake3'"):
        checksum.new("blake3")
    assert checksum.ALGORITHMS == {"xxh3", "crc32"}


def test_agree_checks_an_answer_of_the_other_algorithm_against_the_bytes():
    ours = checksum.of([DATA])
    assert checksum.agree(ours, ours, [DATA])
    assert checksum.agree(ours, crc32(DATA), [DATA])  # a target of the previous version
    assert not checksum.agree(ours, crc32(DATA[1:]), [DATA])
    assert not checksum.agree(ours, xxh3(DATA[1:]), [DATA])
    with pytest.raises(IntegrityError):
        checksum.agree(ours, "md5:00", [DATA])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=12),
       algorithm=st.sampled_from(["xxh3", "crc32"]))
def test_running_equals_one_shot_over_any_chunking(data, cuts, algorithm):
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    view = memoryview(data)
    h = checksum.new(algorithm)
    for a, b in zip(bounds, bounds[1:]):
        h.update(view[a:b])
    assert h.text() == (xxh3(data) if algorithm == "xxh3" else crc32(data))
    checksum.verify(h.text(), [view[a:b] for a, b in zip(bounds, bounds[1:])])

