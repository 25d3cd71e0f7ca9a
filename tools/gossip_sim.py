#!/usr/bin/env python3
"""Membership at 1,000 and 10,000 nodes, simulated: no sockets, no processes, rounds of one
heartbeat interval (issue 14, item 6; docs/scale.md reads its figures).

    python tools/gossip_sim.py [--nodes 1000 10000] [--follow 0 16] [--seed 1] [--json]

A node publishes one heartbeat per round: its own record and the digest the agents send
(``mesh/membership.py`` ``gossip_digest``: the records that changed at that node within
``CHANGE_RELAY_S``, at most ``DIGEST_RECENT``, and ``DIGEST_SAMPLE`` others in turn). Every node
that follows it gets it in the same round. ``--follow 0`` is what the agents do today: every
node follows every other (one SUB link each); ``--follow K`` is a partial view: each node
follows K peers picked at random, and learns of the others only through relayed records.

Two scenarios per (nodes, follow):

- ``join``: a converged mesh, then one node restarts (a new incarnation): the rounds until
  every node knows it (``join_s``; a node that follows it knows at once);
- ``cold`` (up to ``COLD_MAX_NODES``): every node starts knowing only the nodes it follows (the
  cluster file's seeds); the rounds until every node knows every node (``cold_s``), or
  ``None`` if that did not happen within ``MAX_ROUNDS``.

Bytes: one record as the agents encode it (``RECORD_BYTES``, msgpack of a typical NodeInfo
record with a 40-character domain), a heartbeat = own record + digest; ``bytes_per_node_s`` is
what one node takes in per second in steady state (heartbeats from everyone it follows), and
``links_per_node`` the subscriptions it keeps.

Pure and deterministic for a given ``--seed``; failure detection (SWIM probes) is not simulated
here: docs/scale.md says why and what it costs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh import protocol as P  # noqa: E402
from mesh.membership import (  # noqa: E402
    CHANGE_RELAY_S, DIGEST_RECENT, DIGEST_SAMPLE, NodeInfo,
)

HEARTBEAT_INTERVAL_S = 0.5
MAX_ROUNDS = 2000
COLD_MAX_NODES = 2000


def record_bytes() -> int:
    """The encoded size of one typical node record (the same encoder as a heartbeat)."""
    info = NodeInfo(name="node-00001", address="tcp://10.0.12.34:7700", state="alive",
                    incarnation=1_700_000_000_000_000, capacity=64 << 30, used=12 << 30,
                    room=52 << 30, host_available=100 << 30, blocks=12345, age_s=0.0,
                    version="0.14.0", host_total=128 << 30, gossip="tcp://10.0.12.34:7701",
                    security="keyed", domain="d" * 40)
    one = len(P.encode_heartbeat({**info.record(), "peers": []})[1])
    two = len(P.encode_heartbeat({**info.record(), "peers": [{**info.record(), "age_s": 0.25}]})[1])
    return max(one, two - one)


RECORD_BYTES = record_bytes()


def followers_of(n: int, follow: int, rng: random.Random) -> list[list[int]]:
    """followers[u]: the nodes that subscribe to u, each node following ``follow`` at random."""
    followers: list[list[int]] = [[] for _ in range(n)]
    for v in range(n):
        for u in _distinct(rng, n, follow, v):
            followers[u].append(v)
    return followers


def _distinct(rng: random.Random, n: int, k: int, avoid: int) -> list[int]:
    got: set[int] = set()
    while len(got) < k:
        x = rng.randrange(n)
        if x != avoid:
            got.add(x)
    return list(got)


def join(n: int, follow: int, rng: random.Random, relay_rounds: int) -> int | None:
    """Rounds until every node knows one node's new incarnation."""
    if follow <= 0 or follow >= n - 1:
        return 1  # every node follows it: its own next heartbeat tells everyone
    followers = followers_of(n, follow, rng)
    x = 0
    learned = {x: 0}
    for v in followers[x]:
        learned[v] = 1
    rounds = 1
    while len(learned) < n and rounds < MAX_ROUNDS:
        rounds += 1
        for u, at in list(learned.items()):
            if u == x:
                continue
            recent = rounds - at <= relay_rounds
            # in the round-robin sample: DIGEST_SAMPLE of its other n - 2 records a round
            if recent or rng.random() < DIGEST_SAMPLE / max(1, n - 2):
                for v in followers[u]:
                    learned.setdefault(v, rounds)
    return rounds if len(learned) == n else None


