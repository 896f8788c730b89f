"""Run under ``mpiexec -n 2 python -m mpi4py``: the ranks' params differ in shape; every
rank raises DistributedError naming the difference (tests/distributed)."""

import numpy as np
from mpi4py import MPI

import optdsl
from optdsl.distributed import AllReduce
from optdsl.optim import SGD

comm = MPI.COMM_WORLD
n = 4 if comm.Get_rank() == 0 else 3
w = optdsl.Param(np.zeros(n))
w.grad = np.ones(n)
opt = SGD([w], lr=0.1)
opt.register_grad_hook(AllReduce(comm))
opt.step()
