"""Human-readable sizes, for the edges only: cluster files, CLI options and printed output.

Inside the mesh every size is an ``int`` of bytes. ``parse_size`` turns what a person typed
("512MiB", "1.5 GiB", "4M", "10gb", "2k", 1024) into bytes, and ``format_bytes`` turns bytes
back into "4.00 MiB". Every multiple is binary: k, K, KB and KiB all mean 1024 (the seed
documents and users write "GB" for what the machine reports in GiB, so we read it that way and
never guess between 1000 and 1024).

One convention for printing: every size a person reads goes through ``format_bytes``, so a byte
count reads the same wherever it appears: "512.00 MiB" in ``grid agents status``,
``grid memory stats``, ``grid memory list-blocks``, ``grid resource-sharing`` and
``grid rebalance`` alike, and in the errors the client raises. Output labels are the binary
ones (KiB, MiB, GiB, TiB), also in the commands the seed documents describe: they printed
"5.00 GB" for what was 5 GiB, and a label that says what it means is worth the change. Input
keeps the seeds' spellings ("--size 5.0" is 5 GiB, "512MB" is 512 MiB). Only numbers in Python
dictionaries of the seeds' API keep their names (``size_mb``, ``total_mb``: MiB as floats,
``distributed_grid/``).

Not here: durations (config fields are float seconds named ``*_s``), and checking that a size
fits a block or an agent (``mesh/client/core.py`` and the agent do that and raise their own errors).
"""

from __future__ import annotations

import math
import operator
import re
from fractions import Fraction

from mesh.errors import InvalidSize

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

# Lower-case spelling -> multiplier. "" is filled in from ``default_unit``.
_UNITS: dict[str, int] = {
    "b": 1, "byte": 1, "bytes": 1,
    "k": KiB, "kb": KiB, "kib": KiB,
    "m": MiB, "mb": MiB, "mib": MiB,
    "g": GiB, "gb": GiB, "gib": GiB,
    "t": TiB, "tb": TiB, "tib": TiB,
}

_SIZE_RE = re.compile(
    r"""^\s*
    (?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    \s*
    (?P<unit>[A-Za-z]*)
    \s*$""",
    re.VERBOSE,
)


def parse_size(value: int | float | str, *, default_unit: str = "B") -> int:
    """Bytes in ``value``: an int, a float, or a string such as "512MiB", "1.5 GiB" or "2k".

    A plain number (``1024``, ``"1024"``, ``1.5``) is read in ``default_unit`` ("B" or "GB",
    or any unit this module knows). Fractions of a unit are rounded to the nearest byte
    ("1.5KiB" is 1536), but a fraction of a byte is refused ("0.1B").

    Raises ``InvalidSize`` for negative, NaN or infinite values, text that is not a number,
    unknown units, and amounts of less than one byte that are not zero.
    """
    default_multiplier = _UNITS.get(str(default_unit).strip().lower())
    if default_multiplier is None:
        raise ValueError(f"parse_size: unknown default_unit {default_unit!r}")

    if isinstance(value, bool):  # bool is an int subclass; True is never a size
        raise InvalidSize(f"invalid size {value!r}: expected a number of bytes or a string like '4MiB'")
    if isinstance(value, int):
        amount, multiplier = Fraction(value), default_multiplier
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidSize(f"invalid size {value!r}: not a finite number")
        amount, multiplier = Fraction(value), default_multiplier
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None:
            raise InvalidSize(
                f"invalid size {value!r}: expected a number with an optional unit, like '512MiB', "
                "'1.5 GiB' or '1024'"
            )
        unit = match["unit"].lower()
        if unit:
            multiplier = _UNITS.get(unit)
            if multiplier is None:
                raise InvalidSize(
                    f"invalid size {value!r}: unknown unit {match['unit']!r} "
                    "(use B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB)"
                )
        else:
            multiplier = default_multiplier
        amount = Fraction(match["number"])  # exact, so "0.1" stays one tenth
    else:
        raise InvalidSize(
            f"invalid size {value!r}: expected a number of bytes or a string like '4MiB', "
            f"got {type(value).__name__}"
        )

    if amount < 0:
        raise InvalidSize(f"invalid size {value!r}: sizes cannot be negative")
    exact = amount * multiplier
    if multiplier == 1 and exact.denominator != 1:
        raise InvalidSize(f"invalid size {value!r}: not a whole number of bytes")
    nbytes = math.floor(exact + Fraction(1, 2))  # round half up, not to even
    if nbytes == 0 and exact > 0:
        raise InvalidSize(f"invalid size {value!r}: less than one byte")
    return nbytes


_FORMAT_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int) -> str:
    """``n`` bytes for people: "0 B", "512 B", "1.50 KiB", "4.00 MiB", "1.00 TiB".

    Below 1 KiB the count is exact; above it, two decimals in the largest binary unit up to TiB.
    Negative counts (differences) keep their sign.
    """
    if isinstance(n, bool):
        raise InvalidSize(f"format_bytes: expected an integer number of bytes, got {n!r}")
    try:
        n = operator.index(n)  # ints and numpy integers; not floats
    except TypeError:
        raise InvalidSize(f"format_bytes: expected an integer number of bytes, got {n!r}") from None
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < KiB:
        return f"{sign}{n} B"
    value = n / KiB
    unit = 0
    # Move up while the next unit would not print as "1024.00" of this one.
    while unit + 1 < len(_FORMAT_UNITS) and round(value, 2) >= 1024:
        value /= 1024
        unit += 1
    return f"{sign}{value:.2f} {_FORMAT_UNITS[unit]}"
