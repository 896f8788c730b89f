"""Run under ``mpiexec -n 2 python -m mpi4py``, with ``fp16`` or ``bf16`` (and ``gathered``
to force the Allgather path on fp16): AllReduce with compression on the wire.

- One reduction, bit for bit: every rank knows every rank's gradient (the same data on
  each), so it predicts the reduced gradient of the path taken (MPI adding in the wire
  dtype, or the gathered parts added in float32 in rank order) and checks it exactly;
  float16 and bfloat16 gradients go uncast (bfloat16 always gathered: MPI cannot add it).
- Data-parallel Adam, 20 steps of lr 0.01 in float32, stays close to one process on the
  whole batch, uncompressed: within rtol 2u and atol 20 * 0.01 * u, u the wire's unit
  roundoff (2**-11 fp16, 2**-8 bf16); the atol for params that pass near zero.
- Every rank ends with the same bits: the params, gathered as bytes, are compared.

Prints ``rank R: ok, path P, worst relative error E, worst absolute error A, params HASH``
per rank."""

import hashlib
import sys

import ml_dtypes
import numpy as np
from mpi4py import MPI

import optdsl
from optdsl.distributed import AllReduce
from optdsl.optim import Adam

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
compression = sys.argv[1]
gathered = "gathered" in sys.argv[2:]
unit_roundoff = {"fp16": 2.0**-11, "bf16": 2.0**-8}[compression]

rng = np.random.default_rng(0)  # the same data on every rank
x, y = rng.standard_normal((64, 5)), rng.standard_normal((64, 3))
x, y = x.astype(np.float32), (10 * y).astype(np.float32)  # gradients of several octaves
start = [rng.standard_normal((5, 3)).astype(np.float32), np.zeros(3, np.float32)]
shards = [slice(r * len(x) // size, (r + 1) * len(x) // size) for r in range(size)]


def grads(w, b, rows):
    """The gradient of the mean squared error over the rows (one rank's shard)."""
    xs, ys = x[rows], y[rows]
    r = xs @ w + b - ys
    return [2 * xs.T @ r / len(xs), 2 * r.sum(axis=0) / len(xs)]


def hook_for(comm):
    hook = AllReduce(comm, compression=compression)
    if gathered:
        hook._sum_types["float16"] = None  # as on an MPI without MPIX_C_FLOAT16
    return hook


# --- one reduction, bit for bit ----------------------------------------------------------------
halves = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def gradients(rows):
    """float32 gradients, then the first as float16 and the second as bfloat16."""
    g = grads(*start, rows)
    return g + [g[0].astype(halves[0]), g[1].astype(halves[1])]


hook = hook_for(comm)
mine = gradients(shards[rank])
hook(None, [mine])
wire = hook._wire_dtype
path = "allreduce" if hook._sum_types.get(wire.name) is not None else "allgather"
for k, g in enumerate(mine):
    # float32: divided, then cast to the wire dtype; float16, bfloat16: divided, uncast
    on_wire = wire if g.dtype == np.float32 else g.dtype
    parts = [(gradients(s)[k] / np.float32(size)).astype(on_wire) for s in shards]
    # MPI adds in the wire dtype; the gathered parts are added in the gradient's
    summed_in = on_wire if path == "allreduce" else g.dtype
    expected = parts[0].astype(summed_in)
    for part in parts[1:]:
        expected = (expected + part.astype(summed_in)).astype(summed_in)
    np.testing.assert_array_equal(g.view(np.uint8), expected.astype(g.dtype).view(np.uint8))
assert [g.dtype for g in mine] == [np.float32, np.float32, *halves]

# --- Adam, 20 steps: compressed data-parallel against the whole batch, uncompressed -----------
def train(params, opt, rows):
    for _ in range(20):
        for p, g in zip(params, grads(params[0].data, params[1].data, rows), strict=True):
            p.grad[...] = g
        opt.step()


params = [optdsl.Param(v.copy()) for v in start]
ref = [optdsl.Param(v.copy()) for v in start]
for p in params + ref:
    p.grad = np.zeros_like(p.data)
opt = Adam(params, lr=0.01)
opt.register_grad_hook(hook_for(comm))
train(params, opt, shards[rank])
train(ref, Adam(ref, lr=0.01), slice(None))
errors = [np.abs(a.data - b.data) for a, b in zip(params, ref, strict=True)]
worst = max(float(np.max(e / np.abs(b.data))) for e, b in zip(errors, ref, strict=True))
worst_abs = max(float(np.max(e)) for e in errors)
for a, b in zip(params, ref, strict=True):
    np.testing.assert_allclose(a.data, b.data, rtol=2 * unit_roundoff,
                               atol=20 * 0.01 * unit_roundoff)

# --- the same bits on every rank ---------------------------------------------------------------
flat = np.concatenate([p.data.reshape(-1) for p in params]).view(np.uint8)
every = np.empty((size, flat.size), np.uint8)
comm.Allgather([flat, MPI.BYTE], [every, MPI.BYTE])
assert (every == every[rank]).all(), "the ranks' params differ"
digest = hashlib.sha256(flat.tobytes()).hexdigest()[:16]
print(f"rank {rank}: ok, path {path}, worst relative error {worst:.2e}, worst absolute "
      f"error {worst_abs:.2e}, params {digest}", flush=True)
