"""The cluster keys: CurveZMQ key pairs in certificate files, which agents accept, and which one a
client authenticates with.

A keys directory (``keys_dir(cfg)``: ``mesh.keys_dir``, else ``<state dir>/keys``) on the master::

    keys/                                              0700, every *.key_secret 0600
      agents/<node>.key, agents/<node>.key_secret      one pair per node of the cluster file
      clients/<name>.key (+ <name>.key_secret)         role reader | writer | admin
      clients/admin.key, clients/admin.key_secret      the master's own admin key (``init``)
      revoked/<name>.key                               revoked client keys, moved here

A node gets only its own secret and the public certificates (``KeyDir.node_bundle``, carried by
``mesh/nodes/deploy.py`` into ``<deploy dir>/keys``). Files are in the czmq certificate format,
so ``zmq.auth.load_certificate`` reads every one of them::

    metadata
        name = "gpu1"
        role = "agent"
    curve
        public-key = "<z85, 40 characters>"
        secret-key = "<z85>"                          (secret files only)

Both files of a pair carry the metadata (``zmq.auth.create_certificates`` writes it to the secret
file only, and this module needs it in the public one too, so the files are written here, in the
same format). A client's secret file also names every agent it may reach, one line each:
``agent.<node> = "<data address> <agent public key>"``, so a client on another machine needs
nothing but that file (``load_client_key``).

Roles are ordered: each includes the powers of those before it (``ROLES``). Deciding what a role
may do, and the ZAP handler that checks keys, are not here (``mesh/security/auth.py``); nor the
sockets that use the keys (``mesh/security/link.py``), nor rendering (``mesh/cli/keys.py``).
Every mistake is a ``ConfigError`` with one line naming the file or the name.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from mesh.errors import ConfigError

if TYPE_CHECKING:
    from mesh.config import ClusterConfig

ROLES = ("reader", "writer", "admin", "agent")  # each includes the powers of those before it
CLIENT_ROLES = ROLES[:3]
KINDS = ("agent", "client")
DEFAULT_CLIENT = "admin"
ENV_VAR = "GRID_KEY"

AGENTS, CLIENTS, REVOKED = "agents", "clients", "revoked"
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


@dataclass(frozen=True)
class KeyEntry:
    """One public key the agents accept."""

    name: str
    role: str
    public: bytes  # z85, 40 bytes, as zmq.auth.load_certificate returns it
    kind: str  # "agent" or "client"

    def to_dict(self) -> dict[str, str]:
        """The form that travels (the "trust" request) and that ``write_allow_list`` takes."""
        return {"name": self.name, "role": self.role, "public": self.public.decode(),
                "kind": self.kind}


@dataclass(frozen=True)
class ClientKey:
    """What a client (or the CLI) authenticates with."""

    name: str
    role: str
    public: bytes
    secret: bytes
    path: Path
    agents: dict[str, tuple[str, bytes]]  # node -> (data address "tcp://host:port", public z85)


# --- the certificate format ---------------------------------------------------------------------


def _cert_text(public: bytes, secret: bytes | None, metadata: dict[str, str]) -> str:
    kind = "Secret" if secret is not None else "Public"
    lines = [f"#   ****  Generated on {datetime.datetime.now()} by memory-mesh  ****",
             f"#   ZeroMQ CURVE {kind} Certificate", ""]
    if secret is not None:
        lines.insert(2, "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines.append("metadata")
    lines += [f'    {k} = "{v}"' for k, v in metadata.items()]
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _read_cert(path: Path) -> tuple[bytes, bytes | None, dict[str, str]]:
    """(public, secret or None, metadata) of one certificate file; ConfigError naming it when it
    is missing, unreadable or not a certificate."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such key file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read key file: {reason}") from None
    section, metadata, curve = "", {}, {}
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            section = raw.strip()
            continue
        key, sep, value = raw.strip().partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        (metadata if section == "metadata" else curve)[key.strip()] = value
    public = curve.get("public-key", "").encode()
    secret = curve.get("secret-key", "").encode() or None
    if not _Z85_KEY.fullmatch(public) or (secret is not None and not _Z85_KEY.fullmatch(secret)):
        raise ConfigError(f"{path}: not a CurveZMQ certificate (no valid public-key line)")
    return public, secret, metadata


