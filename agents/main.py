"""``mesh-agent``: start one agent for one node of a cluster file.

    mesh-agent [--config FILE] --node NAME [--keys DIR] [--sealed-port PORT] [--advertise HOST]
               [--insecure] [--log-level LEVEL] [--log-file PATH]

The node's ``mesh_host`` (default its ``host``) and ``mesh_port`` say where it binds; its peers'
gossip addresses come from the same file. With cluster keys (``--keys DIR``, default the
cluster's keys directory when ``grid keys init`` made one: ``mesh/security/keys.py``) every
socket is authenticated and sessions are sealed (``agents/access.py``), loopback included.
Without keys, binding anything but a loopback address is refused unless ``--insecure`` (or
``mesh.insecure: true``) says so, and then a warning is logged at start.

The log follows the cluster file's ``logging:`` section (level, ``text`` or ``json``, rotation
size: ``mesh/logconfig.py``, ``agents/logs.py``); ``--log-level`` overrides its level. It goes
to ``--log-file`` (else ``logging.file``, else stderr), rotated by size. What happens before the
log is set up (a bad cluster file, a crash at import) is only on stderr, so whoever starts the
agent keeps stderr too (``grid agents start``: ``<node>.out`` beside ``<node>.log``).

Exit codes: 0 after SIGTERM/SIGINT, 2 for a usage or config error, 1 when the sockets cannot be
bound (address in use, address not on this host). Errors are one line on stderr (and in the log,
once it is set up).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import sys

import zmq

from agents import logs
from agents.ledger import default_path as ledger_path
from agents.limits import raise_fd_limit
from agents.server import Agent, AgentSettings
from mesh import __version__
from mesh._malloc import tune_for_transfers
from mesh.config import ClusterConfig, NodeConfig, resolve_config
from mesh.errors import ConfigError
from mesh.logconfig import LEVELS
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
        heartbeat_intake_per_s=m.heartbeat_intake_per_s,
        heartbeat_host_intake_per_s=m.heartbeat_host_intake_per_s,
        max_message_bytes=m.max_message_bytes,
        chunk_bytes=m.chunk_bytes,
        version=__version__,
        ledger_path=str(ledger_path(m.state_dir)),
        lease_s=m.lease_s,
        eviction_policy=m.eviction_policy,
        metrics_port=node.metrics_port or 0,
        local_access=m.local_access,
        direct_tcp=m.direct_tcp,
        direct_port=node.direct_port or 0,
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
    parser.add_argument("--log-level", type=str.upper, choices=LEVELS, default=None,
                        help="overrides the cluster file's logging.level")
    parser.add_argument("--log-file", help="write the log there, rotated by size (default: "
                        "the cluster file's logging.file, else stderr)")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args.config)
        node = cfg.node(args.node)
    except ConfigError as exc:
        print(f"mesh-agent: {exc}", file=sys.stderr)
        return 2
    log_file = args.log_file or cfg.logging.file_for(node.name)
    try:
        logs.setup(cfg.logging, node.name, log_file, args.log_level)
    except OSError as exc:
        print(f"mesh-agent: cannot write the log file {log_file}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    log = logging.getLogger("mesh.agent")
    log.debug("node %s of %s (%s), logging %s at %s to %s", node.name, cfg.name, cfg.source,
              cfg.logging.format, args.log_level or cfg.logging.level, log_file or "stderr",
              extra={"event": "config"})
    try:
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
        return _fail(str(exc), 2)
    if settings.keys is None and not is_loopback(settings.bind_ip) and not settings.insecure:
        return _fail(
            f"refusing to bind {node.mesh_host} ({settings.bind_ip}): it is not a "
            "loopback address and this cluster has no keys, so anyone on that network could "
            "read and write every block; run `grid keys init` (then deploy the keys), or "
            "pass --insecure to do it anyway", 2)
    log.debug("settings: %s", settings, extra={"event": "config"})
    if settings.insecure:  # shown in `grid agents status` too (heartbeat field "security")
        log.warning(
            "INSECURE: serving %s on %s without keys (--insecure): anyone who reaches it can "
            "read, change and free every block and key. Run `grid keys init` to authenticate "
            "and encrypt.", node.name, settings.bind_ip)
    tune_for_transfers(settings.max_message_bytes, cfg.mesh.window)
    fd_limit = raise_fd_limit()  # the agent caps its connections below it (agents/limits.py)
    log.info("file descriptor limit %d", fd_limit)
    agent = Agent(settings)
    try:
        agent.bind()
    except zmq.ZMQError as exc:
        return _fail(f"cannot bind {settings.bind_ip}:{settings.data_port}/"
                     f"{settings.gossip_port}: {exc}", 1)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.run()
    finally:
        agent.close()
    log.info("agent %s stopped", settings.node)
    return 0


def _fail(message: str, code: int) -> int:
    """A fatal error: one line on stderr, and in the log when that is a file."""
    print(f"mesh-agent: {message}", file=sys.stderr)
    if not logs.logs_to_stderr():
        logging.getLogger("mesh.agent").error("%s", message, extra={"event": "exit"})
    return code


if __name__ == "__main__":
    sys.exit(main())
