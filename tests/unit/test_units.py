"""Unit tests of human sizes (``mesh/units.py``): parsing what people type, printing bytes."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidSize
from mesh.units import GiB, KiB, MiB, TiB, format_bytes, parse_size


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("  1024  ", 1024),
        ("0", 0),
        ("512MiB", 512 * MiB),
        ("1.5 GiB", 3 * GiB // 2),
        ("4M", 4 * MiB),
        ("10gb", 10 * GiB),
        ("2k", 2 * KiB),
        ("2K", 2 * KiB),
        ("2KB", 2 * KiB),
        ("2kib", 2 * KiB),
        ("1.5KiB", 1536),
        ("3 MB", 3 * MiB),
        ("1T", TiB),
        ("1 TiB", TiB),
        ("7b", 7),
        ("7 B", 7),
        ("7 bytes", 7),
        (".5k", 512),
        ("1e3", 1000),
        ("1.3KiB", 1331),  # 1331.2 bytes, rounded to the nearest byte
        (2.0, 2),
        (1536.0, 1536),
    ],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [(4, 4 * GiB), ("4", 4 * GiB), (0.5, GiB // 2), ("512MiB", 512 * MiB), ("3 B", 3)],
)
def test_parse_size_default_unit_gb(value, expected):
    # A plain number is read in the default unit; an explicit unit wins.
    assert parse_size(value, default_unit="GB") == expected


def test_parse_size_result_is_int():
    assert type(parse_size("1.5 GiB")) is int
    assert type(parse_size(2.0)) is int


@pytest.mark.parametrize(
    "value, fragment",
    [
        (-1, "negative"),
        ("-5MiB", "negative"),
        (-0.5, "negative"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        ("abc", "expected a number"),
        ("", "expected a number"),
        ("MiB", "expected a number"),
        ("1.2.3", "expected a number"),
        ("12 parsecs", "unknown unit 'parsecs'"),
        ("5 PiB", "unknown unit 'PiB'"),
        ("0.1B", "not a whole number of bytes"),
        ("0.1", "not a whole number of bytes"),
        (0.1, "not a whole number of bytes"),
        ("1e-9 KiB", "less than one byte"),
        (True, "invalid size True"),
        (None, "invalid size None"),
        ([4], "invalid size [4]"),
    ],
)
def test_parse_size_errors(value, fragment):
    with pytest.raises(InvalidSize) as info:
        parse_size(value)
    message = str(info.value)
    assert fragment in message
    assert repr(value) in message  # the message quotes what was given


def test_invalid_size_is_a_value_error():
    with pytest.raises(ValueError):
        parse_size("lots")


def test_parse_size_rejects_unknown_default_unit():
    with pytest.raises(ValueError, match="default_unit"):
        parse_size(1, default_unit="furlongs")


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, "0 B"),
        (1, "1 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (4 * MiB, "4.00 MiB"),
        (5 * GiB, "5.00 GiB"),
        (TiB, "1.00 TiB"),
        (2048 * TiB, "2048.00 TiB"),  # TiB is the largest unit printed
        (MiB - 1, "1.00 MiB"),  # not "1024.00 KiB"
        (-1536, "-1.50 KiB"),
    ],
)
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


@pytest.mark.parametrize("n", [1.5, "12", True, None])
def test_format_bytes_rejects_non_integers(n):
    with pytest.raises(InvalidSize):
        format_bytes(n)


@pytest.mark.parametrize("n", [0, 7, 1536, 4 * MiB, 5 * GiB, TiB])
def test_round_trip_of_exact_values(n):
    assert parse_size(format_bytes(n).replace(" ", "")) == n