def _write_new(path: Path, text: str, mode: int) -> None:
    """Write ``path`` with ``mode`` from its first byte; never overwrites (FileExistsError).

    Written whole under a temporary name first, then linked in place, so an agent reloading the
    directory never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_mode(tmp, text, mode, exclusive=False)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_mode(path: Path, text: str, mode: int, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, mode)  # whatever the umask
        f.write(text)


def _check_name(name: str, what: str = "key name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"bad {what} {name!r}: use letters, digits, '-', '_' and '.' only")
    return name


def _check_role(role: str, allowed: tuple[str, ...] = CLIENT_ROLES) -> str:
    if role not in allowed:
        raise ConfigError(f"bad role {role!r}: expected one of {', '.join(allowed)}")
    return role


# --- where the keys are -------------------------------------------------------------------------


def keys_dir(cfg: ClusterConfig) -> Path:
    """``mesh.keys_dir`` of the cluster file, else ``keys`` under this machine's state dir
    (``mesh/paths.py``)."""
    from mesh.paths import keys_path

    return keys_path(cfg)


class KeyDir:
    """A keys directory, on the master (every key) or on a node (its own secret, the publics)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"KeyDir({str(self.path)!r})"

    def _file(self, sub: str, name: str, suffix: str = PUBLIC_SUFFIX) -> Path:
        return self.path / sub / f"{name}{suffix}"

    def exists(self) -> bool:
        """Initialised: ``agents/`` holds at least one agent's public key."""
        agents = self.path / AGENTS
        return agents.is_dir() and any(agents.glob(f"*{PUBLIC_SUFFIX}"))

    def _require(self) -> None:
        if not self.exists():
            raise ConfigError(f"{self.path}: no cluster keys here (run `grid keys init`)")

    def _mkdirs(self) -> None:
        for d in (self.path, self.path / AGENTS, self.path / CLIENTS, self.path / REVOKED):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def _make_pair(self, sub: str, name: str, role: str,
                   extra: dict[str, str] | None = None, secret_at: Path | None = None) -> Path:
        public, secret = zmq.curve_keypair()
        meta = {"name": name, "role": role}
        secret_path = secret_at or self._file(sub, name, SECRET_SUFFIX)
        text = _cert_text(public, secret, {**meta, **(extra or {})})
        if secret_at is None:
            _write_new(secret_path, text, 0o600)
        else:  # a file of the user's choosing: created exclusively, never replaced
            _write_mode(secret_path, text, 0o600, exclusive=True)
        try:
            _write_new(self._file(sub, name), _cert_text(public, None, meta), 0o644)
        except BaseException:
            secret_path.unlink(missing_ok=True)
            raise
        return secret_path

    def init(self, cfg: ClusterConfig) -> list[str]:
        """Make the directory and every key missing: one per node of ``cfg``, and the master's
        admin client key. Never replaces a key; returns what it made ("agent n1", "client
        admin")."""
        for node in cfg.nodes:
            _check_name(node.name, "node name (for its key file)")
        self._mkdirs()
        made = []
        for node in cfg.nodes:
            if not self._file(AGENTS, node.name).exists():
                self._make_pair(AGENTS, node.name, "agent")
                made.append(f"agent {node.name}")
        used = (self._file(CLIENTS, DEFAULT_CLIENT).exists()
                or self._file(REVOKED, DEFAULT_CLIENT).exists())
        if not used:
            self._make_pair(CLIENTS, DEFAULT_CLIENT, "admin", self._agent_lines(cfg))
            made.append(f"client {DEFAULT_CLIENT}")
        return made

    def _agent_lines(self, cfg: ClusterConfig) -> dict[str, str]:
        """``agent.<node>`` metadata: where each agent of ``cfg`` listens, and its public key."""
        public = self.agent_public()
        return {f"agent.{n.name}": f"{n.data_address} {public[n.name].decode()}"
                for n in cfg.nodes if n.name in public}

    def add(self, name: str, role: str, cfg: ClusterConfig, output: Path | None = None) -> Path:
        """A new client key; returns the path of its secret file (``output``, else
        ``clients/<name>.key_secret``). Its public certificate goes to ``clients/``."""
        _check_name(name)
        _check_role(role)
        self._require()
        for sub, what in ((CLIENTS, "a client key"), (REVOKED, "a revoked key"),
                          (AGENTS, "an agent key")):
            if self._file(sub, name).exists():
                raise ConfigError(f"{name!r} is already used by {what} in {self.path}")
        if output is not None:
            output = Path(output).expanduser()
            if output.exists():
                raise ConfigError(f"{output}: file exists (a key is never written over a file)")
            if not output.parent.is_dir():
                raise ConfigError(f"{output}: no such directory {output.parent}")
        try:
            return self._make_pair(CLIENTS, name, role, self._agent_lines(cfg), output)
        except FileExistsError as exc:  # made meanwhile by someone else
            raise ConfigError(f"{exc.filename2 or exc.filename}: file exists") from None

    def _entries(self, sub: str, kind: str) -> list[KeyEntry]:
        folder = self.path / sub
        if not folder.is_dir():
            return []
        return [_entry(path, kind) for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}"))]

    def entries(self) -> list[KeyEntry]:
        """The keys the agents accept: every agent's and the current (not revoked) clients'."""
        return self._entries(AGENTS, "agent") + self._entries(CLIENTS, "client")

    def revoked(self) -> list[KeyEntry]:
        return self._entries(REVOKED, "client")

    def revoke(self, name: str) -> KeyEntry:
        """Move client ``name``'s public certificate (and its secret, when it is here) to
        ``revoked/``; the agents stop accepting it when they reload."""
        _check_name(name)
        self._require()
        if self._file(AGENTS, name).exists() and not self._file(CLIENTS, name).exists():
            raise ConfigError(f"{name!r} is an agent key: agent keys are not revoked (remove the "
                              "node from the cluster file instead)")
        if self._file(REVOKED, name).exists():
            raise ConfigError(f"{name!r} is already revoked")
        public_path = self._file(CLIENTS, name)
        if not public_path.exists():
            known = ", ".join(e.name for e in self._entries(CLIENTS, "client")) or "none"
            raise ConfigError(f"no client key {name!r} in {self.path} (known: {known})")
        if name == DEFAULT_CLIENT:
            raise ConfigError(f"{name!r} is the master's own key (grid uses it to tell the agents "
                              "about revocations); it cannot be revoked")
        entry = _entry(public_path, "client")
        (self.path / REVOKED).mkdir(mode=0o700, exist_ok=True)
        secret = self._file(CLIENTS, name, SECRET_SUFFIX)
        if secret.exists():
            os.replace(secret, self._file(REVOKED, name, SECRET_SUFFIX))
        os.replace(public_path, self._file(REVOKED, name))
        return entry

    def allow_list(self) -> dict[bytes, KeyEntry]:
        """Public key -> entry, for the ZAP handler."""
        return {e.public: e for e in self.entries()}

    def agent_key(self, node: str) -> tuple[bytes, bytes]:
        """(public, secret) of ``node``'s agent."""
        _check_name(node, "node name")
        path = self._file(AGENTS, node, SECRET_SUFFIX)
        if not path.exists():
            raise ConfigError(f"{path}: no secret key for node {node!r} here "
                              "(run `grid keys init` on the master, then `grid agents deploy`)")
        public, secret, _ = _read_cert(path)
        if secret is None:
            raise ConfigError(f"{path}: not a secret certificate (no secret-key line)")
        return public, secret

    def agent_public(self) -> dict[str, bytes]:
        """Node -> its agent's public key."""
        return {e.name: e.public for e in self._entries(AGENTS, "agent")}

    def stamp(self) -> tuple:
        """A cheap change detector: (mtime_ns, number of public keys) of ``agents/`` and
        ``clients/``; adding, replacing, revoking a key changes it."""
        out: list = []
        for sub in (AGENTS, CLIENTS):
            folder = self.path / sub
            try:
                mtime = folder.stat().st_mtime_ns
                count = sum(1 for _ in folder.glob(f"*{PUBLIC_SUFFIX}"))
            except OSError:
                mtime, count = None, 0
            out += [mtime, count]
        return tuple(out)

    def write_allow_list(self, entries: list[dict]) -> None:
        """On a node: make ``agents/`` and ``clients/`` hold exactly these public certificates
        ({name, role, public (z85 str), kind} each); secrets are left as they are. What the
        master pushes when it revokes a key."""
        wanted: dict[Path, KeyEntry] = {}
        for i, doc in enumerate(entries):
            entry = _entry_from_dict(doc, i)
            sub = AGENTS if entry.kind == "agent" else CLIENTS
            wanted[self._file(sub, entry.name)] = entry
        for d in (self.path, self.path / AGENTS, self.path / CLIENTS):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, entry in wanted.items():
            try:
                public, _, meta = _read_cert(path)
                if (public, meta.get("name"), meta.get("role")) == (
                        entry.public, entry.name, entry.role):
                    continue
            except ConfigError:
                pass
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            _write_mode(tmp, _cert_text(entry.public, None,
                                        {"name": entry.name, "role": entry.role}), 0o644,
                        exclusive=False)
            os.replace(tmp, path)
        for sub in (AGENTS, CLIENTS):
            for path in (self.path / sub).glob(f"*{PUBLIC_SUFFIX}"):
                if path not in wanted:
                    path.unlink()

    def node_bundle(self, node: str) -> dict[str, bytes]:
        """What ``node`` needs, relative path -> content: its own secret and every public
        certificate of ``agents/`` and ``clients/``; no other secret."""
        self.agent_key(node)  # it must be there, and be a secret certificate
        bundle = {f"{AGENTS}/{node}{SECRET_SUFFIX}":
                  self._file(AGENTS, node, SECRET_SUFFIX).read_bytes()}
        for sub in (AGENTS, CLIENTS):
            for path in sorted((self.path / sub).glob(f"*{PUBLIC_SUFFIX}")):
                _read_cert(path)  # a corrupt file stops here, not on the node
                bundle[f"{sub}/{path.name}"] = path.read_bytes()
        return bundle


