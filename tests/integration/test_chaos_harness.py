"""The chaos harness (``tools/chaos.py``) itself: it runs real agents and writers, reports a
pause as harmless and a kill -9 as a loss while blocks have one copy. Short runs: a few seconds
of load per trial, short pauses and restore deadlines."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from support.mesh import ROOT


def run_chaos(*args: str, timeout: float = 90) -> tuple[int, dict, str]:
    done = subprocess.run(
        [sys.executable, "tools/chaos.py", "--agents", "4", "--writers", "2", "--run-s", "1,1.5",
         "--op-timeout-s", "1", "--seed", "7", *args, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    out = done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines, out[-3000:]
    result = json.loads(lines[-1])
    # everything the harness started (agents, restarted agents, writers) is gone with it
    assert len(result["pids_started"]) >= 4 + 2, result["pids_started"]
    leftover = []
    for pid in result["pids_started"]:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and any(
                    "chaos.py" in a or "agents.main" in a for a in proc.cmdline()):
                leftover.append((pid, proc.cmdline()))
        except psutil.Error:  # gone
            pass
    assert not leftover, leftover
    return done.returncode, result, out


def test_a_pause_loses_nothing_even_without_replicas():
    code, r, out = run_chaos("--faults", "pause", "--pause-s", "1,2", "--trials", "2",
                             "--restore-timeout-s", "10")
    assert r["harness_error"] is None, out[-3000:]
    assert r["trials"] == 2, out[-3000:]
    assert r["faults"] == {"pause": 2}
    # what was lost or diverged, and why. (A key gone "after 1 failed puts" was the put's
    # rollback deleting the value it had replaced when the key's home stopped answering; fixed,
    # tests/integration/test_objects.py::test_a_replace_put_whose_home_stops_answering_...)
    examples = [t["examples"] for t in r["per_trial"]]
    assert r["lost_bytes"] == 0, (examples, out[-3000:])
    assert r["diverging_reads"] == 0, (examples, out[-3000:])
    assert r["ops"] > 0 and r["checked_bytes"] > 0
    assert all(t["restored"] for t in r["per_trial"]), out[-3000:]
    for field in ("restore_s_max", "detect_s_max", "errors", "replicas_supported", "seconds"):
        assert field in r, field
    assert code == 0, out[-3000:]


def test_a_kill_loses_bytes_while_blocks_have_one_copy():
    """Shows the harness can SEE a loss: today a block lives on one agent, so kill -9 of an
    agent holding acknowledged data loses it, and the harness must say so (exit 1).

    TURN THIS AROUND when replication lands (``docs/durability.md``): with ``replicas_supported``
    true and ``--replicas 2`` the same run must report ``lost_bytes == 0``,
    ``diverging_reads == 0``, every trial restored, and exit 0."""
    code, r, out = run_chaos("--faults", "kill", "--trials", "1", "--restart-s", "1,1.5",
                             "--restore-timeout-s", "2")
    assert r["harness_error"] is None, out[-3000:]
    assert r["trials"] == 1 and r["faults"] == {"kill": 1}
    assert r["replicas_supported"] is False  # if this fails, replication has landed: see above
    trial = r["per_trial"][0]
    assert trial["at_stake_bytes"] > 0, out[-3000:]  # the victim held acknowledged data
    assert r["lost_bytes"] > 0, out[-3000:]
    assert trial["restored"] is False  # the lost blocks never read again
    assert code == 1, out[-3000:]
