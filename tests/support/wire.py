"""Talking to a real agent below the client: one raw request on a DEALER of its own, for tests
of ops the client does not send that way (PULL, ABORT between agents, forged fields)."""

from __future__ import annotations

import msgpack
import zmq

from mesh import protocol as P


def raw_call(address: str, op: str, fields: dict, timeout_ms: int = 10_000,
             request_id: int = 7) -> P.Reply:
    """Send ``op`` with ``fields`` to the agent at ``address`` and parse its reply (raises
    ``zmq.Again`` after ``timeout_ms`` without one)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(address)
    try:
        sock.send_multipart([msgpack.packb([P.VERSION, op, request_id, fields])])
        return P.parse_reply(sock.recv_multipart())
    finally:
        sock.close()
