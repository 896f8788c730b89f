"""Run under ``mpiexec -n 2 python -m mpi4py``, on a machine with two GPUs or more (NCCL
refuses two ranks on one GPU): rank r on GPU r, NcclAllReduce gives every rank the mean of
both ranks' gradients, packed and flattened, in 25 MiB and 1 KiB buckets, and an SGD step
with it is the same on both ranks (tests/gpu/test_nccl_gpu.py)."""

import cupy
import numpy as np
from mpi4py import MPI

import optdsl
from optdsl.distributed import NcclAllReduce
from optdsl.optim import SGD

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
cupy.cuda.Device(rank).use()
# small integers: their sums and the means by 2 are exact in every dtype
SHAPES = [((64, 33), np.float32), ((1000,), np.float32), ((5,), np.float64),
          ((7, 3), np.float16), ((17,), np.float32)]


def grads_of(r):
    rng = np.random.default_rng(r)
    return [rng.integers(-8, 8, shape).astype(dtype) for shape, dtype in SHAPES]


want = [sum(gs) / size for gs in zip(*(grads_of(r) for r in range(size)), strict=True)]
hooks = {mb: NcclAllReduce(comm, bucket_mb=mb) for mb in (25.0, 1e-3)}
buckets = []
for flat in (False, True):
    for mb, hook in hooks.items():
        params = [optdsl.Param(cupy.zeros(shape, dtype), grad=cupy.asarray(g))
                  for (shape, dtype), g in zip(SHAPES, grads_of(rank), strict=True)]
        if flat:
            optdsl.flatten(params)
        hook(None, [[p.grad for p in params[:2]], [p.grad for p in params[2:]]])
        for p, w in zip(params, want, strict=True):
            np.testing.assert_array_equal(p.grad.get(), w, err_msg=f"flat={flat}, {mb} MiB")
        buckets.append(hook.buckets_last_step)

# an SGD step on the mean: the same parameters on both ranks
params = [optdsl.Param(cupy.ones(shape, dtype), grad=cupy.asarray(g))
          for (shape, dtype), g in zip(SHAPES, grads_of(rank), strict=True)]
opt = SGD(params, lr=0.5)
opt.register_grad_hook(hooks[25.0])
opt.step()
for p, w in zip(params, want, strict=True):
    mine = p.data.get()
    theirs = np.empty_like(mine)
    comm.Sendrecv(mine.view(np.uint8), dest=1 - rank, recvbuf=theirs.view(np.uint8),
                  source=1 - rank)  # as bytes: float16 needs no MPI type
    np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_allclose(mine.astype(np.float64), 1 - 0.5 * w.astype(np.float64),
                               rtol=1e-3)
print(f"rank {rank}: ok, buckets {buckets}", flush=True)