def _entry(path: Path, kind: str) -> KeyEntry:
    """The entry of one public certificate of ``agents/`` (kind "agent") or ``clients/``."""
    public, _, meta = _read_cert(path)
    role = meta.get("role", "agent" if kind == "agent" else "")
    if role not in ROLES or (kind == "agent") != (role == "agent"):
        what = "an agent" if kind == "agent" else "a client"
        raise ConfigError(f"{path}: bad role {role!r} for {what} key")
    return KeyEntry(meta.get("name", path.name.removesuffix(PUBLIC_SUFFIX)), role, public, kind)


def _entry_from_dict(doc: object, i: int) -> KeyEntry:
    where = f"allow list entry {i}"
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(doc).__name__}")
    try:
        name, role, public, kind = doc["name"], doc["role"], doc["public"], doc["kind"]
    except KeyError as exc:
        raise ConfigError(f"{where}: missing field {exc.args[0]!r}") from None
    _check_name(name)
    _check_role(role, ROLES)
    if kind not in KINDS or (kind == "agent") != (role == "agent"):
        raise ConfigError(f"{where}: bad kind {kind!r} for role {role!r}")
    raw = public.encode() if isinstance(public, str) else public
    if not isinstance(raw, bytes) or not _Z85_KEY.fullmatch(raw):
        raise ConfigError(f"{where}: public must be a 40-character z85 key")
    return KeyEntry(name, role, raw, kind)


