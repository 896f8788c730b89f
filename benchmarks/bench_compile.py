"""Compile time of a stdlib optimizer (Adam), per backend: cold (fresh process, empty disk
caches), warm disk cache (fresh process), again in the same process, and cached; for a
JIT backend (numba) also the first call's JIT, cold and from the JIT's disk cache.

    python benchmarks/bench_compile.py [--backend numpy]

``python -m benchmarks`` runs :func:`measure` for every backend as part of the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter; prints one JSON object of milliseconds (and kernel stats).
CHILD = r"""
import json, sys, time
clock = time.perf_counter
backend = sys.argv[1]
out = {}
t0 = clock()
import numpy as np
import optdsl
import optdsl.optim
out["import_ms"] = (clock() - t0) * 1e3

t0 = clock()
cls = optdsl.optim.load("Adam")
cls.source(backend)     # parse, check, lower, passes, render, build one kernel
out["first_compile_ms"] = (clock() - t0) * 1e3

# Again in this process: the class cache emptied, so the spec is parsed and checked again;
# the kernel's source comes from the in-memory cache.
optdsl.api._STDLIB_CLASSES.clear()
t0 = clock()
optdsl.optim.load("Adam").source(backend)
out["recompile_ms"] = (clock() - t0) * 1e3

# Equivalent text no cache has seen (a comment added): the whole pipeline, warm process.
text = cls.spec_text() + "\n# the same rule as new text\n"
t0 = clock()
optdsl.compile(text).source(backend)
out["new_text_ms"] = (clock() - t0) * 1e3


def best(fn, repeats=20):
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times) * 1e3


out["cached_class_ms"] = best(lambda: optdsl.optim.Adam.source(backend))
out["cached_compile_ms"] = best(lambda: optdsl.compile(text).source(backend))

if backend == "numba":
    # numba's own start-up (LLVM and its caches, some tenths of a second) goes to the
    # process's first numba call: pay it here, so the JIT rows below are the kernel's own.
    import numba
    t0 = clock()
    numba.njit(lambda x: x + 1)(1)
    out["jit_startup_ms"] = (clock() - t0) * 1e3
if backend != "numpy":
    Adam = optdsl.optim.Adam
    w = optdsl.Param(np.zeros(4096, np.float32), grad=np.ones(4096, np.float32))
    opt = Adam([w], backend=backend)
    t0 = clock()
    opt.step()          # the first call JIT-compiles (or loads from the JIT's disk cache)
    out["first_step_ms"] = (clock() - t0) * 1e3
    t0 = clock()
    opt.step()
    out["second_step_ms"] = (clock() - t0) * 1e3
    path = Adam._spec.host["decide"](opt.defaults, 1)
    kernel = Adam._spec.kernel(optdsl.backend.get(backend), path)
    out["kernel_stats"] = json.loads(json.dumps(getattr(kernel, "stats", None) or {},
                                                default=str))
print(json.dumps(out))
"""


def _child(backend: str, cache_dir: str) -> dict:
    env = dict(os.environ, OPTDSL_CACHE_DIR=cache_dir,
               NUMBA_CACHE_DIR=os.path.join(cache_dir, "numba"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", CHILD, backend], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"compile-time child for backend {backend!r} failed:\n"
                           f"{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def jit_ms(run: dict) -> float | None:
    """The first call's JIT time: what the kernel's stats report, else the first step's
    wall time less the second's. None for a backend without a JIT."""
    if "first_step_ms" not in run:
        return None
    seconds = run.get("kernel_stats", {}).get("compile_seconds")
    if isinstance(seconds, dict) and seconds:
        return sum(float(s) for s in seconds.values()) * 1e3
    return run["first_step_ms"] - run["second_step_ms"]


def measure(backend: str = "numpy") -> dict:
    """Cold and warm-disk runs of :data:`CHILD`, each in a fresh process, sharing one
    temporary cache directory (optdsl's and numba's) that starts empty."""
    with tempfile.TemporaryDirectory(prefix="optdsl-bench-") as d:
        cold = _child(backend, d)
        warm = _child(backend, d)
    return {"cold": cold, "warm_disk": warm,
            "jit_cold_ms": jit_ms(cold), "jit_warm_disk_ms": jit_ms(warm)}


ROWS = (
    ("import optdsl (fresh process)", "cold", "import_ms"),
    ("first compile, empty disk cache", "cold", "first_compile_ms"),
    ("first compile, warm disk cache", "warm_disk", "first_compile_ms"),
    ("recompile in-process (spec re-parsed)", "cold", "recompile_ms"),
    ("new equivalent text in-process", "cold", "new_text_ms"),
    ("cached class + kernel lookup", "cold", "cached_class_ms"),
    ("cached optdsl.compile + kernel lookup", "cold", "cached_compile_ms"),
    ("numba start-up: a trivial njit's first call", "cold", "jit_startup_ms"),
    ("first-call JIT, empty disk cache", None, "jit_cold_ms"),
    ("first-call JIT, warm disk cache", None, "jit_warm_disk_ms"),
)


def rows(result: dict) -> list[tuple[str, float | None]]:
    """(label, milliseconds or None) for each row of :data:`ROWS`."""
    out = []
    for label, run, key in ROWS:
        value = result.get(key) if run is None else result[run].get(key)
        out.append((label, value))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args()
    result = measure(args.backend)
    print(f"Adam, parse to kernel, backend {args.backend} (ms):")
    for label, ms in rows(result):
        if ms is not None:
            print(f"  {label:44s} {ms:9.3f}")


if __name__ == "__main__":
    main()
