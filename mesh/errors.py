"""Every error the mesh raises, in one hierarchy.

    MeshError                      base of everything below
    ├── ConfigError                a cluster file is missing, malformed or names an unknown node
    ├── InvalidRequest             a request the agent (or the client, before sending) refuses:
    │   ├── InvalidSize            zero, negative or non-integer sizes
    │   ├── OutOfRange             offset/length outside the block
    │   ├── TooLarge               a single message larger than the agent accepts
    │   └── KeyExists              a put of a key that exists, without replace
    ├── BlockNotFound              no live agent holds that block id
    ├── KeyNotFound                no object stored under that key
    ├── IntegrityError             bytes read back do not match the stored checksum
    │   └── ObjectChanged          the key named another object when a read looked it up again
    ├── CapacityError              the agent (or every live agent) has no room
    ├── ProtocolError              malformed frames, unknown op, wrong protocol version
    │   ├── VersionMismatch
    │   ├── SealError              a sealed message that does not open (mesh/security/seal.py)
    │   └── SessionLost            the agent no longer knows a client's sealed session
    ├── AuthenticationError        no key, a wrong or revoked key, or the agent is not who it
    │                              claims to be (the CURVE handshake failed)
    ├── Forbidden                  the key's role does not allow the operation (reader writing)
    ├── UnsafeObject               an object that would need unpickling from an untrusted writer,
    │                              or with allow_pickle=False
    ├── NodeUnavailable            a node is unknown, dead, or does not answer
    │   └── MeshTimeout            no reply within the timeout
    │       └── DeadlineExceeded   the agent took the request up after the client's deadline
    │                              and applied nothing (the client had given up on it)
    ├── AgentError                 the agent failed internally (it keeps serving)
    ├── BlockMoving                the block is being moved to another node; retry shortly
    │   └── NotCurrent             this copy of a replicated block cannot serve now (a backup
    │                              asked to write, a copy whose lease lapsed, one being
    │                              filled); retry at the block's current primary
    ├── StaleEpoch                 a replica set the mesh has moved on from (agent to agent)
    ├── PlacementShort             fewer nodes (or hosts) with room than the copies asked for
    ├── MoveFailed                 a move stopped half-way; the original is intact at the source
    ├── MissingExtra               an optional dependency is not installed (names the pip extra)
    ├── PlacementError             reserving resources through Ray failed
    │   ├── RayNotInstalled        Ray is not installed (also a MissingExtra: the placement extra)
    │   ├── RayUnavailable         no Ray cluster answers at the configured address
    │   ├── NoRayNode              no Ray node stands for a mesh node
    │   ├── ReservationNotFound    no reservation with that id
    │   └── ReservationFailed      Ray could not place the reservation's bundles
    ├── DeployError                installing or driving an agent over SSH failed
    └── PoolNotInitialized         the seeds' pool used before initialize() or after shutdown()

Only the classes in ``ERROR_CODES`` travel between agent and client: wire error codes map to
them through that table, so the agent and the client agree on one list. The others are raised
where they happen (the master, the client) and have codes only for ``--json`` output and logs.
Third-party errors (zmq, msgpack, yaml, OS errors, a missing module) are converted at the
boundary where they happen. This module does no I/O.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error raised by the mesh."""

    code = "error"

    def __init__(self, message: str, *, node: str | None = None):
        super().__init__(message)
        self.message = message
        self.node = node

    def __str__(self) -> str:
        return self.message


class ConfigError(MeshError):
    code = "config"


class InvalidRequest(MeshError, ValueError):
    code = "bad_request"


class InvalidSize(InvalidRequest):
    code = "invalid_size"


class OutOfRange(InvalidRequest):
    code = "out_of_range"


class TooLarge(InvalidRequest):
    code = "too_large"


