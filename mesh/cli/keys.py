"""``grid keys``: make, list and revoke the cluster keys the agents accept (rendering only).

    grid keys init [--json] [-c FILE]
    grid keys add NAME --role reader|writer|admin [--output FILE] [--json] [-c FILE]
    grid keys list [--json] [-c FILE]
    grid keys revoke NAME [--json] [-c FILE]

The keys live in ``mesh.keys_dir`` of the cluster file, else ``<state dir>/keys``. Agents of
this machine read them there; ``grid agents deploy`` carries each other node its own secret and
the public keys. ``revoke`` changes the files, then tells every live agent the new list (the
admin-only request "trust"); an agent not told still reloads the files of its own keys directory,
so one on this machine drops the key within a second, and one elsewhere when the files reach it.
With ``--json``, ``add`` and ``revoke`` list the nodes ``told`` and those ``not_told`` (with
why) in their document instead of a line each.

Not here: the keys and their files (``mesh/security/keys.py``), what a role may do
(``mesh/security/auth.py``), the shared helpers (``mesh/cli/common.py``).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mesh import protocol as P
from mesh.cli.common import InOrder, config_option, echo_json, err, line, load, ok, out
from mesh.config import ClusterConfig
from mesh.errors import MeshError
from mesh.membership import ALIVE
from mesh.security.keys import CLIENT_ROLES, KeyDir, KeyEntry, keys_dir


@click.group(cls=InOrder)
def keys() -> None:
    """Make, list and revoke the cluster keys the agents accept."""


json_option = click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")


@keys.command("init")
@config_option
@json_option
def keys_init(config_path: str | None, as_json: bool) -> None:
    """Make the cluster's keys: one per node and this machine's admin key (idempotent)."""
    cfg = load(config_path)
    kd = KeyDir(keys_dir(cfg))
    made = kd.init(cfg)
    if as_json:
        echo_json({"keys_dir": str(kd.path), "made": list(made)})
        return
    ok(f"cluster keys in {kd.path}")
    line(f"made: {', '.join(made)}" if made else "nothing to make: every key was already there")
    line("agents started from now on run authenticated; running agents must be restarted "
         "(grid agents restart), and other nodes need their keys first (grid agents deploy)")


@keys.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(CLIENT_ROLES),
              help="reader: read; writer: also write and free; admin: also manage the mesh")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="write the secret key file here (default: in the keys directory)")
@config_option
@json_option
def keys_add(name: str, role: str, output: str | None, config_path: str | None,
             as_json: bool) -> None:
    """Make a client key with a role; prints the path of its secret file."""
    cfg = load(config_path)
    kd = KeyDir(keys_dir(cfg))
    path = kd.add(name, role, cfg, Path(output) if output else None)
    doc = {"name": name, "role": role, "secret_file": str(path)}
    if not as_json:
        ok(f"{role} key {name}: {path}")
        line(f"give that file to the client, privately (GRID_KEY={path})")
    _announce(cfg, kd, doc if as_json else None)  # running agents accept it now, remote ones too


@keys.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
def keys_list(config_path: str | None, as_json: bool) -> None:
    """Every key: name, kind, role, public key and whether it is active or revoked."""
    kd = KeyDir(keys_dir(load(config_path)))
    if not kd.exists():
        raise MeshError(f"{kd.path}: no cluster keys here (run `grid keys init`)")
    rows = [(e, "active") for e in kd.entries()] + [(e, "revoked") for e in kd.revoked()]
    if as_json:
        echo_json([{**e.to_dict(), "status": status} for e, status in rows])
        return
    table = Table(title=f"Cluster keys in {kd.path}")
    for col in ("Name", "Kind", "Role", "Public key", "Status"):
        table.add_column(col)
    for e, status in rows:
        shown = "green" if status == "active" else "red"
        table.add_row(escape(e.name), e.kind, e.role, escape(e.public.decode()[:12]) + "…",
                      f"[{shown}]{status}[/{shown}]")
    out.print(table)


@keys.command("revoke")
@click.argument("name")
@config_option
@json_option
def keys_revoke(name: str, config_path: str | None, as_json: bool) -> None:
    """Revoke a client key: the agents stop accepting it."""
    cfg = load(config_path)
    kd = KeyDir(keys_dir(cfg))
    entry = kd.revoke(name)
    doc = {"name": entry.name, "role": entry.role, "revoked": True,
           "revoked_dir": str(kd.path / "revoked")}
    if not as_json:
        ok(f"revoked {entry.role} key {entry.name} (moved to {kd.path / 'revoked'})")
    _announce(cfg, kd, doc if as_json else None)


def _announce(cfg: ClusterConfig, kd: KeyDir, doc: dict | None = None) -> None:
    """Tell the running agents the new allow-list; say which were told, which were not and
    what then: a line each, or with ``doc`` (``--json``) in it, printed at the end."""
    told, problems = tell_agents(cfg, kd.entries())
    from mesh.nodes.local import is_managed_locally

    over_ssh = not all(is_managed_locally(n) for n in cfg.nodes)
    if doc is not None:
        echo_json({**doc, "told": told, "not_told": problems, "deploy_needed": over_ssh})
        return
    for node in told:
        line(f"node {node} told")
    for node, problem in problems.items():
        err.print(f"[yellow]![/yellow] {escape(f'node {node} not told: {problem}')}; agents on "
                  "this machine reload the key files within a second anyway",
                  highlight=False, soft_wrap=True)
    if over_ssh:
        line("nodes managed over SSH get the new key files with `grid agents deploy`")


def tell_agents(cfg: ClusterConfig, entries: list[KeyEntry]) -> tuple[list[str], dict[str, str]]:
    """Send every live agent the allow list: the nodes told, and {node: why} for each one that
    was not."""
    from mesh.client import MeshClient

    fields = {"entries": [e.to_dict() for e in entries]}
    told: list[str] = []
    problems: dict[str, str] = {}
    with MeshClient(config=cfg) as client:
        try:
            alive = [n for n in client.nodes() if n.state == ALIVE]
        except MeshError:  # none running: each reads the files when it starts
            return [], {n.name: "no agent answered" for n in cfg.nodes}
        heard = {n.name for n in alive}
        for node in cfg.nodes:
            if node.name not in heard:
                problems[node.name] = "its agent is not alive"
        for n in alive:
            try:
                client._run(client._core.call(n.address, P.TRUST, fields,
                                              timeout_s=cfg.mesh.connect_timeout_s))
                told.append(n.name)
            except MeshError as exc:
                problems[n.name] = str(exc)
    return told, problems
