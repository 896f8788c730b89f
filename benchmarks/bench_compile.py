"""Compile time of a stdlib optimizer: cold (fresh process, empty disk cache), warm disk
cache (fresh process), and cached in memory.

    python benchmarks/bench_compile.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = """
import time
t0 = time.perf_counter()
import optdsl.optim
t1 = time.perf_counter()
cls = optdsl.optim.load("Adam")
cls.source("numpy")              # parse, check, lower, passes, render, build one kernel
t2 = time.perf_counter()
from optdsl import optim
optdsl.api._STDLIB_CLASSES.clear()
cls = optim.load("Adam"); cls.source("numpy")   # again, in this process
t3 = time.perf_counter()
import optdsl.optim as o
t4 = time.perf_counter(); o.Adam; o.Adam.source("numpy"); t5 = time.perf_counter()
print(f"{(t1-t0)*1e3:.1f} {(t2-t1)*1e3:.1f} {(t3-t2)*1e3:.1f} {(t5-t4)*1e3:.3f}")
"""


def run(cache_dir: str) -> list[float]:
    env = dict(os.environ, OPTDSL_CACHE_DIR=cache_dir)
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode:
        raise SystemExit(result.stderr)
    out = result.stdout
    return [float(x) for x in out.split()]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        cold = run(d)
        warm = run(d)
    print("Adam, parse to kernel (ms):")
    print(f"  import optdsl                          {cold[0]:8.1f}")
    print(f"  first compile, empty disk cache        {cold[1]:8.1f}")
    print(f"  first compile, warm disk cache         {warm[1]:8.1f}")
    print(f"  recompile in-process (spec re-parsed)  {cold[2]:8.1f}")
    print(f"  cached class + kernel lookup           {cold[3]:8.3f}")


if __name__ == "__main__":
    main()
