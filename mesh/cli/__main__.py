"""``python -m mesh.cli`` runs ``grid``."""

from mesh.cli import main

main()