class _NotFound(MeshError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class KeyExists(InvalidRequest):
    code = "key_exists"


class BlockNotFound(_NotFound):
    code = "unknown_block"


class KeyNotFound(_NotFound):
    code = "unknown_key"


class IntegrityError(MeshError):
    code = "integrity"


class ObjectChanged(IntegrityError):
    """A read that followed a moving block found its key naming another object (replaced
    meanwhile); nothing of the two is mixed. A client-side error: it never crosses the wire."""

    code = "object_changed"


class CapacityError(MeshError):
    code = "no_capacity"


class ProtocolError(MeshError):
    code = "bad_frame"


class VersionMismatch(ProtocolError):
    code = "version_mismatch"


class AuthenticationError(MeshError, PermissionError):
    code = "unauthenticated"


class Forbidden(MeshError, PermissionError):
    code = "forbidden"


class UnsafeObject(MeshError):
    code = "unsafe_object"


class SealError(ProtocolError):
    """A sealed message that does not open: garbage, tampered, replayed, reordered or of another
    session. The receiver drops it (and counts it); nothing it says is believed."""

    code = "bad_seal"


class SessionLost(ProtocolError):
    """The agent does not know this session any more: shake hands again."""

    code = "session_lost"


class NodeUnavailable(MeshError, ConnectionError):
    code = "unavailable"


class MeshTimeout(NodeUnavailable, TimeoutError):
    code = "timeout"


class DeadlineExceeded(MeshTimeout):
    """The agent took the request up after the deadline it carried (the time its client gives
    up, less ``mesh.clock_skew_s``) and applied none of it."""

    code = "deadline_exceeded"


class AgentError(MeshError):
    code = "internal"


class BlockMoving(MeshError):
    """Writes, frees and key changes wait while a block is copied; the client retries them."""

    code = "moving"


class NotCurrent(BlockMoving):
    """A copy of a replicated block that cannot serve this request now: the client finds the
    block's current primary and retries (``docs/durability.md``)."""

    code = "not_current"


class StaleEpoch(MeshError):
    """Sent by an agent to a peer writing in a replica set it has moved on from: the peer is
    fenced and drops its copy."""

    code = "stale_epoch"


class PlacementShort(MeshError):
    """Fewer distinct nodes (or hosts, with spread "host") with room than copies asked for."""

    code = "placement_short"


class MoveFailed(MeshError):
    code = "move_failed"


class MissingExtra(MeshError, ImportError):
    """An optional dependency is missing; the message says which extra brings it."""

    code = "missing_extra"


def require(module: str, extra: str, what: str) -> None:
    """Raise ``MissingExtra`` unless ``module`` can be imported (``what`` needs it)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{what} needs {module}, which comes with the {extra} extra: "
                           f"pip install 'memory-mesh[{extra}]'")


class PlacementError(MeshError):
    code = "placement"


class RayNotInstalled(PlacementError, MissingExtra):
    code = "ray_not_installed"


class RayUnavailable(PlacementError, ConnectionError):
    code = "ray_unavailable"


class NoRayNode(PlacementError):
    code = "no_ray_node"


class ReservationNotFound(PlacementError, _NotFound):
    code = "unknown_reservation"


class ReservationFailed(PlacementError):
    code = "reservation_failed"


class DeployError(MeshError):
    code = "deploy"


class PoolNotInitialized(MeshError):
    """A pool (or a helper on it) was used before ``await pool.initialize()``, or after
    ``shutdown()``. A client-side error: it never crosses the wire."""

    code = "not_initialized"


# One table from wire code to class. "unknown_op" and "bad_request" share classes with kin.
ERROR_CODES: dict[str, type[MeshError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        InvalidSize,
        OutOfRange,
        TooLarge,
        KeyExists,
        BlockNotFound,
        KeyNotFound,
        IntegrityError,
        CapacityError,
        ProtocolError,
        VersionMismatch,
        NodeUnavailable,
        MeshTimeout,
        DeadlineExceeded,
        AgentError,
        BlockMoving,
        NotCurrent,
        StaleEpoch,
        PlacementShort,
        MoveFailed,
        AuthenticationError,
        Forbidden,
    )
}
ERROR_CODES["unknown_op"] = ProtocolError


def error_from_wire(code: str, message: str, node: str | None = None) -> MeshError:
    """The exception for an error reply; unknown codes become ``AgentError``."""
    cls = ERROR_CODES.get(code, AgentError)
    return cls(message, node=node)
