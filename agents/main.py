"""``mesh-agent``: start one agent for one node of a cluster file.

    mesh-agent [--config FILE] --node NAME [--keys DIR] [--sealed-port PORT] [--advertise HOST]
               [--insecure] [--log-level LEVEL]

The node's ``mesh_host`` (default its ``host``) and ``mesh_port`` say where it binds; its peers'
gossip addresses come from the same file. With cluster keys (``--keys DIR``, default the
cluster's keys directory when ``grid keys init`` made one: ``mesh/security/keys.py``) every
socket is authenticated and sessions are sealed (``agents/access.py``), loopback included.
Without keys, binding anything but a loopback address is refused unless ``--insecure`` (or
``mesh.insecure: true``) says so, and then a warning is logged at start.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a usage or config error, 1 when the sockets cannot be
bound (address in use, address not on this host). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import sys

import zmq

from agents.ledger import default_path as ledger_path
from agents.limits import raise_fd_limit
from agents.server import Agent, AgentSettings
from mesh import __version__
from mesh._malloc import tune_for_transfers
from mesh.config import ClusterConfig, NodeConfig, resolve_config
from mesh.errors import ConfigError
from mesh.machine import machine_id
from mesh.security.keys import KeyDir, keys_dir


def resolve_ip(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    return infos[0][4][0]


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def settings_for(cfg: ClusterConfig, node: NodeConfig) -> AgentSettings:
    m = cfg.mesh
    return AgentSettings(
        node=node.name,
        bind_ip=resolve_ip(node.mesh_host),
        data_port=node.mesh_port,
        gossip_port=node.mesh_port + 1,
        advertised_host=node.mesh_host,
        peers=[n.gossip_address for n in cfg.nodes if n.name != node.name],
        peer_nodes={n.gossip_address: n.name for n in cfg.nodes if n.name != node.name},
        share_bytes=node.share_bytes,
        reserve_bytes=m.host_reserve_bytes,
        heartbeat_interval_s=m.heartbeat_interval_s,
        suspect_after_s=m.suspect_after_s,
        dead_after_s=m.dead_after_s,
        max_message_bytes=m.max_message_bytes,
        chunk_bytes=m.chunk_bytes,
        version=__version__,
        ledger_path=str(ledger_path(m.state_dir)),
        lease_s=m.lease_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mesh-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", help="cluster file (default: $GRID_CONFIG, "
                        "config/my-cluster-enhanced.yaml, then the embedded local default)")
    parser.add_argument("--node", "-n", required=True, help="which node of the file this is")
    parser.add_argument("--version", action="version", version=f"mesh-agent {__version__}")
    parser.add_argument("--insecure", action="store_true",
                        help="allow binding a non-loopback address without cluster keys")
    parser.add_argument("--keys", help="the cluster's keys directory (default: the one "
                        "`grid keys init` made, if any)")
    parser.add_argument("--sealed-port", type=int, default=0,
                        help="port of sealed sessions on a keyed agent (default: any free port)")
    parser.add_argument("--advertise", help="the host peers and clients are told to reach this "
                        "agent at (default: its mesh_host; for NAT, proxies)")
    parser.add_argument("--domain", help="this agent's failure domain, which replicas keep "
                        "apart (default: $MESH_DOMAIN, else the machine: /etc/machine-id)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = resolve_config(args.config)
        node = cfg.node(args.node)
        settings = settings_for(cfg, node)
        keys = KeyDir(args.keys) if args.keys else KeyDir(keys_dir(cfg))
        if args.keys and not keys.exists():
            raise ConfigError(f"--keys {args.keys}: no cluster keys there (run `grid keys init`)")
        if keys.exists():
            keys.agent_key(node.name)  # a clear error now if this node has none
            settings.keys = keys
        settings.sealed_port = args.sealed_port
        if args.advertise:
            settings.advertised_host = args.advertise
        settings.domain = args.domain or machine_id()
        settings.insecure = bool(args.insecure or cfg.mesh.insecure) and settings.keys is None
    except ConfigError as exc:
        print(f"mesh-agent: {exc}", file=sys.stderr)
        return 2
    if settings.keys is None and not is_loopback(settings.bind_ip) and not settings.insecure:
        print(
            f"mesh-agent: refusing to bind {node.mesh_host} ({settings.bind_ip}): it is not a "
            "loopback address and this cluster has no keys, so anyone on that network could "
            "read and write every block; run `grid keys init` (then deploy the keys), or "
            "pass --insecure to do it anyway",
            file=sys.stderr,
        )
        return 2
    if settings.insecure:  # shown in `grid agents status` too (heartbeat field "security")
        logging.getLogger("mesh.agent").warning(
            "INSECURE: serving %s on %s without keys (--insecure): anyone who reaches it can "
            "read, change and free every block and key. Run `grid keys init` to authenticate "
            "and encrypt.", node.name, settings.bind_ip)
    tune_for_transfers(settings.max_message_bytes, cfg.mesh.window)
    fd_limit = raise_fd_limit()  # the agent caps its connections below it (agents/limits.py)
    logging.getLogger("mesh.agent").info("file descriptor limit %d", fd_limit)
    agent = Agent(settings)
    try:
        agent.bind()
    except zmq.ZMQError as exc:
        print(
            f"mesh-agent: cannot bind {settings.bind_ip}:{settings.data_port}/"
            f"{settings.gossip_port}: {exc}",
            file=sys.stderr,
        )
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.run()
    finally:
        agent.close()
    logging.getLogger("mesh.agent").info("agent %s stopped", settings.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
