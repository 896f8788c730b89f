"""Adam step time against the numpy backend's chunk size and thread count, in one run.

    python benchmarks/bench_chunks.py [--n 16777216]

The numbers behind ``optdsl.backend.numpy_backend.CHUNK``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import optdsl
import optdsl.backend.numpy_backend as numpy_backend
from optdsl.optim import Adam


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(args.n, dtype=np.float32)
    default = numpy_backend.CHUNK
    print(f"Adam, {args.n:,} float32 parameters, median ms per step (default chunk {default})")
    print(f"{'chunk':>9} " + " ".join(f"{t:>3} thr" for t in (1, 2, 4)))
    try:
        for chunk in (16384, 65536, 131072, 262144, 524288, 1048576):
            numpy_backend.CHUNK = chunk
            row = []
            for threads in (1, 2, 4):
                optdsl.set_num_threads(threads)
                w = optdsl.Param(rng.standard_normal(args.n, dtype=np.float32))
                w.grad = grad
                opt = Adam([w])
                opt.step()
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    opt.step()
                    times.append(time.perf_counter() - start)
                row.append(statistics.median(times) * 1e3)
            print(f"{chunk:>9} " + " ".join(f"{ms:7.1f}" for ms in row))
    finally:
        numpy_backend.CHUNK = default
        optdsl.set_num_threads(None)


if __name__ == "__main__":
    main()
