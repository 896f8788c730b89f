"""Run under ``mpiexec -n N python -m mpi4py``: ShardedOptimizer (ZeRO-1) over Adam equals
the unsharded Adam on the whole batch, to rtol 1e-12 in float64, and each rank holds
1/N of the state (tests/distributed)."""

import numpy as np
from mpi4py import MPI

import optdsl
from optdsl.distributed import ShardedOptimizer
from optdsl.optim import Adam

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
rng = np.random.default_rng(0)
x, y = rng.standard_normal((64, 5)), rng.standard_normal((64, 3))
start = [rng.standard_normal((5, 3)), rng.standard_normal(3)]


def grads(w, b, xs, ys, n):
    r = xs @ w + b - ys
    return 2 * xs.T @ r / n, 2 * r.sum(axis=0) / n


mine = [optdsl.Param(v.copy()) for v in start]
opt = ShardedOptimizer(Adam(mine, lr=0.01, weight_decay=0.1), comm)
rows = slice(rank * len(x) // size, (rank + 1) * len(x) // size)
for _ in range(20):
    mine[0].grad, mine[1].grad = grads(mine[0].data, mine[1].data, x[rows], y[rows],
                                       len(x) // size)
    opt.step()

ref = [optdsl.Param(v.copy()) for v in start]
ref_opt = Adam(ref, lr=0.01, weight_decay=0.1)
for _ in range(20):
    ref[0].grad, ref[1].grad = grads(ref[0].data, ref[1].data, x, y, len(x))
    ref_opt.step()
for a, b in zip(mine, ref, strict=True):
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14)
full = sum(np.asarray(v).nbytes for st in ref_opt.state.values()
           for k, v in st.items() if k != "step")
padded = -(-18 // size) * size  # 18 elements, 2 states of float64 each
assert opt.state_bytes() == full * padded // 18 // size, (opt.state_bytes(), full)
print(f"rank {rank}: ok, state {opt.state_bytes()} of {full} bytes", flush=True)