# --- the client's side --------------------------------------------------------------------------


def load_client_key(path: str | os.PathLike) -> ClientKey:
    """The key in a secret certificate file (as ``grid keys add`` writes it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a key file")
    public, secret, meta = _read_cert(path)
    if secret is None:
        raise ConfigError(f"{path}: not a secret key file (no secret-key line; "
                          f"the {SECRET_SUFFIX} file is the one a client uses)")
    role = meta.get("role", "")
    if role not in ROLES:
        raise ConfigError(f"{path}: bad role {role!r} (expected one of {', '.join(ROLES)})")
    agents: dict[str, tuple[str, bytes]] = {}
    for key, value in meta.items():
        if key.startswith("agent."):
            address, _, agent_public = value.partition(" ")
            if not address or not _Z85_KEY.fullmatch(agent_public.encode()):
                raise ConfigError(f"{path}: bad line {key} = {value!r} "
                                  "(expected \"<address> <public key>\")")
            agents[key[len("agent."):]] = (address, agent_public.encode())
    name = meta.get("name") or path.name.removesuffix(SECRET_SUFFIX)
    return ClientKey(name, role, public, secret, path, agents)


def find_client_key(explicit: str | os.PathLike | None, cfg: ClusterConfig) -> ClientKey | None:
    """The key to authenticate with, first found of: ``explicit``, ``$GRID_KEY``, the master's
    admin key (``clients/admin.key_secret`` of ``keys_dir(cfg)``), and on a node (whose keys
    directory holds one secret: its agent's, see ``node_bundle``) that agent's key, for the
    tools that run there (``mesh/nodes/nodectl.py``); None when there is none.

    For the keys found in the keys directory, the agents are those of that directory at the
    addresses of ``cfg`` (the cluster file may have moved them since the key was made)."""
    if explicit:
        return load_client_key(explicit)
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        if not Path(from_env).expanduser().exists():
            raise ConfigError(f"{from_env}: no such key file (named by ${ENV_VAR})")
        return load_client_key(from_env)
    kd = KeyDir(keys_dir(cfg))
    default = kd._file(CLIENTS, DEFAULT_CLIENT, SECRET_SUFFIX)
    if not default.exists():
        own = sorted((kd.path / AGENTS).glob(f"*{SECRET_SUFFIX}"))
        if len(own) != 1:  # none, or the master's directory without its admin key
            return None
        default = own[0]
    key = load_client_key(default)
    public = kd.agent_public()
    agents = {n.name: (n.data_address, public[n.name]) for n in cfg.nodes if n.name in public}
    return ClientKey(key.name, key.role, key.public, key.secret, key.path, agents)
