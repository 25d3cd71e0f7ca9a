"""Zero-copy read tracking does not grow under a read-mostly load (issue 10, defect 2): reads
libzmq has finished sending are forgotten without any write or free touching their block."""

from __future__ import annotations

from dataclasses import dataclass

from agents.writegate import SWEEP_MIN, WriteGate


@dataclass
class Tracker:
    done: bool = False


def _remembered(gate: WriteGate) -> int:
    return sum(len(v) for v in gate._sending.values())


def test_done_reads_do_not_accumulate_without_writes_or_frees():
    gate = WriteGate("n1")
    in_flight: list[Tracker] = []
    for i in range(200_000):  # a model-weights server: reads of many blocks, nothing else
        tracker = Tracker()
        gate.sent(f"b{i % 5000}", 0, 65536, tracker)
        in_flight.append(tracker)
        if len(in_flight) > 8:  # libzmq finishes the oldest sends
            in_flight.pop(0).done = True
    assert _remembered(gate) <= 2 * SWEEP_MIN  # the old gate: 199,992
    assert _remembered(gate) == gate.tracked


def test_live_reads_are_kept_and_still_hold_writes_back():
    gate = WriteGate("n1")
    held = Tracker()
    gate.sent("b", 0, 10, held)
    for _ in range(5 * SWEEP_MIN):
        gate.sent("c", 0, 10, Tracker(done=False))
    assert gate.must_wait("b", 5, 6)
    assert gate.tracked == 5 * SWEEP_MIN + 1  # every live read is remembered
    held.done = True
    assert not gate.must_wait("b", 5, 6)
    gate.forget("c")
    assert gate.tracked == 0 and _remembered(gate) == 0
