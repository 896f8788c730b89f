"""Adam step time on one flat float32 parameter, optdsl against baselines, in one run.

    python benchmarks/bench_adam.py [--n 16777216] [--repeats 7]

Prints the median time per step and the effective bandwidth (28 bytes per parameter:
read p, g, m, v; write p, m, v) for: a naive NumPy Adam (temporaries per expression),
optdsl's numpy backend, torch.optim.Adam (foreach and fused) when torch is installed,
and a memory copy of the same bytes as the machine's practical ceiling. Ratios printed at
the end are the numbers to quote; absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import optdsl
from optdsl.optim import Adam

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def naive_adam(p, g, m, v, t):
    m[...] = B1 * m + (1 - B1) * g
    v[...] = B2 * v + (1 - B2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - B2 ** t) + EPS
    p -= LR / (1 - B1 ** t) * m / denom


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up (compiles, allocates state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    n, bytes_moved = args.n, 28 * args.n
    rng = np.random.default_rng(0)
    results: dict[str, float] = {}

    src = rng.standard_normal(7 * n // 2, dtype=np.float32)
    dst = np.empty_like(src)
    results["memcpy (same bytes)"] = timeit(lambda: np.copyto(dst, src), args.repeats)

    p, g = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    step = [0]

    def naive():
        step[0] += 1
        naive_adam(p, g, m, v, step[0])

    results["naive NumPy Adam"] = timeit(naive, args.repeats)

    w = optdsl.Param(p.copy())
    w.grad = g
    opt = Adam([w], lr=LR)
    results["optdsl Adam (numpy backend)"] = timeit(opt.step, args.repeats)

    try:
        import torch
    except ImportError:
        print("torch not installed: skipping the torch baselines")
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        for label, kw in (("torch Adam foreach", {"foreach": True}),
                          ("torch Adam fused", {"fused": True})):
            tp = torch.from_numpy(p.copy()).requires_grad_()
            tp.grad = torch.from_numpy(g)
            topt = torch.optim.Adam([tp], lr=LR, **kw)
            results[label] = timeit(topt.step, args.repeats)

    print(f"Adam, {n:,} float32 parameters, median of {args.repeats} steps")
    for name, seconds in results.items():
        print(f"  {name:30s} {seconds * 1e3:8.2f} ms  {bytes_moved / seconds / 1e9:6.1f} GB/s")
    ours = results["optdsl Adam (numpy backend)"]
    print(f"  optdsl vs naive NumPy:   {results['naive NumPy Adam'] / ours:5.2f}x faster")
    print(f"  optdsl vs memcpy:        {results['memcpy (same bytes)'] / ours:5.2f} of the "
          "copy bandwidth")
    if "torch Adam fused" in results:
        print(f"  optdsl vs torch fused:   {results['torch Adam fused'] / ours:5.2f}x "
              "(>1 means optdsl is faster)")


if __name__ == "__main__":
    main()
