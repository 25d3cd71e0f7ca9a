"""``tools/bench.py intake``: what one heartbeat costs the agent that takes it in, in microseconds,
against the full check of every record it carries, in the same process (docs/scale.md).

An agent of an N-agent mesh takes in 2 (N - 1) heartbeats a second (one per peer per half
second), so on one host of N agents the whole mesh takes in 2 N (N - 1): 19,800 a second at
100. Each carries its sender's record and a digest of others (``MembershipTable.gossip_digest``:
``DIGEST_SAMPLE`` in turn once the mesh is settled).

The trace: ``--agents`` members, every one heard directly; ``--beats`` heartbeats, one from each
peer in turn, the clock moving on by one heartbeat interval per round (0.5 s), each relaying
``DIGEST_SAMPLE`` members in turn with ages drawn between 0 and one interval, as relayed ages
are. Two tables take in the same trace (built beforehand, encoded as on the wire):

- ``baseline_us``: ``parse_heartbeat(frames)`` checks every relayed record, and each is merged
  (``observe``): what an agent did before ``moot`` (with today's merge, which is cheaper than
  it was: docs/scale.md has the older code's figure);
- ``intake_us``: the agent's path (``agents/gossip.py``): ``parse_heartbeat(frames, moot)`` leaves
  out the records that could change nothing (``MembershipTable.moot``), the others are merged.

``speedup`` is baseline / intake; ``checked_share`` the share of relayed records the agent's path
still checked. ``verified``: both tables end with every member in the same state and the same
records, and no member's last word differs by as much as a third of ``suspect_after_s``
(what ``moot`` allows). The figures are the median of ``--runs`` alternating runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from mesh import protocol as P
from mesh.config import MeshSettings
from mesh.membership import DIGEST_SAMPLE, MembershipTable

_DEFAULTS = MeshSettings()  # the cluster file's defaults: 0.5 s beats, suspect 1.5, dead 3.0
INTERVAL_S = _DEFAULTS.heartbeat_interval_s
SUSPECT_S = _DEFAULTS.suspect_after_s
DEAD_S = _DEFAULTS.dead_after_s


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("intake", help="microseconds per heartbeat taken in, against the full "
                       "check of every record it relays")
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--beats", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _record(i: int) -> dict[str, Any]:
    return {"node": f"n{i:04d}", "address": f"tcp://127.0.1.{i % 250 + 1}:{7000 + i}",
            "gossip": f"tcp://127.0.1.{i % 250 + 1}:{17000 + i}", "incarnation": 1_000 + i,
            "version": "bench", "capacity": 1 << 30, "used": 0, "room": 1 << 30,
            "host_available": 20 << 30, "host_total": 24 << 30, "blocks": 0,
            "security": "loopback", "domain": "bench", "evictable": 0}


def trace(agents: int, beats: int, seed: int) -> list[tuple[float, list[bytes]]]:
    """``(when, frames)`` of each heartbeat, in order (see the module's doc). Each sender
    relays ``DIGEST_SAMPLE`` other members in turn from a place of its own, as
    ``gossip_digest`` does once nothing has changed lately."""
    rng = random.Random(seed)
    records = [_record(i) for i in range(agents)]
    turn = [rng.randrange(agents) for _ in range(agents)]
    out = []
    for k in range(beats):
        sender, now = k % agents, INTERVAL_S * (1 + k / agents)
        others = [r for j, r in enumerate(records) if j != sender]
        picked = [others[(turn[sender] + i) % len(others)] for i in range(DIGEST_SAMPLE)]
        turn[sender] += DIGEST_SAMPLE
        digest = [{**r, "age_s": rng.uniform(0.0, INTERVAL_S)} for r in picked]
        out.append((now, P.encode_heartbeat({**records[sender], "used": k % 7,
                                             "peers": digest})))
    return out


def _take(beats: list[tuple[float, list[bytes]]], agents: int, moot: bool) -> tuple[float, int,
                                                                                    Any]:
    """Seconds to take in ``beats`` at a fresh table holding every member (a member's own
    heartbeats go to its table as a peer's would), the relayed records checked, the table."""
    table = MembershipTable(SUSPECT_S, DEAD_S)
    for i in range(agents):
        table.observe(_record(i), 0.0)
    checked = 0
    t0 = time.perf_counter()
    for now, frames in beats:
        if moot:
            rec = P.parse_heartbeat(frames, lambda p: table.moot(p, now))
        else:
            rec = P.parse_heartbeat(frames)
        table.merge_heartbeat(rec, now)
        checked += len(rec["peers"])
    return time.perf_counter() - t0, checked, table


def _same(a: MembershipTable, b: MembershipTable, now: float) -> bool:
    rows_a, rows_b = a.snapshot(now), b.snapshot(now)
    if len(rows_a) != len(rows_b):
        return False
    for ra, rb in zip(rows_a, rows_b):
        if {k: v for k, v in ra.items() if k != "age_s"} != \
                {k: v for k, v in rb.items() if k != "age_s"}:
            return False
        if abs(ra["age_s"] - rb["age_s"]) >= SUSPECT_S / 3:
            return False
    return True


def intake(args: argparse.Namespace) -> dict[str, Any]:
    beats = trace(args.agents, args.beats, args.seed)
    relayed = sum(len(P.parse_heartbeat(frames)["peers"]) for _, frames in beats)
    base, mine = [], []
    verified = True
    checked = 0
    for _ in range(args.runs):
        s, _, full = _take(beats, args.agents, moot=False)
        base.append(s)
        s, checked, fast = _take(beats, args.agents, moot=True)
        mine.append(s)
        verified = verified and _same(full, fast, beats[-1][0])
    per = 1e6 / len(beats)
    baseline_us, intake_us = statistics.median(base) * per, statistics.median(mine) * per
    return {"bench": "intake", "agents": args.agents, "beats": len(beats), "runs": args.runs,
            "relayed_per_beat": round(relayed / len(beats), 2),
            "checked_share": round(checked / max(1, relayed), 3),
            "baseline_us": round(baseline_us, 2), "intake_us": round(intake_us, 2),
            "speedup": round(baseline_us / intake_us, 2),
            "mesh_core_share_baseline": round(2 * args.agents * (args.agents - 1) *
                                              baseline_us / 1e6, 3),
            "mesh_core_share": round(2 * args.agents * (args.agents - 1) * intake_us / 1e6, 3),
            "verified": verified}


def describe(r: dict[str, Any]) -> str:
    return (f"heartbeat intake, {r['agents']} members, {r['beats']} heartbeats "
            f"({r['relayed_per_beat']} relayed records each), median of {r['runs']}:\n"
            f"  full check {r['baseline_us']} us   agent's path {r['intake_us']} us   "
            f"speedup {r['speedup']}x   relayed records checked {100 * r['checked_share']:.0f} %\n"
            f"  {r['agents']} agents on one host: {r['mesh_core_share_baseline']} -> "
            f"{r['mesh_core_share']} of a core for their Python intake   verified "
            f"{r['verified']}")
