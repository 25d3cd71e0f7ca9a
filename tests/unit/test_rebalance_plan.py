"""The pure planning of rebalancing and draining (no agents, no Ray)."""

from __future__ import annotations

from mesh.balance.pressure import NodeLoad
from mesh.balance.rebalance import master_shortfall, plan_moves

MiB = 1 << 20
HOST = 64 * 1024 * MiB  # a roomy host: the shares decide


def _node(name, used_mib, capacity_mib, alive=True):
    return NodeLoad(name, used_mib * MiB, capacity_mib * MiB, used_mib * MiB, HOST, alive)


def test_a_node_over_high_sheds_biggest_blocks_until_under_low():
    loads = [_node("a", 95, 100), _node("b", 10, 100), _node("c", 20, 100)]
    blocks = {"a": [("a1", 5 * MiB), ("a2", 40 * MiB), ("a3", 30 * MiB), ("a4", 20 * MiB)]}
    plan = plan_moves(loads, blocks, high=0.7, low=0.3)
    assert [m.block for m in plan.moves] == ["a2"]  # 95 -> 55 % is under low (70 %)
    assert plan.moves[0].source == "a" and plan.moves[0].target == "b"
    assert plan.before["a"] == 1.0 and plan.after["a"] == 0.1
    assert plan.after["b"] <= 0.7 and not plan.unplaced


def test_targets_are_spread_and_never_pushed_over_high():
    loads = [_node("a", 98, 100), _node("b", 60, 100), _node("c", 60, 100)]
    blocks = {"a": [(f"a{i}", 10 * MiB) for i in range(9)]}
    plan = plan_moves(loads, blocks, high=0.7, low=0.3)
    targets = [m.target for m in plan.moves]
    assert set(targets) == {"b", "c"}
    assert all(p <= 0.7 for n, p in plan.after.items() if n != "a")
    assert plan.after["a"] < 0.3 or plan.unplaced


def test_nothing_moves_when_no_node_is_over_high():
    loads = [_node("a", 83, 100), _node("b", 0, 100)]  # 83 % scores 0.65
    assert plan_moves(loads, {"a": [("a1", 50 * MiB)]}, high=0.7, low=0.3).moves == []


def test_blocks_that_fit_nowhere_are_reported():
    loads = [_node("a", 99, 100), _node("b", 80, 100)]
    plan = plan_moves(loads, {"a": [("big", 60 * MiB), ("small", 3 * MiB)]}, high=0.7, low=0.3)
    assert plan.unplaced == [("big", 60 * MiB, "a")]
    assert [m.block for m in plan.moves] == ["small"]


def test_dead_nodes_take_nothing_and_overloaded_nodes_do_not_swap():
    loads = [_node("a", 99, 100), _node("b", 99, 100), _node("c", 0, 100, alive=False)]
    plan = plan_moves(loads, {"a": [("a1", MiB)], "b": [("b1", MiB)]}, high=0.7, low=0.3)
    assert plan.moves == [] and len(plan.unplaced) == 2


def test_drain_moves_everything_even_when_targets_end_up_warm():
    loads = [_node("a", 50, 100), _node("b", 70, 100), _node("c", 75, 100)]
    blocks = {"a": [("a1", 20 * MiB), ("a2", 20 * MiB), ("a3", 10 * MiB)]}
    plan = plan_moves(loads, blocks, high=0.7, low=0.3, drain="a")
    assert sorted(m.block for m in plan.moves) == ["a1", "a2", "a3"]
    assert {m.target for m in plan.moves} <= {"b", "c"} and not plan.unplaced
    assert plan.after["a"] == 0.1


def test_the_host_counts_too():
    # the share is nearly empty but the machine is 97 % full: its blocks should leave
    hot = NodeLoad("a", 10 * MiB, 100 * MiB, 97 * MiB, 100 * MiB)
    cool = NodeLoad("b", 0, 100 * MiB, 10 * MiB, 100 * MiB)
    plan = plan_moves([hot, cool], {"a": [("a1", 10 * MiB)]}, high=0.7, low=0.3)
    assert [m.block for m in plan.moves] == ["a1"]


def test_master_shortfall():
    hot = NodeLoad("m", 95, 100, 95, 100)
    assert master_shortfall(hot, 0.7, 0.3) == 25  # down to 70 % full (score 0.3)
    assert master_shortfall(NodeLoad("m", 80, 100, 80, 100), 0.7, 0.3) == 0


def test_a_block_with_copies_never_moves_to_a_node_holding_one():
    # b1 has copies on a and b; draining a must send a's copy to c, never to b
    loads = [NodeLoad("a", 10 * MiB, 100 * MiB, 10 * MiB, 100 * MiB),
             NodeLoad("b", 1 * MiB, 100 * MiB, 1 * MiB, 100 * MiB),
             NodeLoad("c", 50 * MiB, 100 * MiB, 50 * MiB, 100 * MiB)]
    plan = plan_moves(loads, {"a": [("b1", MiB)], "b": [("b1", MiB)]}, high=0.7, low=0.3,
                      drain="a")
    assert [(m.block, m.source, m.target) for m in plan.moves] == [("b1", "a", "c")]


def test_a_node_without_an_agent_has_no_pressure_figure_and_takes_nothing():
    """A node of the cluster file no agent answers for (a master without an agent, say) has
    unknown figures: no pressure is made up for it, and no block goes there."""
    loads = [_node("a", 95, 100), _node("b", 10, 100), _node("master", 0, 0, alive=False)]
    plan = plan_moves(loads, {"a": [("a1", 40 * MiB)]}, high=0.7, low=0.3)
    assert plan.before["master"] is None and plan.after["master"] is None
    assert [(m.block, m.target) for m in plan.moves] == [("a1", "b")]
    assert plan.before["a"] == 1.0
