"""Run under ``mpiexec -n N python -m mpi4py``: ShardedOptimizer's checkpoints
(tests/distributed/test_checkpoints.py).

``save DIR``: N ranks train a sharded Adam with a StepLR schedule for 10 steps, save the
checkpoint both consolidated (DIR/consolidated.safetensors) and sharded
(DIR/sharded.safetensors with one shard file per rank), train 10 steps more and write the
final params to DIR/final.npz.

``resume DIR FORM``: N ranks (any number) build the same model with fresh params, load
DIR/FORM.safetensors into a ShardedOptimizer, train the last 10 steps, and compare with
DIR/final.npz: bit for bit when N is the saving number of ranks, else to rtol 1e-12 (the
gradients are averaged over other halves of the batch).

``broken DIR``: N ranks load DIR/sharded.safetensors whose last shard file is gone: the
rank that needs it fails, every other rank raises a DistributedError naming it, and no
rank changed its params or state.

``plain DIR FORM``: one process, no sharding: the plain Adam resumes from the checkpoint
(optdsl.load for the consolidated file, consolidated_state_dict for the sharded one).
"""

import sys

import numpy as np
from mpi4py import MPI

import optdsl
from optdsl.distributed import ShardedOptimizer, consolidated_state_dict
from optdsl.optim import Adam
from optdsl.schedules import StepLR

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
mode, where = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x, y = rng.standard_normal((48, 7)), rng.standard_normal((48, 3))
start = {"w": rng.standard_normal((7, 3)), "b": rng.standard_normal(3),
         "s": rng.standard_normal((2, 2, 2))}


def step_grads(params, xs, ys, n):
    w, b, s = (p.data for p in params)
    r = xs @ w + b - ys
    return [2 * xs.T @ r / n, 2 * r.sum(axis=0) / n, s * float(np.mean(r ** 2))]


def tell(line):
    """Print every rank's ``line`` from rank 0, in rank order, one per line (printed by
    each rank, lines interleave). Buffer-based collectives: no pickle."""
    data = np.frombuffer(line.encode(), np.uint8)
    counts = np.empty(size, np.int64)
    comm.Allgather(np.array([data.size], np.int64), counts)
    whole = np.empty(int(counts.sum()), np.uint8)
    comm.Gatherv(data, [whole, counts, MPI.UINT8_T] if rank == 0 else None, root=0)
    if rank == 0:
        at = 0
        for r, c in enumerate(counts):
            print(f"rank {r}: {whole[at:at + c].tobytes().decode()}", flush=True)
            at += c


def build(fresh):
    params = [optdsl.Param(np.zeros_like(v) if fresh else v.copy(), name=k)
              for k, v in start.items()]
    opt = Adam(params, lr=0.05, weight_decay=0.01)
    return params, opt


def train(params, opt, sched, steps, world, me):
    rows = slice(me * len(x) // world, (me + 1) * len(x) // world)
    for _ in range(steps):
        for p, g in zip(params, step_grads(params, x[rows], y[rows], len(x) // world),
                        strict=True):
            p.grad = g
        opt.step()
        sched.step()


if mode == "save":
    params, opt = build(fresh=False)
    sharded = ShardedOptimizer(opt, comm)
    sched = StepLR(sharded, step_size=4, gamma=0.5)
    train(params, sharded, sched, 10, size, rank)
    sharded.save(f"{where}/consolidated.safetensors", scheduler=sched, params=params,
                 extra={"epoch": 10})
    sharded.save(f"{where}/sharded.safetensors", consolidated=False, scheduler=sched,
                 params=params, extra={"epoch": 10})
    train(params, sharded, sched, 10, size, rank)
    if rank == 0:
        np.savez(f"{where}/final.npz", **{p.name: p.data for p in params})
    tell(f"saved, {sharded.state_bytes()} state bytes")
elif mode == "resume":
    form = sys.argv[3]
    params, opt = build(fresh=True)
    sharded = ShardedOptimizer(opt, comm)
    sched = StepLR(sharded, step_size=4, gamma=0.5)
    report = sharded.load(f"{where}/{form}.safetensors", scheduler=sched, params=params)
    assert report.extra == {"epoch": 10}, report
    train(params, sharded, sched, 10, size, rank)
    with np.load(f"{where}/final.npz") as final:
        saved_world = int(open(f"{where}/world").read())
        for p in params:
            if size == saved_world:
                np.testing.assert_array_equal(p.data, final[p.name])
            else:
                np.testing.assert_allclose(p.data, final[p.name], rtol=1e-12, atol=1e-15)
    tell(f"resumed {form} on {size}, exact={size == saved_world}")
elif mode == "broken":
    params, opt = build(fresh=True)
    sharded = ShardedOptimizer(opt, comm)
    try:
        sharded.load(f"{where}/sharded.safetensors", params=params)
    except Exception as exc:  # noqa: BLE001 - reported for the test to read
        message = f"{type(exc).__name__}: {exc}"
    else:
        raise AssertionError("the load should have failed")
    assert not any(sharded.inner.state.values()), "state changed"
    assert all(not p.data.any() for p in params), "params changed"
    tell(message)
elif mode == "plain":
    form = sys.argv[3]
    params, opt = build(fresh=True)
    sched = StepLR(opt, step_size=4, gamma=0.5)
    path = f"{where}/{form}.safetensors"
    if form == "consolidated":
        optdsl.load(path, optimizer=opt, scheduler=sched, params=params)
    else:
        opt.load_state_dict(consolidated_state_dict(path))
        optdsl.load(path, scheduler=sched, params=params)
    train(params, opt, sched, 10, 1, 0)
    with np.load(f"{where}/final.npz") as final:
        for p in params:
            np.testing.assert_allclose(p.data, final[p.name], rtol=1e-12, atol=1e-15)
    print(f"plain: resumed {form}", flush=True)
