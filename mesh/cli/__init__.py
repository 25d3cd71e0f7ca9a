"""``grid``: the memory mesh's command line (click, rich).

    grid agents deploy|start|status|stop|restart|logs|drain   (mesh/cli/app.py, rebalance.py)
    grid demo                                                 (mesh/cli/app.py)
    grid memory ...                                           (mesh/cli/memory.py)
    grid resource-sharing request|status|release              (mesh/cli/sharing.py)
    grid rebalance                                            (mesh/cli/rebalance.py)

``main`` is the console script. It turns every error a user can cause into one line on stderr
and an exit code: 1 for a ``MeshError`` or a ``GridError`` (bad config, unknown node,
unreachable agents, a missing optional dependency), 2 for click's usage errors, 130 on Ctrl-C,
141 when the reader of our output went away. No user mistake prints a traceback.

This module imports nothing heavy itself, so ``grid`` fails with one line, not a traceback,
when the ``cli`` extra (click, rich) is not installed.
"""

from __future__ import annotations

import os
import sys

INSTALL_HINT = "pip install 'memory-mesh[cli]'"


def main() -> None:
    try:
        import click

        from mesh.cli.app import cli
        from mesh.cli.common import err, fail
        from mesh.errors import MeshError
    except ModuleNotFoundError as exc:
        if exc.name not in ("click", "rich"):
            raise
        print(f"grid: the command line needs {exc.name}, which comes with the cli extra: "
              f"{INSTALL_HINT}", file=sys.stderr)
        sys.exit(1)
    try:
        cli.main(prog_name="grid", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MeshError as exc:
        fail(str(exc))
        sys.exit(1)
    except BrokenPipeError:
        # The reader of our output went away (`grid memory retrieve K -o - | head`).
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        sys.exit(141)  # 128 + SIGPIPE, as shell tools do
    except OSError as exc:  # a file we were told to read or write
        fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
