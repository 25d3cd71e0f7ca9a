"""The pure pressure score and offload decision at the seeds' thresholds, and the cgroup reader."""

from __future__ import annotations

import pytest

from mesh.balance.pressure import NodeLoad, pressure_score, should_offload, usage_for_score
from mesh.hostmem import LAYOUT_TTL_S, HostMemoryReader, cgroup_memory, host_memory
from mesh.units import GiB


@pytest.mark.parametrize("used,total,score", [
    (0, 100, 0.1),
    (60, 100, 0.1),          # gentle range starts above 60 %
    (70, 100, 0.3),          # the seed's low threshold
    (80, 100, 0.5),
    (84, 100, 0.7),          # the seed's high threshold
    (86, 100, 0.8),
    (90, 100, 1.0),
    (150, 100, 1.0),         # over-committed stays at 1
])
def test_pressure_score_piecewise(used, total, score):
    assert pressure_score(used, total) == pytest.approx(score)


def test_pressure_score_seed_example():
    # seed 004's test: 28 GB used of 30.4 GB (92 %) must score above 0.8
    assert pressure_score(28.0 * GiB, 30.4 * GiB) > 0.8


def test_pressure_score_never_falls_as_a_node_fills():
    # the seed's literal formula drops from 0.5 to 0 just above 80 % and from 0.1 to 0 above 60 %
    scores = [pressure_score(u, 1000) for u in range(0, 1201)]
    assert all(b >= a for a, b in zip(scores, scores[1:]))
    assert pressure_score(801, 1000) >= 0.5 and pressure_score(601, 1000) >= 0.1


def test_unknown_total_is_half():
    assert pressure_score(5, 0) == 0.5


@pytest.mark.parametrize("threshold,usage", [(0.7, 0.84), (0.3, 0.70), (0.5, 0.8), (0.1, 0.6),
                                             (1.0, 0.9)])
def test_thresholds_as_fill_levels(threshold, usage):
    assert usage_for_score(threshold) == pytest.approx(usage)
    # just under that fill level the score is at most the threshold, just over it is above
    assert pressure_score(usage - 1e-6, 1) <= threshold + 1e-9
    if threshold < 1.0 and threshold > 0.1:
        assert pressure_score(usage + 1e-3, 1) > threshold


def _node(used_gb, total_gb, host_used_gb=None, host_total_gb=None):
    return NodeLoad("gpu-master", int(used_gb * GiB), int(total_gb * GiB),
                    int((used_gb if host_used_gb is None else host_used_gb) * GiB),
                    int((total_gb if host_total_gb is None else host_total_gb) * GiB))


def test_should_offload_seed_master_under_pressure():
    master = _node(28.0, 30.4)          # the seed's 92 % master
    big = should_offload(master, 5.0)
    assert big and any("needs 5 GB" in r for r in big.reasons)
    assert any("pressure 1.00 is above 0.7" in r for r in big.reasons)
    small = should_offload(master, 0.5)  # room for it, but the node is over its threshold
    assert small.offload and not any("needs" in r for r in small.reasons)
    calm = _node(12.0, 30.4)             # 39 % full, 18 GB free
    assert not should_offload(calm, 0.5) and should_offload(calm, 20.0)


def test_should_offload_each_rule_alone():
    idle = _node(4, 32)
    assert not should_offload(idle, 1.0)
    assert should_offload(idle, 30.0).reasons == ("needs 30 GB, 28.0 GB available",)
    hot = _node(27, 32)                # 84.4 % full -> score 0.72
    d = should_offload(hot, 0.1, high=0.7, buffer_gb=0.5)
    assert d.reasons == ("pressure 0.72 is above 0.7",)
    tight = _node(9, 11)               # 82 % -> score 0.59 < 0.7, but 2 GB left
    d = should_offload(tight, 0.1, high=0.7, buffer_gb=2.5)
    assert d.reasons == ("2.0 GB available is under the 2.5 GB buffer",)
    assert not should_offload(tight, 0.1, high=0.7, buffer_gb=0.5)


def test_should_offload_uses_the_worse_of_share_and_host():
    # the agent's share is nearly empty, but the machine itself is 97 % full
    node = _node(1, 16, host_used_gb=31, host_total_gb=32)
    assert node.share_pressure == 0.1
    assert node.pressure == 1.0
    assert should_offload(node, 0.1, buffer_gb=0.1).offload


