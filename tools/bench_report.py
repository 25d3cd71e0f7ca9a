"""``tools/bench.py report``: run the benchmarks, then write a Markdown table and a PNG chart of
the mesh against the baselines each one measured in its own run.

    python tools/bench.py report [--out docs/performance] [--quick] [--only NAME]... [--json]

Each benchmark runs as its own ``tools/bench.py <mode> ... --json`` subprocess (so one cannot
warm or starve the next), and its last line is read. A row of the table is one figure: the
mesh's, the baseline's from the same run, their ratio, the issue's target for that ratio, and
whether it is met. A benchmark this checkout does not have yet (an unknown mode) or that fails
is a row saying so, never a made-up figure.

``--quick`` runs every benchmark small (for the test suite: it checks that the report is made,
not the figures). Without matplotlib (the ``report`` extra) the chart is left out and the
Markdown says so.

Not here: the benchmarks themselves (``tools/bench.py`` and its modes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent / "bench.py"


@dataclass(frozen=True)
class Figure:
    """One row: ``ratio`` is the field of the mesh over its baseline; ``mesh`` and ``baseline``
    the fields of the two figures (None: the benchmark gives only the ratio)."""

    label: str
    ratio: str
    target: float | None
    mesh: str | None = None
    baseline: str | None = None
    unit: str = "GB/s"
    bound: str | None = None  # the field of the most this machine's CPUs allow, as a ratio


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]  # full size
    quick: tuple[str, ...]  # tiny, for the test suite
    figures: tuple[Figure, ...] = field(default_factory=tuple)


BENCHES = (
    Bench("transfer", ("transfer", "--size", "1GiB", "--runs", "5"),
          ("transfer", "--size", "32MiB", "--runs", "1"), (
              Figure("write, one agent", "write_ratio", 0.85, "write_gbps", "baseline_gbps"),
              Figure("read, one agent", "read_ratio", 0.85, "read_gbps", "baseline_gbps"),
              Figure("write, one agent, against 1 MiB raw sends", "write_ratio_1mib", None,
                     "write_gbps", "baseline_1mib_gbps"),
              Figure("read, one agent, against 1 MiB raw sends", "read_ratio_1mib", None,
                     "read_gbps", "baseline_1mib_gbps"))),
    Bench("stripe", ("transfer", "--stripe", "2", "--size", "1GiB", "--runs", "5"),
          ("transfer", "--stripe", "2", "--size", "32MiB", "--runs", "1"), (
              Figure("write, striped over 2 agents", "write_ratio", 1.1, "write_gbps",
                     "baseline_gbps"),
              Figure("read, striped over 2 agents", "read_ratio", 1.1, "read_gbps",
                     "baseline_gbps"))),
    Bench("local", ("transfer", "--local", "--size", "1GiB", "--runs", "5"),
          ("transfer", "--local", "--size", "32MiB", "--runs", "1"), (
              Figure("write, same host (shared memory)", "write_ratio", 3.0, "write_gbps",
                     "baseline_gbps"),
              Figure("read, same host (shared memory)", "read_ratio", 3.0, "read_gbps",
                     "baseline_gbps"))),
    Bench("small", ("small",), ("small", "--ops", "200"), (
        Figure("4 KiB ops, one in flight", "single_ratio", 0.7, "single_ops",
               "baseline_single_ops", "ops/s"),
        Figure("4 KiB ops, batched", "batched_ratio", 1.2, "batched_ops",
               "baseline_pipelined_ops", "ops/s"))),
    Bench("concurrent", ("concurrent",), ("concurrent", "--size", "1MiB"), (
        Figure("16 concurrent reads over 4 agents", "concurrency_ratio", 2.0, None, None, "",
               "cpu_bound_ratio"),)),
    Bench("move", ("move", "--size", "1GiB", "--runs", "4"),
          ("move", "--size", "32MiB", "--runs", "1"), (
              Figure("move a block agent to agent", "ratio_to_baseline", 0.7, "move_gbps",
                     "baseline_gbps", bound="cpu_bound_ratio_to_baseline"),)),
    Bench("checksum", ("checksum", "--size", "1GiB", "--runs", "5"),
          ("checksum", "--size", "32MiB", "--runs", "1"), (
              Figure("xxh3 against crc32", "ratio", None, "xxh3_gbps", "crc32_gbps"),)),
)


@dataclass
class Row:
    bench: str
    figure: Figure
    result: dict[str, Any] | None
    problem: str = ""  # why there is no figure

    @property
    def ratio(self) -> float | None:
        value = (self.result or {}).get(self.figure.ratio)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.figure.target is None:
            return None
        return self.ratio >= self.figure.target

    def value(self, name: str | None) -> str:
        v = (self.result or {}).get(name) if name else None
        if not isinstance(v, (int, float)):
            return "-"
        return f"{v:,.0f} {self.figure.unit}" if self.figure.unit == "ops/s" else \
            f"{v:.2f} {self.figure.unit}".strip()


def available_modes() -> set[str]:
    """The modes this checkout's tools/bench.py has (from its --help)."""
    done = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True,
                          timeout=60)
    text = done.stdout
    start = text.find("{")
    return set(text[start + 1:text.find("}", start)].split(",")) if start >= 0 else set()


