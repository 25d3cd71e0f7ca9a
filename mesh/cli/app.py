"""The root ``grid`` group: every command with its one-line help, each imported when it runs.

    grid agents deploy|start|status|stop|restart|logs|drain   (mesh/cli/agents.py, rebalance.py)
    grid demo                                                 (mesh/cli/demo.py)
    grid keys init|add|list|revoke                            (mesh/cli/keys.py)
    grid memory ...                                           (mesh/cli/memory.py)
    grid resource-sharing request|status|release              (mesh/cli/sharing.py)
    grid rebalance                                            (mesh/cli/rebalance.py)
    grid top [--once] [--json] [--interval S] [--count N]     (mesh/cli/top.py)

``grid --help`` imports this module, click and ``mesh.cli.common`` only: no command module, no
rich, no client, no cluster file. Each help line below is the first sentence of the command's
docstring (``tests/integration/test_startup.py`` keeps them equal).

Not here: the commands and their shared helpers (the modules above, ``mesh/cli/common.py``),
error handling (``mesh/cli/__init__.py``).
"""

from __future__ import annotations

import click

from mesh import __version__
from mesh.cli.common import LazyGroup

COMMANDS = {
    "agents": ("mesh.cli.agents:agents", "Start, watch and stop the mesh agents."),
    "demo": ("mesh.cli.demo:demo",
             "Start the local agents, write and read back data on every node, show the mesh."),
    "keys": ("mesh.cli.keys:keys", "Make, list and revoke the cluster keys the agents accept."),
    "memory": ("mesh.cli.memory:memory", "Allocate blocks, store and retrieve files under keys, "
               "and watch the memory pool."),
    "rebalance": ("mesh.cli.rebalance:rebalance",
                  "Move blocks off nodes over memory_pressure_high until they are under "
                  "memory_pressure_low; reserve room on the master's behalf when the master is "
                  "over."),
    "resource-sharing": ("mesh.cli.sharing:resource_sharing",
                         "Reserve worker resources with Ray placement groups, watch and release "
                         "them."),
    "top": ("mesh.cli.top:top",
            "A live view of every node: state, used memory, ops/s, GB/s in and out, errors."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grid")
def cli() -> None:
    """The memory mesh: use the RAM of worker machines as if it were your own."""
