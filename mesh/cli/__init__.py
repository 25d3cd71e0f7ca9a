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
and an exit code, the same for every command (the table is in docs/memory-cli.md, "Exit codes"):

    0    done
    1    a ``MeshError`` or a ``GridError`` (bad config or value, unknown node, block or key,
         unreachable agents, no room, a local file we could not read or write, a node that
         failed to start, a listing that misses a node, a move that failed; a missing optional
         dependency: ``MissingExtra`` names the extra)
    2    click's usage errors (unknown command or option, a missing argument)
    130  Ctrl-C
    141  the reader of our output went away (``| head``)

No user mistake prints a traceback. With ``--json`` anywhere on the command line (before a lone
``--``) that line is one JSON object instead of red text, whatever failed, usage errors
included: ``{"error": {"type": "BlockNotFound", "message": "...", "node": null}}``, where
``type`` is the exception's class name (``usage`` for click's usage errors) and ``node`` the
node the error is about when the error knows it (``json_error``). The exit code is the same.

This module imports nothing heavy itself, so ``grid`` fails with one line, not a traceback,
when the ``cli`` extra (click, rich) is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import warnings

INSTALL_HINT = "pip install 'memory-mesh[cli]'"
CLI_MODULES = ("click", "rich")  # what the cli extra brings


def _missing_cli(exc: ModuleNotFoundError) -> None:
    """One line naming the cli extra when ``exc`` is about click or rich; else re-raise."""
    name = (exc.name or "").partition(".")[0]
    if name not in CLI_MODULES:
        raise exc
    message = f"the command line needs {name}, which comes with the cli extra: {INSTALL_HINT}"
    if json_mode():
        print(json_error("MissingExtra", message), file=sys.stderr)
    else:
        print(f"grid: {message}", file=sys.stderr)
    sys.exit(1)


def json_mode(argv: list[str] | None = None) -> bool:
    """``--json`` is on the command line (``argv``, default ``sys.argv[1:]``) before any lone
    ``--``: errors are then JSON objects (``json_error``)."""
    for arg in sys.argv[1:] if argv is None else argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def json_error(error_type: str, message: str, node: str | None = None) -> str:
    """The one line an error is in ``--json`` mode."""
    return json.dumps({"error": {"type": error_type, "message": message, "node": node}})


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: object = None, line: str | None = None) -> None:
    """A warning (such as ``MeshVersionWarning``) as one line on stderr, JSON in ``--json``
    mode, instead of Python's two lines with a source path."""
    if json_mode():
        print(json.dumps({"warning": {"type": category.__name__, "message": str(message)}}),
              file=sys.stderr)
    else:
        print(f"grid: warning: {message}", file=sys.stderr)


class _Interrupted(BaseException):
    """Ctrl-C in ``--json`` mode. Not a ``KeyboardInterrupt``, which click would answer with a
    blank line on stderr before ours."""


def _interrupted(signum: int, frame: object) -> None:
    raise _Interrupted()


def main() -> None:
    try:
        import click

        from mesh.cli.app import cli
    except ModuleNotFoundError as exc:
        _missing_cli(exc)
    from mesh.cli import common
    from mesh.errors import MeshError

    warnings.showwarning = _one_line_warning
    as_json = json_mode()
    if as_json and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)
    # rich is imported with the first thing a command prints, which may be its error
    try:
        try:
            code = cli.main(prog_name="grid", standalone_mode=False)
        except (click.exceptions.Abort, _Interrupted, KeyboardInterrupt):
            if as_json:
                common.fail("aborted", error_type="KeyboardInterrupt")
            else:
                common.err.print("aborted")
            sys.exit(130)
        except click.UsageError as exc:
            if as_json:
                common.fail(exc.format_message(), error_type="usage")
            else:
                exc.show()
            sys.exit(exc.exit_code)
        except common.GridError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:  # click's own, such as a file it could not open
            if as_json:
                common.fail(exc.format_message(), error_type=type(exc).__name__)
            else:
                exc.show()
            sys.exit(exc.exit_code)
        except MeshError as exc:
            common.fail(str(exc), node=exc.node, error_type=type(exc).__name__)
            sys.exit(1)
        except BrokenPipeError:
            common.quiet_broken_pipe()
        except SystemExit as exc:  # rich's consoles and click exit 1 when stdout's reader went away
            if isinstance(exc.__context__, BrokenPipeError):
                common.quiet_broken_pipe()
            raise
        except OSError as exc:  # a file we were told to read or write
            common.fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                        error_type=type(exc).__name__)
            sys.exit(1)
    except ModuleNotFoundError as exc:
        _missing_cli(exc)
    code = code if isinstance(code, int) else 0  # click's ctx.exit(n) without standalone mode
    if not common.tears_down():  # a command that made 100,000s of objects: skip freeing them
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            common.quiet_broken_pipe()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    if code:
        sys.exit(code)
