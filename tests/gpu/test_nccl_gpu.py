"""NcclAllReduce on a real GPU and the real NCCL (``pytest -m gpu``; benchmarks/gpu_check.sh
runs these on the device machine). Everywhere else they skip: tests/distributed/test_nccl.py
checks the same paths on the CPU against a fake NCCL.

NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), so a machine with one GPU
verifies one rank only (MPI.COMM_SELF), where the sum over the ranks is each gradient
itself. That still runs the real bootstrap (unique id, ``NcclCommunicator``) and real
``allReduce`` calls at the pointers of flattened slices and packed buckets, on the current
stream; a wrapper sends each call out of place into a guarded buffer, so that a wrong count
or datatype (which in place, on one rank, would change nothing) shows. With two GPUs or
more, nccl_two_ranks.py runs under ``mpiexec -n 2``, one GPU per rank, against the mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl.optim import SGD

cupy = pytest.importorskip("cupy", reason="the GPU tests need CuPy (extra 'cuda')")
if not cupy.is_available():
    pytest.skip("no CUDA GPU here (CuPy is installed, cupy.is_available() is False)",
                allow_module_level=True)
MPI = pytest.importorskip("mpi4py.MPI", reason="NcclAllReduce starts over mpi4py "
                          "(pip install 'optdsl[mpi]')")
from cupy.cuda import nccl  # noqa: E402

if not nccl.available:
    pytest.skip("CuPy cannot load libnccl here (pip install nvidia-nccl-cu13)",
                allow_module_level=True)

from optdsl.distributed import NcclAllReduce  # noqa: E402

pytestmark = pytest.mark.gpu

SHAPES = [((64, 33), np.float32), ((1000,), np.float32), ((5,), np.float64),
          ((7, 3), np.float16), ((17,), np.float32)]
ITEMSIZE = {nccl.NCCL_FLOAT16: 2, nccl.NCCL_FLOAT32: 4, nccl.NCCL_FLOAT64: 8}
GUARD = 256  # bytes either side of each out-of-place result


class OutOfPlace:
    """The real communicator, each in-place ``allReduce`` sent instead into a fresh buffer
    with a guard band either side: the result must be exactly the bucket's bytes (on one
    rank, the sum is the bucket), and the guard bands untouched."""

    def __init__(self, comm):
        self.comm, self.calls = comm, []

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802
        assert sendbuf == recvbuf and op == nccl.NCCL_SUM
        nbytes = count * ITEMSIZE[datatype]
        out = cupy.full(nbytes + 2 * GUARD, 0xAB, cupy.uint8)
        sent = cupy.empty(nbytes, cupy.uint8)
        cupy.cuda.get_current_stream().synchronize()
        cupy.cuda.runtime.memcpy(sent.data.ptr, sendbuf, nbytes,
                                 cupy.cuda.runtime.memcpyDefault)
        self.comm.allReduce(sendbuf, out.data.ptr + GUARD, count, datatype, op, stream)
        cupy.cuda.get_current_stream().synchronize()
        assert bool((out[GUARD:GUARD + nbytes] == sent).all())
        assert bool((out[:GUARD] == 0xAB).all()) and bool((out[GUARD + nbytes:] == 0xAB).all())
        self.calls.append((count, datatype, stream))


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [optdsl.Param(cupy.zeros(shape, dtype),
                         grad=cupy.asarray(rng.standard_normal(shape).astype(dtype)))
            for shape, dtype in SHAPES]


@pytest.mark.parametrize("flat", [False, True], ids=["packed", "flattened"])
@pytest.mark.parametrize("bucket_mb", [25.0, 1e-3], ids=["25MiB", "1KiB"])
def test_one_rank_reduces_every_bucket_exactly_in_place(flat, bucket_mb):
    params = make_params()
    if flat:
        optdsl.flatten(params)
    grads = [p.grad for p in params]
    before = [g.get() for g in grads]
    pointers = [g.data.ptr for g in grads]
    hook = NcclAllReduce(MPI.COMM_SELF, bucket_mb=bucket_mb)
    assert hook.device == cupy.cuda.runtime.getDevice()
    checked = hook.nccl_comm = OutOfPlace(hook.nccl_comm)
    hook(None, [grads[:2], grads[2:]])
    cupy.cuda.get_current_stream().synchronize()
    for g, b in zip(grads, before, strict=True):
        np.testing.assert_array_equal(g.get(), b)  # one rank: the sum, and the mean, is itself
    assert [g.data.ptr for g in grads] == pointers
    assert hook.buckets_last_step == len(checked.calls)
    # every element once, each with its dtype's NCCL datatype (a float64 bucket sent as
    # NCCL_FLOAT32 would cover half its bytes)
    assert sum(count for count, *_ in checked.calls) == sum(g.size for g in grads)
    assert sum(count * ITEMSIZE[datatype] for count, datatype, _ in checked.calls) == \
        sum(g.nbytes for g in grads)
    if bucket_mb == 25.0:
        assert hook.buckets_last_step == 4  # float32 run; float64; float16; float32
    else:
        assert hook.buckets_last_step > 4
    assert (hook._scratch == {}) == flat


def test_in_an_optimizer_step_on_a_stream_of_its_own():
    """SGD with the hook on a non-default stream equals SGD without it; NCCL gets that
    stream."""
    params, plain = make_params(), make_params()
    optdsl.flatten(params)
    opt, ref = SGD(params, lr=0.1), SGD(plain, lr=0.1)
    hook = NcclAllReduce(MPI.COMM_SELF)
    checked = hook.nccl_comm = OutOfPlace(hook.nccl_comm)
    opt.register_grad_hook(hook)
    stream = cupy.cuda.Stream()
    with stream:
        opt.step()
        ref.step()
    stream.synchronize()
    for p, q in zip(params, plain, strict=True):
        np.testing.assert_array_equal(p.data.get(), q.data.get())
    assert {s for *_, s in checked.calls} == {stream.ptr}


def test_two_ranks_one_gpu_each_give_the_mean():
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: NCCL refuses two ranks on one GPU, so only one rank is "
                    "verified here")
    import re

    from tests.distributed.launch import run

    done = run(Path(__file__).resolve().parent / "nccl_two_ranks.py", n=2)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"rank (\d+): ok, buckets (\[[\d, ]+\])", done.stdout)
    assert sorted(rank for rank, _ in found) == ["0", "1"]
    assert len({buckets for _, buckets in found}) == 1  # the same collectives on both
