"""The benchmarks the docs quote still run and check what they move (small sizes; the figures
themselves are never asserted: they are measured, not tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.mesh import ROOT


def run_json(*args: str, timeout: float = 180) -> dict:
    done = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_transfer_secure_reports_both_paths_and_verifies():
    out = run_json("tools/bench.py", "transfer", "--secure", "--size", "64MiB", "--runs", "1")
    assert out["verified"] is True
    for field in ("secure_write_gbps", "secure_read_gbps", "secure_write_ratio",
                  "secure_read_ratio", "baseline_1mib_gbps"):
        assert out[field] > 0, field
    assert out["write_ratio_1mib"] == pytest.approx(
        out["write_gbps"] / out["baseline_1mib_gbps"], rel=0.01)


def test_transfer_local_goes_through_shared_memory_and_verifies():
    out = run_json("tools/bench.py", "transfer", "--local", "--size", "64MiB", "--runs", "2")
    assert out["verified"] is True and out["path"] == "same-host"
    assert out["local_ops"] >= 4 and out["write_ratio"] > 0 and out["read_ratio"] > 0


def test_transfer_without_local_stays_on_the_network():
    out = run_json("tools/bench.py", "transfer", "--size", "32MiB", "--runs", "1")
    assert out["verified"] is True and out["path"] == "network" and "local_ops" not in out


def test_replication_paths_reports_every_path_and_verifies():
    out = run_json("tools/replication_paths.py", "--size", "32MiB", "--runs", "1")
    assert out["verified"] is True
    for mode in ("single", "client_fanout", "primary_forward"):
        assert out[f"{mode}_gbps"] > 0, mode


def test_transfer_replicas_reports_two_copies_against_one_and_verifies():
    out = run_json("tools/bench.py", "transfer", "--replicas", "2", "--size", "32MiB", "--runs",
                   "1")
    assert out["verified"] is True
    assert out["replicas"] == 2 and len(set(out["replica_nodes"])) == 2
    for field in ("write_gbps", "read_gbps", "replicated_write_gbps", "replicated_read_gbps",
                  "replicated_write_ratio", "replicated_read_ratio"):
        assert out[field] > 0, field


def test_report_writes_a_table_and_a_chart_of_the_benchmarks_it_runs(tmp_path):
    out = run_json("tools/bench.py", "report", "--quick", "--only", "checksum", "--only", "move",
                   "--out", str(tmp_path))
    move, row = out["rows"]
    assert row["bench"] == "checksum" and row["ratio"] > 0 and row["problem"] is None
    assert row["cpus_allow"] is None and move["cpus_allow"] > 0  # the move's CPU bound
    table = (tmp_path / "performance.md").read_text()
    assert "| checksum | xxh3 against crc32 |" in table and "GB/s" in table
    assert f"| {move['cpus_allow']:.2f}x |" in table
    assert "![ratios against their baselines](performance.png)" in table
    assert (tmp_path / "performance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_reports_single_and_batched_ops_against_the_raw_loop_and_verifies():
    out = run_json("tools/bench.py", "small", "--ops", "300", "--batch", "128", "--runs", "1")
    assert out["warmup"] == 1  # an uncounted round first
    assert out["verified"] is True and out["size_bytes"] == 4096 and out["ops"] == 300
    for name in ("single_ops", "batched_ops", "baseline_single_ops", "baseline_pipelined_ops"):
        assert out[name] > 0, name
    assert out["single_ratio"] == pytest.approx(out["single_ops"] / out["baseline_single_ops"],
                                                rel=0.01)
    assert out["batched_ratio"] == pytest.approx(
        out["batched_ops"] / out["baseline_pipelined_ops"], rel=0.01)


def test_concurrent_reports_reads_at_once_against_one_after_another_and_verifies():
    out = run_json("tools/bench.py", "concurrent", "--reads", "8", "--size", "1MiB", "--agents",
                   "2", "--runs", "1")
    assert out["verified"] is True and out["reads"] == 8 and out["agents"] == 2
    assert out["sequential_s"] > 0 and out["concurrent_s"] > 0
    assert out["concurrency_ratio"] == pytest.approx(out["sequential_s"] / out["concurrent_s"],
                                                     rel=0.01)
    # the same reads over plain sockets, in the same run
    assert out["raw_sequential_s"] > 0 and out["raw_concurrent_s"] > 0
    # and what the CPUs allow at all, from the CPU the reads one after another took (in 10 ms
    # ticks: at this size a tick or none, so only its form is checked here)
    assert out["sequential_cpu_s"] >= 0
    assert out["cpu_bound_ratio"] is None or out["cpu_bound_ratio"] > 0
    assert out["raw_concurrency_ratio"] == pytest.approx(
        out["raw_sequential_s"] / out["raw_concurrent_s"], rel=0.01)


def test_transfer_stripe_reports_the_striped_transfer_against_the_baseline_and_verifies():
    out = run_json("tools/bench.py", "transfer", "--stripe", "2", "--size", "16MiB", "--runs",
                   "1")
    assert out["verified"] is True and out["stripe"] == 2
    for field in ("baseline_gbps", "write_gbps", "read_gbps", "write_ratio", "read_ratio"):
        assert out[field] > 0, field


def test_move_reports_every_run_and_verifies():
    # three moves: the first into fresh memory, the next two into pages an agent kept
    out = run_json("tools/bench.py", "move", "--size", "32MiB", "--runs", "3")
    assert out["verified"] is True and out["size_bytes"] == 32 << 20
    assert len(out["runs_seconds"]) == 3 and out["first_move_seconds"] == out["runs_seconds"][0]
    for field in ("move_gbps", "baseline_gbps", "baseline_fresh_gbps", "client_write_gbps",
                  "ratio_to_baseline", "ratio_to_fresh_baseline", "move_cpu_s"):
        assert out[field] > 0, field
    assert out["cpu_bound_ratio_to_baseline"] == pytest.approx(  # the CPUs' bound, in 10 ms
        (32 << 20) / (out["move_cpu_s"] / os.cpu_count()) / 1e9 / out["baseline_gbps"],
        rel=0.05)  # ticks (three moves of 32 MiB: a few ticks each)
    assert out["network_only"] is False


def test_move_between_agents_without_the_same_host_path():
    out = run_json("tools/bench.py", "move", "--size", "8MiB", "--runs", "2", "--network-only")
    assert out["verified"] is True and out["network_only"] is True


def test_scale_reports_convergence_gossip_and_a_listing_it_checks():
    out = run_json("tools/bench.py", "scale", "--agents", "5", "--steady-s", "3", "--blocks",
                   "1500", "--settle-s", "0", timeout=300)
    assert out["started"] == 5 and out["converge_s"] is not None
    assert out["false_suspects"] == 0 and out["unanswered_polls"] == 0
    assert out["gossip_bytes_per_agent_s"] > 0 and out["heartbeat_bytes"] > 0
    assert out["stats_nodes"] == 5 and out["beat_s"] == 0.5  # 4 peers: far below the intake
    assert out["heartbeat_host_intake_per_s"] == 2500  # 5 on this machine: far below it too
    # 1,500 blocks made, and listed (the long-listing path) as JSON and as a table
    assert out["blocks_made"] == out["list_rows"] == 1500 and out["list_table_exit"] == 0
    assert len(out["list_runs_s"]) == 3 and out["list_100k_s"] in out["list_runs_s"]


def test_scale_runs_with_a_slower_heartbeat_and_a_small_intake_when_asked():
    out = run_json("tools/bench.py", "scale", "--agents", "3", "--steady-s", "3", "--blocks",
                   "30", "--heartbeat-interval", "0.8", "--intake", "2", "--host-intake", "0",
                   "--settle-s", "0", timeout=300)
    assert out["heartbeat_interval_s"] == 0.8 and out["converge_s"] is not None
    assert out["heartbeat_intake_per_s"] == 2 and out["beat_s"] == 1.0  # 2 peers, 2 a second
    assert out["heartbeat_host_intake_per_s"] == 0
    assert out["false_suspects"] == 0 and out["blocks_made"] == out["list_rows"] == 30


def test_cache_replays_a_zipf_trace_against_an_exact_lru():
    out = run_json("tools/bench.py", "cache", "--ops", "600", "--keys", "400", "--room",
                   "256KiB")
    assert 0 < out["reads"] < 600 and out["held"] > 0  # (about a tenth are writes)
    assert out["evictions"] > 0  # the working set did not fit
    assert 0 < out["hit_rate"] < 1 and 0 < out["lru_hit_rate"] < 1
    assert abs(out["difference_points"]) < 10


def test_intake_takes_the_same_trace_both_ways_and_checks_the_tables_agree():
    out = run_json("tools/bench.py", "intake", "--agents", "20", "--beats", "400", "--runs", "1")
    assert out["verified"] is True and out["beats"] == 400
    assert out["relayed_per_beat"] > 0 and 0 <= out["checked_share"] < 1
    assert out["baseline_us"] > 0 and out["intake_us"] > 0
