"""What an agent counts about its work, and the Prometheus endpoint that serves it.

The loop (one thread, ``agents/server.py``) bumps plain counters: a request when it arrives,
its answer (outcome, latency, bytes out) when the reply leaves, bytes in with the request. No
lock and no prometheus_client object sits on that path; a scrape, on the HTTP server's thread,
copies the counters and builds the metric families then (``_Collector``). Gauges that need the
loop's structures (the store, the membership table) are read from a snapshot the loop refreshes
every heartbeat (``Metrics.gauges``), so a scrape never walks a structure the loop is changing.

The same counters feed the ``ops`` field of STATS (``Metrics.ops``), which ``grid top`` turns
into rates.

Metric names and meanings are listed in docs/operations.md; a counter added here gets a line
there.

Not here: where the loop calls these (``agents/server.py``), the HTTP port's configuration
(``mesh/config.py``: ``metrics_port``).
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any, Iterable

log = logging.getLogger("mesh.agent")

# Upper bounds of the latency buckets, seconds: a 4 KiB op takes tens of microseconds, a held
# replicated write or a populated allocation of a GiB up to seconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_UNKNOWN_OP = "?"  # a request too broken to name its op


class Metrics:
    """Counters of one agent. Every method is called from the agent's loop thread only."""

    def __init__(self, node: str, version: str):
        self.node = node
        self.version = version
        self.started = time.time()
        self.received: dict[str, int] = {}  # op -> requests arrived
        self.answered: dict[tuple[str, str], int] = {}  # (op, outcome) -> replies sent
        self.bytes_in: dict[str, int] = {}  # op -> payload bytes received
        self.bytes_out: dict[str, int] = {}  # op -> payload bytes sent
        # op -> bucket counts (one per bound, then +Inf), then the sum of seconds
        self.latency: dict[str, list[float]] = {}
        self.gauges: dict[str, Any] = {}  # the loop's last snapshot (see ``snapshot``)

    # --- the loop's side ----------------------------------------------------------------------

    def arrived(self, op: str, payload_bytes: int) -> None:
        self.received[op] = self.received.get(op, 0) + 1
        if payload_bytes:
            self.bytes_in[op] = self.bytes_in.get(op, 0) + payload_bytes

    def tally(self, op: str, count: int, bytes_in: int, bytes_out: int, arrived: float) -> None:
        """``count`` requests of ``op`` that arrived together and were answered "ok" together
        (the READ and WRITE sub-ops of one MANY: ``agents/many.py``), counted at once."""
        self.received[op] = self.received.get(op, 0) + count
        if bytes_in:
            self.bytes_in[op] = self.bytes_in.get(op, 0) + bytes_in
        self.replied(op, "ok", arrived, bytes_out, count)

    def replied(self, op: str, outcome: str, arrived: float, payload_bytes: int = 0,
                count: int = 1) -> None:
        """A reply left for a request that arrived at ``arrived`` (``time.perf_counter``; 0 when
        unknown, then no latency is recorded); ``outcome`` is "ok" or the error code; ``count``
        replies alike at once (``tally``)."""
        key = (op, outcome)
        self.answered[key] = self.answered.get(key, 0) + count
        if payload_bytes:
            self.bytes_out[op] = self.bytes_out.get(op, 0) + payload_bytes
        if arrived:
            seconds = time.perf_counter() - arrived
            counts = self.latency.get(op)
            if counts is None:
                counts = self.latency[op] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += count
            counts[-1] += seconds * count

    def snapshot(self, gauges: dict[str, Any]) -> None:
        """The loop's figures of the moment, read by the next scrape (one reference swap)."""
        self.gauges = gauges

    # --- readers (any thread) -----------------------------------------------------------------

    def ops(self) -> dict[str, Any]:
        """Cumulative totals for STATS: requests, errors, payload bytes in and out, by op."""
        answered = dict(self.answered)
        received = dict(self.received)
        return {
            "requests": sum(received.values()),
            "errors": sum(n for (_, outcome), n in answered.items() if outcome != "ok"),
            "bytes_in": sum(dict(self.bytes_in).values()),
            "bytes_out": sum(dict(self.bytes_out).values()),
            "by_op": received,
        }

    def uptime_s(self) -> float:
        return time.time() - self.started


def unknown_op(op: Any) -> str:
    return op if isinstance(op, str) and op else _UNKNOWN_OP


