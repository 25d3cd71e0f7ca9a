"""``python -m mesh``: the ``grid`` command (``mesh/cli/``), for when the script is not on PATH."""

from mesh.cli import main

main()