def cold(n: int, follow: int, rng: random.Random, relay_rounds: int) -> int | None:
    """Rounds until every node knows every node, each starting with only what it follows."""
    if follow <= 0 or follow >= n - 1:
        return 1
    followers = followers_of(n, follow, rng)
    # views[v]: {node: round learned}; it knows itself and what it follows from the start
    views: list[dict[int, int]] = [{v: 0} for v in range(n)]
    for u in range(n):
        for v in followers[u]:
            views[v][u] = 0
    order: list[list[int]] = [sorted(view) for view in views]
    turn = [rng.randrange(n) for _ in range(n)]
    rounds = 0
    while rounds < MAX_ROUNDS and any(len(view) < n for view in views):
        rounds += 1
        digests = []
        for u in range(n):
            view = views[u]
            fresh = sorted((k for k, at in view.items() if rounds - at <= relay_rounds and k != u),
                           key=lambda k: -view[k])[:DIGEST_RECENT]
            names = order[u]
            if len(names) != len(view):
                names = order[u] = sorted(view)
            start = turn[u] % len(names)
            sample = (names[start:] + names[:start])[:DIGEST_SAMPLE]
            turn[u] = start + DIGEST_SAMPLE
            digests.append([u, *fresh, *sample])
        for u, digest in enumerate(digests):
            for v in followers[u]:
                view = views[v]
                for k in digest:
                    view.setdefault(k, rounds)
    return rounds if all(len(view) == n for view in views) else None


def simulate(nodes: list[int], follows: list[int], seed: int) -> dict:
    relay_rounds = round(CHANGE_RELAY_S / HEARTBEAT_INTERVAL_S)
    digest_records = DIGEST_RECENT + DIGEST_SAMPLE  # a bound; steady state sends the sample
    rows = []
    for n in nodes:
        for follow in follows:
            rng = random.Random(seed)
            links = n - 1 if follow <= 0 or follow >= n - 1 else follow
            joined = join(n, follow, rng, relay_rounds)
            cold_rounds = cold(n, follow, rng, relay_rounds) if n <= COLD_MAX_NODES else None
            steady_beat = RECORD_BYTES * (1 + DIGEST_SAMPLE)
            rows.append({
                "nodes": n, "follow": follow or "all", "links_per_node": links,
                "join_s": None if joined is None else joined * HEARTBEAT_INTERVAL_S,
                "cold_s": None if cold_rounds is None else cold_rounds * HEARTBEAT_INTERVAL_S,
                "heartbeat_bytes": steady_beat,
                "max_heartbeat_bytes": RECORD_BYTES * (1 + digest_records),
                "bytes_per_node_s": round(links * steady_beat / HEARTBEAT_INTERVAL_S),
            })
    return {"record_bytes": RECORD_BYTES, "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
            "seed": seed, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gossip_sim.py", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--follow", type=int, nargs="+", default=[0, 16],
                        help="peers each node follows (0: every other node)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = simulate(args.nodes, args.follow, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"record {result['record_bytes']} B, heartbeat every {HEARTBEAT_INTERVAL_S} s")
    print(f"{'nodes':>6} {'follow':>6} {'links':>6} {'join_s':>7} {'cold_s':>7} "
          f"{'beat_B':>7} {'bytes/node/s':>13}")
    for r in result["rows"]:
        print(f"{r['nodes']:>6} {r['follow']!s:>6} {r['links_per_node']:>6} {r['join_s']!s:>7} "
              f"{r['cold_s']!s:>7} {r['heartbeat_bytes']:>7} {r['bytes_per_node_s']:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
