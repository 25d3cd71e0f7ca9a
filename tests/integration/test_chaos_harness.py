"""The chaos harness (``tools/chaos.py``) itself: it runs real agents and writers, and with
replicas 2 neither a kill -9 nor a pause loses an acknowledged byte or lets two reads disagree;
with one copy a pause is harmless and a kill -9 is a loss the harness sees. Short runs: a second
or so of load per trial, short pauses and restore deadlines, and every run bounded twice
(``--max-seconds`` inside, a timeout outside that SIGTERMs it so it stops what it started)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil

from support.mesh import ROOT


def run_chaos(*args: str, timeout: float) -> tuple[int, dict, str]:
    """Run the harness; past ``timeout`` SIGTERM it (it stops what it started and reports),
    so that with the grace below a run ends within pytest's 120 s."""
    proc = subprocess.Popen(
        [sys.executable, "tools/chaos.py", "--agents", "4", "--writers", "2", "--run-s", "1,1.5",
         "--op-timeout-s", "1", "--seed", "7", "--fault-order", "cycle", *args, "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its agents and writers, then reports
        try:
            stdout, stderr = proc.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    out = stdout + stderr
    lines = stdout.strip().splitlines()
    assert lines, out[-3000:]
    result = json.loads(lines[-1])
    assert not result["interrupted"], f"the run took more than {timeout} s:\n{out[-3000:]}"
    # everything the harness started (agents, restarted agents, writers) is gone with it
    assert len(result["pids_started"]) >= 4 + 2, result["pids_started"]
    leftover = []
    for pid in result["pids_started"]:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and any(
                    "chaos.py" in a or "agents.main" in a for a in p.cmdline()):
                leftover.append((pid, p.cmdline()))
        except psutil.Error:  # gone
            pass
    assert not leftover, leftover
    return proc.returncode, result, out


def report(r: dict, out: str) -> str:
    """What a failed assertion shows: each trial's line, and what was lost or diverged (where
    its copies were before the fault, the failed call that retired it)."""
    lines = [line for line in out.splitlines() if line.startswith(("trial ", "harness error"))]
    examples = [ex for t in r["per_trial"] for ex in t["examples"]]
    return "\n".join(lines) + "\n" + json.dumps(examples, indent=1) + "\n" + out[-1500:]


def test_with_two_copies_neither_a_kill_nor_a_pause_loses_anything():
    """Kill -9, pause, kill -9, pause, kill -9 (``--fault-order cycle``) of agents holding
    copies of acknowledged blocks and keys, replicas 2 on four agents (spread "node": they
    share this machine). The pauses run from under ``dead_after_s`` (nobody moves on) to over
    it (the others move on, the paused copy is fenced). Every acknowledged byte and key reads
    back, twice, alike; every trial has its copies back (``stat().nodes``) by its deadline."""
    code, r, out = run_chaos("--replicas", "2", "--faults", "kill,pause", "--trials", "5",
                             "--restart-s", "1,1.5", "--pause-s", "1.5,4.5",
                             "--restore-timeout-s", "10", "--max-seconds", "50", timeout=85)
    assert r["harness_error"] is None, report(r, out)
    assert r["replicas_supported"] is True and r["replicas"] == 2 and r["spread"] == "node"
    assert r["trials"] == 5 and r["faults"] == {"kill": 3, "pause": 2}, report(r, out)
    assert r["lost_bytes"] == 0, report(r, out)
    assert r["diverging_reads"] == 0, report(r, out)
    assert r["ops"] > 0 and r["checked_bytes"] > 0
    for t in r["per_trial"]:
        # the victim held copies of acknowledged data
        assert t["at_stake_bytes"] > 0, report(r, out)
        assert t["restored"], report(r, out)  # reads, and every block has two copies again
        assert t["unrepaired_blocks"] == 0, report(r, out)
        if t["fault"] == "kill":  # the victim's copies were made again elsewhere
            assert t["moved_on_s"] is not None and t["repaired_blocks"] > 0, report(r, out)
            assert t["copies_s"] is not None and t["repair_bytes"] > 0, report(r, out)
    for field in ("restore_s_max", "detect_s_max", "moved_on_s_max", "copies_s_max",
                  "repair_mbps_mean", "repair_mbps_min", "repair_bytes", "errors", "seconds"):
        assert field in r, field
    assert r["repair_mbps_min"] > 0 and r["restore_s_max"] < 20
    assert code == 0, report(r, out)


def test_with_one_copy_a_pause_loses_nothing_and_a_kill_loses_what_the_victim_held():
    """The contrast, and proof that the harness can SEE a loss: ``--replicas 1``, a pause
    (harmless: the agent comes back with its memory), then a kill -9 of an agent holding
    acknowledged data (its blocks are gone; the harness says so, exit 1)."""
    code, r, out = run_chaos("--replicas", "1", "--faults", "pause,kill", "--trials", "2",
                             "--pause-s", "1,1.5", "--restart-s", "1,1.5",
                             "--restore-timeout-s", "2", "--max-seconds", "30", timeout=60)
    assert r["harness_error"] is None, report(r, out)
    assert r["trials"] == 2 and r["faults"] == {"pause": 1, "kill": 1}, report(r, out)
    pause, kill = r["per_trial"]
    assert pause["fault"] == "pause" and kill["fault"] == "kill"
    assert pause["lost_bytes"] == 0 and pause["diverging_reads"] == 0, report(r, out)
    assert pause["restored"], report(r, out)
    assert kill["at_stake_bytes"] > 0, report(r, out)  # the victim held acknowledged data
    assert kill["lost_bytes"] > 0, report(r, out)
    assert kill["restored"] is False  # the lost blocks never read again
    assert r["diverging_reads"] == 0, report(r, out)
    assert code == 1, report(r, out)
