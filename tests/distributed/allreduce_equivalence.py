"""Run under ``mpiexec -n N python -m mpi4py``: data-parallel Adam with AllReduce equals
one process stepping on the whole batch, to rtol 1e-12 in float64 (tests/distributed)."""

import sys

import numpy as np
from mpi4py import MPI

import optdsl
from optdsl.distributed import AllReduce
from optdsl.optim import Adam

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
bucket_mb = float(sys.argv[1]) if len(sys.argv) > 1 else 25.0
flatten = len(sys.argv) > 2 and sys.argv[2] == "flat"

rng = np.random.default_rng(0)  # the same data on every rank
x, y = rng.standard_normal((64, 5)), rng.standard_normal((64, 3))
start = [rng.standard_normal((5, 3)), rng.standard_normal(3)]


def grads(w, b, xs, ys, n):
    """The gradient of the mean squared error over n samples, of the rows xs, ys."""
    r = xs @ w + b - ys
    return 2 * xs.T @ r / n, 2 * r.sum(axis=0) / n


def train(params, opt, shard):
    for _ in range(20):
        xs, ys = x[shard], y[shard]
        gw, gb = grads(params[0].data, params[1].data, xs, ys, len(x) // max(1, size))
        params[0].grad[...] = gw  # in place: a flattened layout keeps its buffer
        params[1].grad[...] = gb
        opt.step()


# every rank: the data-parallel run over its shard of the rows
mine = [optdsl.Param(v.copy()) for v in start]
for p in mine:
    p.grad = np.zeros_like(p.data)
if flatten:
    optdsl.flatten(mine)
opt = Adam(mine, lr=0.01)
hook = AllReduce(comm, average=True, bucket_mb=bucket_mb)
opt.register_grad_hook(hook)
train(mine, opt, slice(rank * len(x) // size, (rank + 1) * len(x) // size))

# the reference: one process, the whole batch
ref = [optdsl.Param(v.copy()) for v in start]
for p in ref:
    p.grad = np.zeros_like(p.data)
ref_opt = Adam(ref, lr=0.01)
for _ in range(20):
    gw, gb = grads(ref[0].data, ref[1].data, x, y, len(x))
    ref[0].grad[...] = gw
    ref[1].grad[...] = gb
    ref_opt.step()

for a, b in zip(mine, ref, strict=True):
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14)
print(f"rank {rank}: ok, {hook.buckets_last_step} buckets", flush=True)