def test_unknown_or_dead_node_offloads():
    assert should_offload(None, 0.1).offload
    dead = NodeLoad("w", 0, GiB, 0, GiB, alive=False)
    assert should_offload(dead, 0.1).pressure == 0.5


def test_moved_projects_both_share_and_host():
    n = _node(10, 16, host_used_gb=20, host_total_gb=32).moved(-2 * GiB)
    assert (n.used, n.host_used) == (8 * GiB, 18 * GiB)


def test_cgroup_v2_limit_and_usage(tmp_path):
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text(str(600 * 2**20))
    (tmp_path / "memory.stat").write_text("anon 100\ninactive_file 104857600\nactive_file 5\n")
    assert cgroup_memory(tmp_path, "0::/\n") == (2**30, 500 * 2**20, "cgroup v2")
    mem = host_memory(tmp_path, "0::/\n")
    assert mem.source == "cgroup v2" and mem.total == 2**30
    assert mem.available <= 2**30 - 500 * 2**20


def test_cgroup_v2_without_limit_is_the_host(tmp_path):
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("123")
    assert cgroup_memory(tmp_path, "0::/\n") is None
    assert host_memory(tmp_path, "0::/\n").source == "host"


def test_cgroup_v1(tmp_path):
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(str(512 * 2**20))
    (v1 / "memory.usage_in_bytes").write_text(str(300 * 2**20))
    (v1 / "memory.stat").write_text("cache 1\ntotal_inactive_file 104857600\n")
    own = "4:memory:/\n0::/\n"
    assert cgroup_memory(tmp_path, own) == (512 * 2**20, 200 * 2**20, "cgroup v1")
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "unlimited"
    assert cgroup_memory(tmp_path, own) is None


def test_the_process_own_cgroup_and_the_tightest_parent(tmp_path):
    own = "9:name=systemd:/\n4:memory,foo:/jobs/job-7\n0::/\n"
    job = tmp_path / "memory" / "jobs" / "job-7"
    job.mkdir(parents=True)
    (tmp_path / "memory" / "jobs" / "memory.limit_in_bytes").write_text(str(4 << 30))
    (tmp_path / "memory" / "jobs" / "memory.usage_in_bytes").write_text(str(1 << 30))
    assert cgroup_memory(tmp_path, own) == (4 << 30, 1 << 30, "cgroup v1")  # the parent's
    (job / "memory.limit_in_bytes").write_text(str(1 << 30))
    (job / "memory.usage_in_bytes").write_text(str(900 << 20))
    assert cgroup_memory(tmp_path, own) == (1 << 30, 900 << 20, "cgroup v1")  # tighter
    v2 = "0::/user.slice/app\n"
    app = tmp_path / "user.slice" / "app"
    app.mkdir(parents=True)
    (app / "memory.max").write_text(str(2 << 30))
    (app / "memory.current").write_text(str(1 << 30))
    assert cgroup_memory(tmp_path, v2) == (2 << 30, 1 << 30, "cgroup v2")


def test_the_agents_reader_reads_usage_every_time_and_limits_every_ttl(tmp_path):
    (tmp_path / "memory.max").write_text(str(1 << 30))
    (tmp_path / "memory.current").write_text(str(600 << 20))
    clock = [0.0]
    read = HostMemoryReader(tmp_path, "0::/\n", clock=lambda: clock[0])
    assert (read().total, read().source) == (1 << 30, "cgroup v2")
    assert read().available <= (1 << 30) - (600 << 20)
    (tmp_path / "memory.current").write_text(str(1000 << 20))  # usage: read every time
    assert read().available <= (1 << 30) - (1000 << 20)
    plain = host_memory(tmp_path, "0::/\n")
    assert (read().total, read().source) == (plain.total, plain.source)
    (tmp_path / "memory.max").write_text(str(2 << 30))  # a new limit: within LAYOUT_TTL_S
    assert read().total == 1 << 30
    clock[0] += LAYOUT_TTL_S
    assert read().total == 2 << 30
    (tmp_path / "memory.max").write_text("max\n")
    clock[0] += LAYOUT_TTL_S
    assert read().source == "host"


def test_this_machine():
    mem = host_memory()
    assert 0 < mem.available <= mem.total
