"""What every ``grid`` command shares: output consoles, the one-line error, ``--config``.

A ``MeshError`` or a ``GridError`` ends a command with one red line on stderr and exit code 1
(``mesh/cli/__init__.py`` turns them into that line); click's usage errors exit 2.

Not here: the commands (one module per group: ``agents``, ``memory``, ``sharing``,
``rebalance``), the work they do (``mesh.client``, ``mesh.nodes``, ``mesh.balance``).
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from mesh.config import ClusterConfig, resolve_config

# Wide enough for the tables when output goes to a file or a pipe.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class GridError(click.ClickException):
    """One red line, exit 1."""

    def show(self, file: Any = None) -> None:
        fail(self.message)


def fail(message: str) -> None:
    """One red line on stderr: the message as written (no markup, never wrapped)."""
    err.print(f"[red]✗[/red] {escape(message)}", highlight=False, soft_wrap=True)


def config_option(f):
    return click.option(
        "--config", "-c", "config_path", type=click.Path(dir_okay=False),
        help="cluster file (default: $GRID_CONFIG, config/my-cluster-enhanced.yaml, "
        "then the embedded local mesh)",
    )(f)


def load(config_path: str | None) -> ClusterConfig:
    return resolve_config(config_path)




class InOrder(click.Group):
    """A group that lists its commands as defined, not sorted (``allocate`` first)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


# How each membership state is coloured in every table.
STATE_STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "down": "red"}
