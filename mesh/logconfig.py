"""The cluster file's ``logging:`` section: what the agents' logs look like and how big they grow.

::

    logging:
      level: INFO          # DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)
      format: text         # text (one line for humans) or json (one JSON object per line)
      max_bytes: 16MiB     # an agent's log file is rotated at this size (at least 1KiB) ...
      backups: 3           # ... keeping this many old files (.1 is the newest); 0: never rotate
      file: /var/log/mesh/{node}.log   # optional: where an agent started by hand writes its log

``parse_logging`` checks a section and returns a frozen ``LoggingConfig``; ``LoggingConfig``
also checks itself, so ``dataclasses.replace(cfg, format="xml")`` fails the same way. Errors are
``ConfigError`` with a ``logging.<field>`` path (``mesh/config.py`` adds the file name), and a
misspelt key is an error with a suggestion, as in the ``mesh:`` section.

Not here: setting up the agent's handlers and formats (``agents/logs.py``), the rest of the
cluster file (``mesh/config.py``). ``file`` is used by an agent started without ``--log-file``;
``grid agents start`` always passes ``--log-file`` (its state directory), so ``grid agents logs``
knows where to look.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from mesh.configcheck import describe, did_you_mean
from mesh.errors import ConfigError, InvalidSize
from mesh.units import KiB, MiB, parse_size

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
MIN_MAX_BYTES = 1 * KiB
MAX_BACKUPS = 100


@dataclass(frozen=True)
class LoggingConfig:
    """The ``logging:`` section, checked. ``level`` is kept upper case."""

    level: str = "INFO"
    format: str = "text"
    max_bytes: int = 16 * MiB
    backups: int = 3
    file: str | None = None  # absolute (or ~); "{node}" becomes the node's name

    def __post_init__(self) -> None:
        if not isinstance(self.level, str) or self.level.upper() not in LEVELS:
            raise _invalid("level", f"expected one of {', '.join(LEVELS)}, got {self.level!r}"
                           f"{did_you_mean(str(self.level).upper(), LEVELS)}")
        object.__setattr__(self, "level", self.level.upper())
        if self.format not in FORMATS:
            raise _invalid("format", f"expected {' or '.join(FORMATS)}, got {self.format!r}"
                           f"{did_you_mean(str(self.format).lower(), FORMATS)}")
        if not _is_int(self.max_bytes) or self.max_bytes < MIN_MAX_BYTES:
            raise _invalid("max_bytes", f"expected a size of at least 1KiB, got {self.max_bytes!r}")
        if not _is_int(self.backups) or not 0 <= self.backups <= MAX_BACKUPS:
            raise _invalid("backups", f"expected an integer in 0..{MAX_BACKUPS}, "
                           f"got {self.backups!r}")
        if self.file is not None:
            if not isinstance(self.file, str) or not self.file.strip():
                raise _invalid("file", f"expected a path, got {self.file!r}")
            if not os.path.isabs(os.path.expanduser(self.file)):
                raise _invalid("file", f"expected an absolute path (agents start in any "
                               f"directory), got {self.file!r}")

    def file_for(self, node: str) -> str | None:
        """The log file of ``node``'s agent when none is given on its command line."""
        if self.file is None:
            return None
        return os.path.expanduser(self.file.replace("{node}", node))


_FIELDS = tuple(f.name for f in fields(LoggingConfig))


def parse_logging(section: Any) -> LoggingConfig:
    """Check a ``logging:`` section (None: all defaults); sizes may be written ``16MiB``."""
    if section is None:
        return LoggingConfig()
    if not isinstance(section, dict):
        raise ConfigError(f"logging: expected a mapping, got {describe(section)}")
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _FIELDS:
            raise _invalid(str(key), f"unknown key{did_you_mean(str(key), _FIELDS)} "
                           f"(known: {', '.join(_FIELDS)})")
        if key == "max_bytes" and isinstance(value, str):
            try:
                value = parse_size(value)
            except InvalidSize as exc:
                raise _invalid("max_bytes", str(exc)) from None
        kwargs[key] = value
    return LoggingConfig(**kwargs)


def _invalid(field_name: str, problem: str) -> ConfigError:
    return ConfigError(f"logging.{field_name}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
