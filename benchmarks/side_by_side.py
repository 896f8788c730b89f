"""Timing configurations side by side, as bench_diagnostics.py and bench_reductions.py do.

The configurations take turns: every round times ``steps`` steps of each, in a rotated
order, and the median over rounds is reported, so a machine whose load drifts slows every
configuration alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.suite import parse_size


def measure(opts: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each optimizer (anything with ``step()``), one sample per
    round, in alternating turns, after two warm-up steps each (compile, allocate)."""
    names = list(opts)
    for opt in opts.values():
        opt.step()
        opt.step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            step = opts[name].step
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def table(times: dict[str, list[float]], backends: dict[str, str], title: str,
          reference: str, ratio: str) -> str:
    """A Markdown table: each configuration's backend, median ms per step, and the ratio
    to ``reference`` (column ``ratio``), under the line ``title``."""
    ref = statistics.median(times[reference])
    lines = [title, "", f"| configuration | backend | ms / step | {ratio} |",
             "| --- | --- | ---: | ---: |"]
    for name, samples in times.items():
        median = statistics.median(samples)
        lines.append(f"| {name} | {backends[name]} | {median * 1e3:.2f} | {median / ref:.2f}x |")
    return "\n".join(lines)


def arguments(description: str, backend_help: str) -> argparse.ArgumentParser:
    """The options both scripts take: --n, --tensors, --rounds, --steps and --backend."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=parse_size, default=4 << 20,
                        help="parameters in all; K and M are 2**10 and 2**20 (default 4M)")
    parser.add_argument("--tensors", type=int, default=8, help="tensors (default 8)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--steps", type=int, default=5, help="steps per round (default 5)")
    parser.add_argument("--backend", default=None, help=backend_help)
    return parser
