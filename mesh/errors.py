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
    ├── CapacityError              the agent (or every live agent) has no room
    ├── ProtocolError              malformed frames, unknown op, wrong protocol version
    │   └── VersionMismatch
    ├── NodeUnavailable            a node is unknown, dead, or does not answer
    │   └── MeshTimeout            no reply within the timeout
    ├── AgentError                 the agent failed internally (it keeps serving)
    ├── BlockMoving                the block is being moved to another node; retry shortly
    ├── MoveFailed                 a move stopped half-way; the original is intact at the source
    └── PoolNotInitialized         (mesh/pool.py) the seeds' pool used before initialize()

Placement errors never travel between agent and client, so they have codes (for ``--json``
output and logs) but no entry in the wire table.

Wire error codes map to these classes through ``ERROR_CODES`` (and back through
``code_for``), so the agent and the client agree on one table. Third-party errors (zmq, msgpack,
yaml, OS errors) are converted at the boundary where they happen. This module does no I/O.
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


class CapacityError(MeshError):
    code = "no_capacity"


class ProtocolError(MeshError):
    code = "bad_frame"


class VersionMismatch(ProtocolError):
    code = "version_mismatch"


class NodeUnavailable(MeshError, ConnectionError):
    code = "unavailable"


class MeshTimeout(NodeUnavailable, TimeoutError):
    code = "timeout"


class AgentError(MeshError):
    code = "internal"


class BlockMoving(MeshError):
    """Writes, frees and key changes wait while a block is copied; the client retries them."""

    code = "moving"


class MoveFailed(MeshError):
    code = "move_failed"


class PlacementError(MeshError):
    code = "placement"


class RayNotInstalled(PlacementError):
    code = "ray_not_installed"


class RayUnavailable(PlacementError, ConnectionError):
    code = "ray_unavailable"


class NoRayNode(PlacementError):
    code = "no_ray_node"


class ReservationNotFound(PlacementError, _NotFound):
    code = "unknown_reservation"


class ReservationFailed(PlacementError):
    code = "reservation_failed"


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
        AgentError,
        BlockMoving,
        MoveFailed,
    )
}
ERROR_CODES["unknown_op"] = ProtocolError


def error_from_wire(code: str, message: str, node: str | None = None) -> MeshError:
    """The exception for an error reply; unknown codes become ``AgentError``."""
    cls = ERROR_CODES.get(code, AgentError)
    return cls(message, node=node)
