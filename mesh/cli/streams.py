"""The local ends of ``grid memory``'s transfers: the progress bar on stderr, the size of the input
when it is known, and the output file that appears under its name only once it is whole.

Not here: the commands that use them (``mesh/cli/memory.py``), the transfers themselves (the
client's streaming calls, ``mesh/client/objects.py``).
"""

from __future__ import annotations

import os
import stat as stat_mod
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from mesh.cli import common
from mesh.cli.common import GridError
from mesh.units import MiB

PROGRESS_MIN_BYTES = 32 * MiB  # smaller transfers finish before a bar would help


class Progress:
    """A progress bar (bytes, speed) on stderr, only for big transfers to a terminal.

    Called with the bytes just moved, as the client's ``progress`` callbacks are. With a known
    ``total`` the bar starts at the first call when the total is over ``PROGRESS_MIN_BYTES``; with
    an unknown total (a pipe) it starts once that many bytes have gone by.
    """

    def __init__(self, label: str, total: int | None):
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is None:
            if not self.enabled:
                return
            big = self.total if self.total is not None else self.done
            if big <= PROGRESS_MIN_BYTES:
                return
            self._start()
        self._bar.update(self._task, completed=self.done)

    def _start(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress as RichProgress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(), console=common.err, transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.done)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def input_size(source: str) -> int | None:
    """Bytes in the input, when it is known up front (a regular file, or stdin redirected from one)."""
    try:
        st = os.fstat(sys.stdin.fileno()) if source == "-" else os.stat(source)
    except (OSError, ValueError):
        return None
    return st.st_size if stat_mod.S_ISREG(st.st_mode) else None


@contextmanager
def output_file(dest: str) -> Iterator[BinaryIO]:
    """A binary file for ``dest``: stdout for "-", else a temporary file renamed into place on
    success (so a failed transfer never leaves a truncated file under the name asked for)."""
    if dest == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(dest)
    if path.is_dir():
        raise GridError(f"{dest}: is a directory")
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: write to it as it is
        with open(path, "wb") as f:
            yield f
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:  # name the user's path, not the hidden temporary one
        raise GridError(f"{dest}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        if path.exists():
            mode = stat_mod.S_IMODE(path.stat().st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def is_text(data: bytes, truncated: bool) -> str | None:
    """``data`` as text when it is UTF-8 without control characters (else ``None``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A preview cut in the middle of a multi-byte character is still text.
        if truncated and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
            text = data[: exc.start].decode("utf-8", errors="strict")
        else:
            return None
    if all(ch.isprintable() or ch in "\n\r\t" for ch in text):
        return text
    return None


def hex_dump(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), 16):
        row = data[i : i + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{i:08x}  {hexes:<47}  |{ascii_}|")
    return "\n".join(lines)
