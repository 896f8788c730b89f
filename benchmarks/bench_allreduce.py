"""What the all-reduce of data-parallel training costs: a 64 MiB float32 gradient, reduced
by optdsl.distributed.AllReduce with and without buckets, and with compression on the wire,
side by side in one run.

    mpiexec -n 2 python -m mpi4py benchmarks/bench_allreduce.py [--mib 64] [--rounds 9]

Configurations, each timed as the median over ``--rounds`` rounds (rank 0 prints a
Markdown table; every rank takes part):

- one tensor of ``--mib`` MiB, one collective (``bucket_mb`` larger than the gradient);
- the same tensor in 25 MiB buckets (the default), reduced in place, slice by slice;
- the same bytes as 64 separate tensors, packed into 25 MiB buckets and back;
- the 64 tensors flattened (``optdsl.flatten``) into one buffer, reduced in place in
  25 MiB slices;
- the same, with ``compression="fp16"`` and ``"bf16"``: each slice cast to 16 bits for the
  wire and back (fp16 through MPI's float16 sum where the MPI has one, bf16 gathered and
  added by every rank: see AllReduce's docstring).

The ratios are the numbers to quote: absolute times depend on the machine, its load, and
on MPI's transport (shared memory between processes of one machine here). Over shared
memory compression costs more than it saves (two casts per bucket, NumPy's float16 ones
slow, and MPICH adds float16 more slowly than float32): it is for a slow wire.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optdsl  # noqa: E402
from optdsl.distributed import AllReduce  # noqa: E402

REFERENCE = "one tensor, one collective"


def configurations(mib: float) -> dict:
    n = int(mib * (1 << 20)) // 4
    rng = np.random.default_rng(MPI.COMM_WORLD.Get_rank())
    one = [rng.standard_normal(n).astype(np.float32)]
    parts = [rng.standard_normal(n // 64).astype(np.float32) for _ in range(64)]
    flat = [optdsl.Param(g.copy()) for g in parts]
    for p, g in zip(flat, parts, strict=True):
        p.grad = g.copy()
    optdsl.flatten(flat)
    comm = MPI.COMM_WORLD
    return {
        REFERENCE: (AllReduce(comm, bucket_mb=2 * mib), one),
        "one tensor, 25 MiB buckets": (AllReduce(comm), one),
        "64 tensors, packed into 25 MiB buckets": (AllReduce(comm), parts),
        "64 tensors flattened, 25 MiB buckets": (AllReduce(comm), [p.grad for p in flat]),
        "64 tensors flattened, 25 MiB buckets, fp16 on the wire":
            (AllReduce(comm, compression="fp16"), [p.grad for p in flat]),
        "64 tensors flattened, 25 MiB buckets, bf16 on the wire":
            (AllReduce(comm, compression="bf16"), [p.grad for p in flat]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=64.0, help="gradient size (default 64)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    configs = configurations(args.mib)
    times: dict[str, list[float]] = {name: [] for name in configs}
    buckets = {}
    for hook, grads in configs.values():  # warm-up
        hook(None, [grads])
    for r in range(args.rounds):
        names = list(configs)
        for name in names[r % len(names):] + names[:r % len(names)]:
            hook, grads = configs[name]
            comm.Barrier()
            start = time.perf_counter()
            hook(None, [grads])
            comm.Barrier()
            times[name].append(time.perf_counter() - start)
            buckets[name] = hook.buckets_last_step
    if comm.Get_rank() == 0:
        ref = statistics.median(times[REFERENCE])
        print(f"{args.mib:g} MiB of float32 gradient, {comm.Get_size()} ranks, "
              f"{MPI.Get_library_version().splitlines()[0].strip()}; "
              f"median of {args.rounds} rounds\n")
        print("| configuration | collectives | ms | vs one collective |")
        print("| --- | ---: | ---: | ---: |")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"| {name} | {buckets[name]} | {median * 1e3:.1f} | {median / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