def _flag_supported(args: tuple[str, ...]) -> bool:
    """Whether ``bench.py MODE --help`` lists every ``--flag`` of ``args``."""
    done = subprocess.run([sys.executable, str(BENCH), args[0], "--help"], capture_output=True,
                          text=True, timeout=60)
    return all(a in done.stdout for a in args[1:] if a.startswith("--"))


def run_bench(bench: Bench, quick: bool, modes: set[str], timeout_s: float) -> list[Row]:
    args = bench.quick if quick else bench.args
    if args[0] not in modes or not _flag_supported(args):
        return [Row(bench.name, f, None, "not built yet") for f in bench.figures]
    try:
        done = subprocess.run([sys.executable, str(BENCH), *args, "--json"], capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [Row(bench.name, f, None, f"did not finish in {timeout_s:.0f} s")
                for f in bench.figures]
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return [Row(bench.name, f, None, f"failed: {last}") for f in bench.figures]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return [Row(bench.name, f, result) for f in bench.figures]


def markdown(rows: list[Row], chart: str | None, meta: dict[str, Any]) -> str:
    lines = [
        "# Performance of the memory mesh",
        "",
        f"Made by `python tools/bench.py report{' --quick' if meta['quick'] else ''}` on "
        f"{meta['date']}, commit {meta['commit']}, {meta['cpus']} CPUs. Each ratio is the mesh "
        "over a baseline measured in the same run of the same benchmark. \"CPUs allow\": the "
        "most the ratio can be on this machine at the CPU the work took a byte in that run "
        "(every core busy, nothing waiting).",
        "",
        "| benchmark | figure | mesh | baseline | ratio | target | met | CPUs allow |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        f = r.figure
        if r.result is None:
            lines.append(f"| {r.bench} | {f.label} | {r.problem} | | | "
                         f"{_target(f.target)} | | |")
            continue
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        bound = r.result.get(f.bound) if f.bound else None
        allow = f"{bound:.2f}x" if isinstance(bound, (int, float)) else ""
        lines.append(f"| {r.bench} | {f.label} | {r.value(f.mesh)} | {r.value(f.baseline)} | "
                     f"{ratio} | {_target(f.target)} | {met} | {allow} |")
    lines.append("")
    lines.append(f"![ratios against their baselines]({chart})" if chart else
                 "(no chart: matplotlib is not installed; `pip install 'memory-mesh[report]'`)")
    return "\n".join(lines) + "\n"


def _target(target: float | None) -> str:
    return "" if target is None else f"≥ {target:g}x"


def chart(rows: list[Row], path: Path) -> bool:
    """A horizontal bar per figure (its ratio), with its target marked; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    shown = [r for r in rows if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(shown) + 1.5))
    labels = [f"{r.bench}: {r.figure.label}" for r in shown]
    colours = ["tab:green" if r.met is not False else "tab:red" for r in shown]
    ax.barh(labels, [r.ratio for r in shown], color=colours)
    for i, r in enumerate(shown):
        if r.figure.target is not None:
            ax.plot([r.figure.target] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)  # 0.25x and 4x are as far from 1x
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.invert_yaxis()
    ax.set_xlabel("mesh / baseline of the same run (black mark: target)")
    ax.set_title("memory mesh against its in-run baselines")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def report(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = available_modes()
    rows: list[Row] = []
    for bench in BENCHES:
        if args.only and bench.name not in args.only:
            continue
        rows.extend(run_bench(bench, args.quick, modes, args.timeout))
    png = out / "performance.png"
    drawn = chart(rows, png)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=BENCH.parent).stdout.strip() or "unknown"
    meta = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": commit, "cpus": os.cpu_count()}
    md = out / "performance.md"
    md.write_text(markdown(rows, png.name if drawn else None, meta))
    return {"bench": "report", "markdown": str(md), "chart": str(png) if drawn else None,
            "rows": [{"bench": r.bench, "figure": r.figure.label, "ratio": r.ratio,
                      "target": r.figure.target, "met": r.met, "problem": r.problem or None,
                      "cpus_allow": (r.result or {}).get(r.figure.bound or "")}
                     for r in rows]}


def add_parser(sub: Any) -> None:
    rp = sub.add_parser("report", help="run the benchmarks; write a Markdown table and a PNG "
                        "chart against their in-run baselines")
    rp.add_argument("--out", default="docs/performance", help="where performance.md and "
                    "performance.png go")
    rp.add_argument("--quick", action="store_true", help="every benchmark small (a check that "
                    "the report is made, not a measurement)")
    rp.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this benchmark (repeatable): "
                    + ", ".join(b.name for b in BENCHES))
    rp.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds one benchmark may take")
    rp.add_argument("--json", action="store_true", help="print one JSON object as the last line")
