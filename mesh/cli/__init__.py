"""``grid``: the memory mesh's command line (click, rich).

    grid agents deploy|start|status|stop|restart|logs|drain   (mesh/cli/agents.py, rebalance.py)
    grid demo                                                 (mesh/cli/demo.py)
    grid keys init|add|list|revoke                            (mesh/cli/keys.py)
    grid memory ...                                           (mesh/cli/memory.py)
    grid resource-sharing request|status|release              (mesh/cli/sharing.py)
    grid rebalance                                            (mesh/cli/rebalance.py)
    grid top [--once] [--json] [--interval S] [--count N]     (mesh/cli/top.py)

The root group (``mesh/cli/app.py``) knows each command's module and one-line help, and imports
a command's module only when that command runs: ``grid --help`` loads click and nothing of the
client, rich, Fabric, Ray or ``mesh.balance``, and ``grid memory ...`` nothing of Fabric, Ray or
``mesh.balance`` (``tests/integration/test_startup.py``).

``main`` is the console script. It turns every error a user can cause into one line on stderr
and an exit code: 1 for a ``MeshError`` or a ``GridError`` (bad config, unknown node,
unreachable agents, a missing optional dependency: ``MissingExtra`` names the extra), 2 for
click's usage errors, 130 on Ctrl-C, 141 when the reader of our output went away. No user
mistake prints a traceback.

This module imports nothing heavy itself, so ``grid`` fails with one line, not a traceback,
when the ``cli`` extra (click, rich) is not installed.
"""

from __future__ import annotations

import sys

INSTALL_HINT = "pip install 'memory-mesh[cli]'"
CLI_MODULES = ("click", "rich")  # what the cli extra brings


def _missing_cli(exc: ModuleNotFoundError) -> None:
    """One line naming the cli extra when ``exc`` is about click or rich; else re-raise."""
    name = (exc.name or "").partition(".")[0]
    if name not in CLI_MODULES:
        raise exc
    print(f"grid: the command line needs {name}, which comes with the cli extra: "
          f"{INSTALL_HINT}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    try:
        import click

        from mesh.cli.app import cli
    except ModuleNotFoundError as exc:
        _missing_cli(exc)
    from mesh.cli import common
    from mesh.errors import MeshError

    try:
        cli.main(prog_name="grid", standalone_mode=False)
    except click.exceptions.Abort:
        common.err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MeshError as exc:
        common.fail(str(exc))
        sys.exit(1)
    except ModuleNotFoundError as exc:  # rich, imported with the first command that prints
        _missing_cli(exc)
    except BrokenPipeError:
        common.quiet_broken_pipe()
    except OSError as exc:  # a file we were told to read or write
        common.fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
