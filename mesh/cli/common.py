"""What every ``grid`` command shares: the lazy command group, output consoles and the helpers
that print through them, the one-line error, ``--config``.

A ``MeshError`` or a ``GridError`` ends a command with one red line on stderr and exit code 1
(``mesh/cli/__init__.py`` turns them into that line); click's usage errors exit 2. With
``--json`` on the command line, ``fail`` writes that line as one JSON object instead
(``{"error": {"type", "message", "node"}}``), and so does every error of ``main``.

Sizes print through ``human``: ``mesh.units.format_bytes`` ("512.00 MiB"), in every command.

This module is imported by ``grid --help``, so it imports only click: the rich consoles ``out``
and ``err`` are made on first use (``from mesh.cli.common import out`` makes it), and the
cluster file is read (with yaml) only when a command calls ``load``.

Not here: the commands (one module per group: ``app`` (the root), ``agents``, ``demo``,
``memory``, ``sharing``, ``rebalance``), the work they do (``mesh.client``, ``mesh.nodes``,
``mesh.balance``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from mesh.config import ClusterConfig

    out: Console  # standard output (made on first use, see __getattr__)
    err: Console  # standard error


# --- consoles -----------------------------------------------------------------------------------

_consoles: dict[str, Console] = {}


def _console(name: str) -> Console:
    console = _consoles.get(name)
    if console is None:
        from rich.console import Console

        # Wide enough for the tables when output goes to a file or a pipe.
        if name == "out":
            console = Console(width=None if sys.stdout.isatty() else 160)
        else:
            console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
        _consoles[name] = console
    return console


def __getattr__(name: str) -> Any:
    """``out`` and ``err``: rich Consoles made on first use (PEP 562), so that commands which
    print nothing through rich (``--help``, ``--json``) do not import it; ``Table`` and ``Text``,
    rich's, the same way. (``from mesh.cli.common import out`` makes the console at once: use
    ``common.out``.)"""
    if name in ("out", "err"):
        return _console(name)
    if name == "Table":
        from rich.table import Table

        return Table
    if name == "Text":
        from rich.text import Text

        return Text
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- errors -------------------------------------------------------------------------------------


class GridError(click.ClickException):
    """One red line, exit 1. ``node``: the node it is about; ``error_type``: the ``type`` of
    its ``--json`` object, when it rewords a mesh error (a ``CapacityError`` with a hint keeps
    that name)."""

    def __init__(self, message: str, *, node: str | None = None,
                 error_type: str = "GridError") -> None:
        super().__init__(message)
        self.node = node
        self.error_type = error_type

    def show(self, file: Any = None) -> None:
        fail(self.message, node=self.node, error_type=self.error_type)


def fail(message: str, *, node: str | None = None, error_type: str = "GridError") -> None:
    """One red line on stderr: the message as written (no markup, never wrapped); with
    ``--json`` on the command line, one JSON object on one line instead."""
    from mesh.cli import json_error, json_mode

    if json_mode():
        sys.stderr.write(json_error(error_type, message, node) + "\n")
        sys.stderr.flush()
        return
    from rich.markup import escape

    _console("err").print(f"[red]✗[/red] {escape(message)}", highlight=False, soft_wrap=True)


def quiet_broken_pipe() -> None:
    """The reader of stdout went away (``grid memory retrieve K -o - | head``): point stdout at
    /dev/null so nothing more fails on the way out, and exit 141 (128 + SIGPIPE) as shell tools
    do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(141)


# --- output -------------------------------------------------------------------------------------


_teardown = True


def skip_teardown() -> None:
    """End this process, once its command is done, without freeing what it holds one object at
    a time (``mesh.cli.main``: ``os._exit`` after flushing): a listing of 100,000 blocks takes
    0.1-0.3 s to tear down."""
    global _teardown
    _teardown = False


def tears_down() -> bool:
    return _teardown


def ok(message: str) -> None:
    """A green tick and ``message`` as written (no markup, never wrapped)."""
    from rich.markup import escape

    _console("out").print(f"[green]✓[/green] {escape(message)}", highlight=False, soft_wrap=True)


def line(message: str) -> None:
    """``message`` as written on stdout: no markup, no highlighting, never wrapped."""
    _console("out").print(message, highlight=False, markup=False, soft_wrap=True)


def echo_json(doc: Any, *, lines: bool = False) -> None:
    """One JSON document for scripts (``--json``); ``lines``: on one line, for a stream of
    documents (JSON Lines, as ``grid rebalance --watch --json`` prints its passes)."""
    click.echo(json.dumps(doc) if lines else json.dumps(doc, indent=2))


def human(n: float | None) -> str:
    """Bytes for people, as every command prints them: "512 B", "4.77 MiB", "1.50 GiB"
    (``mesh.units.format_bytes``); "-" for no value."""
    from mesh.units import format_bytes

    return "-" if n is None else format_bytes(int(round(n)))


# How each membership state is coloured in every table.
STATE_STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "down": "red"}


# --- options and the cluster file ---------------------------------------------------------------


def config_option(f):
    return click.option(
        "--config", "-c", "config_path", type=click.Path(dir_okay=False),
        help="cluster file (default: $GRID_CONFIG, config/my-cluster-enhanced.yaml, "
        "then the embedded local mesh)",
    )(f)


def load(config_path: str | None) -> ClusterConfig:
    from mesh.config import resolve_config

    return resolve_config(config_path)


# --- groups -------------------------------------------------------------------------------------


# click 8.4+ suggests close names for a mistyped command; older clicks raise a plain UsageError
_NoSuchCommand: Any = (getattr(click.exceptions, "NoSuchCommand", None)
                       or type("_NeverRaised", (Exception,), {}))


class LazyGroup(click.Group):
    """A group whose commands may live in modules that are imported only when the command runs.

    ``lazy`` maps a command's name to ``("module:attribute", one-line help)``. ``--help`` lists
    a lazy command with that help without importing it; ``tests/integration/test_startup.py``
    checks that it says what the command's own docstring says. Commands are listed sorted, as
    click lists them.
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.load(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except _NoSuchCommand as exc:  # click suggests among loaded commands only: add the rest
            raise _NoSuchCommand(exc.command_name, possibilities=self.list_commands(ctx),
                                 ctx=ctx) from None

    def load(self, cmd_name: str) -> click.Command:
        """Import the lazy command ``cmd_name``."""
        module, _, attribute = self.lazy[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name][0]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click does it, with a stand-in that carries the help for each lazy command not
        imported yet."""
        commands = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name) or click.Command(name, help=self.lazy[name][1])
            if not cmd.hidden:
                commands.append((name, cmd))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit))
                                    for name, cmd in commands])


class InOrder(click.Group):
    """A group that lists its commands as defined, not sorted (``allocate`` first)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(value: str, option: str = "--ttl") -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``1.5h`` or ``2d``."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise GridError(f"{option} {value!r}: expected a positive duration such as 90s, 30m, 1h or 2d")
    return seconds
