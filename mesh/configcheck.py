"""Small checks of cluster-file values, each naming the field it found wrong.

Every check takes a value and the field's path (``nodes[1].memory_gb``) and returns the value or
raises ``Invalid(path, problem)``; ``mesh/config.py`` turns that into one ``ConfigError`` naming
the file, and ``mesh/logconfig.py`` into one naming ``logging.<field>``. ``did_you_mean`` is the
suggestion every section gives for a misspelt key.

Not here: the sections themselves and their defaults (``mesh/config.py``, ``mesh/logconfig.py``),
sizes for humans (``mesh/units.py``).
"""

from __future__ import annotations

import difflib
import math
from typing import Any


class Invalid(Exception):
    """One bad field, found somewhere below ``parse_config``; it adds the file name."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__}"
    return repr(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(where, f"expected a non-empty string, got {describe(value)}")
    return value


def check_number(value: Any, where: str) -> float:
    """A finite number >= 0; ints stay ints (``memory_gb: 16`` prints as 16)."""
    if not is_number(value) or not math.isfinite(value) or value < 0:
        raise Invalid(where, f"expected a number >= 0, got {describe(value)}")
    return value


def check_positive(value: Any, where: str) -> float:
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise Invalid(where, f"expected a number of seconds > 0, got {describe(value)}")
    return value


def check_int(value: Any, where: str, low: int, high: int | None, shown: str | None = None) -> int:
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= low and (
        high is None or value <= high)
    if not in_range:
        wanted = f"an integer >= {low}" if high is None else f"an integer in {shown or f'{low}..{high}'}"
        raise Invalid(where, f"expected {wanted}, got {describe(value)}")
    return value


def check_tags(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise Invalid(where, f"expected a list of strings, got {describe(value)}")
    return tuple(value)


def mapping_or_empty(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(where, f"expected a mapping, got {describe(value)}")
    return value


def did_you_mean(key: Any, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
