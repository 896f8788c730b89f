"""The demo's MLP (examples/mlp.py) trained data-parallel over MPI (docs/distributed.md).

    mpiexec -n 2 python -m mpi4py examples/distributed_train.py [--epochs 20]

Every rank builds the same model and optimizer and walks the same shuffled order of the
training set; each batch of 64 is split evenly between the ranks, each computes the
gradient of its share, and ``optdsl.distributed.AllReduce`` averages the gradients, so the
step is the one a single process would take on the whole batch. Rank 0 prints the test
accuracy per epoch; at the end every rank checks that its parameters equal rank 0's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

if __package__ in (None, ""):  # run as a script from a checkout: optdsl is beside it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optdsl.demo import load_dataset, mlp_module  # noqa: E402
from optdsl.distributed import AllReduce  # noqa: E402
from optdsl.optim import Adam  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="the global batch size")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if args.batch % size:
        raise SystemExit(f"--batch {args.batch} does not split evenly over {size} ranks")
    data = load_dataset("auto", seed=0)
    model = mlp_module().MLP((data.features, 64, data.classes), seed=0)
    opt = Adam(model.params(), lr=1e-2)
    opt.register_grad_hook(AllReduce(comm))  # the mean of the ranks' gradients
    rng = np.random.default_rng(0)  # the same order on every rank
    share = args.batch // size
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(data.y_train))
        for i in range(0, len(order) - args.batch + 1, args.batch):
            mine = order[i + rank * share:i + (rank + 1) * share]
            opt.zero_grad()
            model.loss_and_grads(data.x_train[mine], data.y_train[mine])
            opt.step()
        if rank == 0:
            loss, accuracy = model.evaluate(data.x_test, data.y_test)
            print(f"epoch {epoch:2d}  test loss {loss:.4f}  test accuracy {accuracy:.3f}",
                  flush=True)
    # Every rank stepped alike: its parameters are rank 0's, bit for bit.
    for p in model.params():
        theirs = p.data.copy()
        comm.Bcast(theirs, root=0)
        if not np.array_equal(theirs, p.data):
            raise SystemExit(f"rank {rank}: {p.name} differs from rank 0's")
    if rank == 0:
        print(f"{size} ranks, {data.name}: the parameters are the same on every rank")
    return 0


if __name__ == "__main__":
    sys.exit(main())
