"""What sharding the optimizer state (ZeRO stage 1) costs a step: Adam over 64 MiB of
float32 params, data-parallel on every rank, side by side in one run.

    mpiexec -n 2 python -m mpi4py benchmarks/bench_sharded.py [--mib 64] [--rounds 9]

Configurations, each timed as the median over ``--rounds`` rounds of one step (gradients
in place; rank 0 prints a Markdown table; every rank takes part):

- **unsharded**: every rank keeps all of Adam's state; ``AllReduce`` (25 MiB buckets, in
  place on the flattened gradients) then the fused Adam kernel over all the params;
- **sharded**: ``ShardedOptimizer``: reduce-scatter of the gradients, the fused kernel
  over this rank's shard only, all-gather of the params.

The table gives each one's time, its ratio to the unsharded step, and the optimizer state
each rank holds. The ratios are the numbers to quote: absolute times depend on the
machine, its load, and MPI's transport (shared memory between processes of one machine
here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optdsl  # noqa: E402
from benchmarks.side_by_side import measure  # noqa: E402
from optdsl.distributed import AllReduce, ShardedOptimizer  # noqa: E402
from optdsl.optim import Adam  # noqa: E402

REFERENCE = "unsharded: AllReduce + Adam"
SHARDED = "sharded: reduce-scatter + Adam on 1/N + all-gather"


def _params(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    sizes = [n // 8] * 7 + [n - 7 * (n // 8)]
    params = [optdsl.Param(rng.standard_normal(k).astype(np.float32)) for k in sizes]
    for p in params:
        p.grad = rng.standard_normal(p.data.size).astype(np.float32)
    return params


def configurations(mib: float, backend: str | None) -> dict:
    comm = MPI.COMM_WORLD
    n = int(mib * (1 << 20)) // 4
    plain_params = _params(n, 0)
    optdsl.flatten(plain_params)
    plain = Adam(plain_params, lr=1e-3, backend=backend)
    plain.register_grad_hook(AllReduce(comm))
    sharded_params = _params(n, 0)
    sharded = ShardedOptimizer(Adam(sharded_params, lr=1e-3, backend=backend), comm)

    def plain_bytes() -> int:
        return sum(np.asarray(v).nbytes for st in plain.state.values()
                   for k, v in st.items() if k != "step")

    return {REFERENCE: (plain, plain_bytes), SHARDED: (sharded, sharded.state_bytes)}


class _Synced:
    """An optimizer whose step() waits for every rank before and after."""

    def __init__(self, opt, comm):
        self.opt, self.comm = opt, comm

    def step(self) -> None:
        self.comm.Barrier()
        self.opt.step()
        self.comm.Barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=64.0, help="params' size (default 64)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--backend", default=None, help="optdsl backend (default: fastest)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    configs = configurations(args.mib, args.backend)
    # side_by_side's alternating rounds, each step between barriers: every rank's time is
    # the slowest rank's, as training sees it.
    times = measure({name: _Synced(opt, comm) for name, (opt, _) in configs.items()},
                    rounds=args.rounds, steps=1)
    if comm.Get_rank() == 0:
        ref = statistics.median(times[REFERENCE])
        backend = configs[REFERENCE][0]._backend_for(
            configs[REFERENCE][0].param_groups[0]["params"]).name
        print(f"Adam over {args.mib:g} MiB of float32 params in 8 tensors, "
              f"{comm.Get_size()} ranks, backend {backend}, "
              f"{MPI.Get_library_version().splitlines()[0].strip()}; median of "
              f"{args.rounds} rounds\n")
        print("| configuration | ms / step | vs unsharded | state bytes on rank 0 |")
        print("| --- | ---: | ---: | ---: |")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"| {name} | {median * 1e3:.1f} | {median / ref:.2f}x | "
                  f"{configs[name][1]():,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
