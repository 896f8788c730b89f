"""Run under ``mpiexec -n 2 python -m mpi4py``: rank 1 raises before the collective; the
job must end at once with the error, rank 0 not left waiting (tests/distributed)."""

import numpy as np
from mpi4py import MPI

import optdsl
from optdsl.distributed import AllReduce
from optdsl.optim import SGD

comm = MPI.COMM_WORLD
w = optdsl.Param(np.zeros(4))
w.grad = np.ones(4)
opt = SGD([w], lr=0.1)
opt.register_grad_hook(AllReduce(comm))
if comm.Get_rank() == 1:
    raise ValueError("rank 1 fails on purpose")
opt.step()