class _Collector:
    """Builds the metric families from a ``Metrics`` at scrape time."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self) -> Iterable[Any]:
        return []  # families are made per scrape; nothing to check at registration

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (
            CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily,
        )

        m, node = self.m, self.m.node
        info = InfoMetricFamily("mesh_agent", "The agent's node and version.")
        info.add_metric([], {"node": node, "version": m.version})
        yield info
        up = GaugeMetricFamily("mesh_agent_uptime_seconds", "Seconds since the agent started.")
        up.add_metric([], m.uptime_s())
        yield up

        received = CounterMetricFamily("mesh_requests_received", "Requests that arrived, by op.",
                                       labels=["op"])
        for op, n in sorted(dict(m.received).items()):
            received.add_metric([op], n)
        yield received
        answered = CounterMetricFamily(
            "mesh_requests", "Requests answered, by op and outcome (ok, or the error code).",
            labels=["op", "outcome"])
        for (op, outcome), n in sorted(dict(m.answered).items()):
            answered.add_metric([op, outcome], n)
        yield answered
        for name, counts, doc in (
            ("mesh_received_bytes", m.bytes_in, "Payload bytes received with requests, by op."),
            ("mesh_sent_bytes", m.bytes_out, "Payload bytes sent in replies, by op."),
        ):
            family = CounterMetricFamily(name, doc, labels=["op"])
            for op, n in sorted(dict(counts).items()):
                family.add_metric([op], n)
            yield family
        latency = HistogramMetricFamily(
            "mesh_request_seconds",
            "Seconds from a request's arrival to its reply leaving the agent, by op.",
            labels=["op"])
        for op, counts in sorted(dict(m.latency).items()):
            counts = list(counts)
            buckets, total = [], 0.0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts[:-1]):
                total += n
                buckets.append((_bound(bound), total))
            latency.add_metric([op], buckets, counts[-1])
        yield latency
        yield from _gauges(dict(m.gauges))


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


# name -> (kind, help); the snapshot's key is the name without the "mesh_" prefix
GAUGES = {
    "mesh_blocks": ("gauge", "Blocks held (every copy counts)."),
    "mesh_used_bytes": ("gauge", "Bytes of the blocks held."),
    "mesh_capacity_bytes": ("gauge", "Bytes this agent offers the mesh."),
    "mesh_unbacked_bytes": ("gauge", "Bytes promised to blocks whose pages are not there yet "
                                     "(lazy, or being backed)."),
    "mesh_host_promised_bytes": ("gauge", "Bytes promised by every agent of this host (the "
                                          "promise ledger), this one included."),
    "mesh_host_available_bytes": ("gauge", "The host's available RAM."),
    "mesh_host_total_bytes": ("gauge", "The host's total RAM."),
    "mesh_connections": ("gauge", "Client connections open on the data port."),
    "mesh_sessions": ("gauge", "Sealed sessions open (keyed clusters)."),
    "mesh_replica_copies": ("gauge", "Replicated blocks this agent holds a copy of."),
    "mesh_gossip_heard": ("counter", "Heartbeats and gossip messages taken in."),
    "mesh_gossip_rejected": ("counter", "Gossip messages refused (unknown or forged sender)."),
    "mesh_gossip_sent": ("counter", "Heartbeats published."),
    "mesh_moves": ("counter", "Blocks moved away to another agent."),
    "mesh_evictions": ("counter", "Evictable keys evicted to make room (agents/eviction.py)."),
    "mesh_evictable_bytes": ("gauge", "What evicting every evictable key would free."),
    "mesh_replica_repairs": ("counter", "Copies placed to replace lost ones."),
    "mesh_replica_moved_on": ("counter", "Members left out of a replica set."),
    "mesh_dropped_replies": ("counter", "Replies that could not be sent (client gone, or not "
                                        "reading)."),
    "mesh_rejected_handshakes": ("counter", "Connections refused at the handshake (unknown or "
                                            "revoked key; keyed clusters)."),
    "mesh_connection_unbinds": ("counter", "Times the data port stopped accepting connections "
                                           "because the connection cap was reached."),
    "mesh_refused_requests": ("counter", "Requests refused for their role or key."),
    "mesh_late_requests": ("counter", "Requests refused because their client's deadline had "
                                      "passed."),
    "mesh_loop_errors": ("counter", "Failures the agent's loop survived (logged)."),
    "mesh_reads_served": ("counter", "READ requests answered with data."),
}


def _gauges(snapshot: dict[str, Any]) -> Iterable[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for name, (kind, doc) in GAUGES.items():
        value = snapshot.get(name.removeprefix("mesh_"))
        if value is None:
            continue
        family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
            name.removesuffix("_total"), doc)
        family.add_metric([], value)
        yield family
    members = GaugeMetricFamily("mesh_members", "Agents this agent knows, by membership state.",
                                labels=["state"])
    for state, n in sorted((snapshot.get("members") or {}).items()):
        members.add_metric([state], n)
    yield members


class Endpoint:
    """The HTTP server of ``/metrics`` (prometheus_client's, on a thread of its own)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.url: str | None = None
        self._server: Any = None

    def start(self, bind_ip: str, port: int, advertised_host: str) -> str | None:
        """Serve on ``bind_ip:port``; returns the URL, or None (logged) when it cannot: an
        agent without metrics still serves data."""
        if not port:
            return None
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:  # pragma: no cover - a base dependency
            log.error("metrics: prometheus_client is not installed; no /metrics endpoint")
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.metrics))
        try:
            self._server, _thread = start_http_server(port, addr=bind_ip, registry=registry)
        except OSError as exc:
            log.error("metrics: cannot serve on %s:%d (%s); going on without /metrics",
                      bind_ip, port, exc.strerror or exc)
            return None
        self.url = f"http://{advertised_host}:{port}/metrics"
        log.info("metrics served at %s", self.url)
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
