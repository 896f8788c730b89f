"""optdsl's Adam against torch's fused Adam, alternating in one process: a quieter A/B
than the full suite, where other implementations run in between.

    python benchmarks/bench_vs_fused.py [--n 64M] [--threads 1,2] [--backend numba]

Prints the median ms per step of each, in the order run (optdsl, torch, optdsl, torch,
optdsl), per thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import optdsl
from optdsl import Param
from optdsl.optim import Adam


def median_ms(step, warmup: int = 2, repeats: int = 7) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="64M", help="elements, K/M = 2**10/2**20")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()
    import torch

    scale = {"K": 1 << 10, "M": 1 << 20}
    n = int(args.n[:-1]) * scale[args.n[-1]] if args.n[-1] in scale else int(args.n)
    rng = np.random.default_rng(0)
    g = rng.standard_normal(n, dtype=np.float32)
    p0 = rng.standard_normal(n, dtype=np.float32)

    def ours():
        return Adam([Param(p0.copy(), grad=g)], lr=1e-3, backend=args.backend).step

    def theirs():
        tp = torch.from_numpy(p0.copy()).requires_grad_()
        tp.grad = torch.from_numpy(g)
        return torch.optim.Adam([tp], lr=1e-3, fused=True).step

    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        optdsl.set_num_threads(threads)
        row = [median_ms(ours()), median_ms(theirs()), median_ms(ours()),
               median_ms(theirs()), median_ms(ours())]
        print(f"n={n:,} threads={threads}: optdsl {row[0]}, {row[2]}, {row[4]} ms; "
              f"torch fused {row[1]}, {row[3]} ms")


if __name__ == "__main__":
    main()
