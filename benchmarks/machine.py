"""What a run ran on, and how much of the CPUs other processes took while it ran.

On a shared machine, threads that wait for each other at the end of every step (torch's
OpenMP team, numba's and optdsl's pools) lose whole scheduler time slices whenever another
process holds a core, and the medians stop measuring the code. :class:`OtherLoad` puts a
number on that for every section of the run, so a reader can tell.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def _busy_seconds() -> float | None:
    """CPU seconds spent busy on all CPUs since boot (user, nice, system, irq, softirq and
    a VM's steal), from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()  # every thread of this process, and the children it has waited for
    return t.user + t.system + t.children_user + t.children_system


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class OtherLoad:
    """The share of the machine's CPUs that other processes used between ``__init__`` and
    :meth:`share` (0: they were idle; 0.5 on 2 CPUs: one core was taken all along). Counted
    in clock ticks (10 ms), so it is meaningful over seconds, not milliseconds."""

    def __init__(self):
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(), _own_seconds()

    def share(self) -> float | None:
        busy = _busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = time.perf_counter() - self.wall
        others = (busy - self.busy) - (_own_seconds() - self.own)
        return min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))


def idle_share(seconds: float = 0.5) -> float | None:
    """Other processes' share of the CPUs over ``seconds`` while this one sleeps."""
    load = OtherLoad()
    time.sleep(seconds)
    return load.share()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (with uncommitted changes)" if dirty else "")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def describe(threads: int, torch_version: str | None) -> dict:
    """The machine, the software and the command, for the report's header."""
    import numpy as np

    import optdsl

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks",
                             *sys.argv[1:]]),
        "cpu": _cpu_model(), "cores": cores(), "threads": threads,
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch_version,
        "numba": _version("numba"), "optdsl": optdsl.__version__, "commit": _git_commit(),
        "available_backends": optdsl.backends(), "flatten": hasattr(optdsl, "flatten"),
    }
