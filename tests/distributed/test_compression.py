"""AllReduce(compression="fp16" | "bf16"): the gradients cross the wire as 16-bit floats.
Over real MPI processes (``mpiexec -n 2``, tests/distributed/allreduce_compression.py) and
torch.distributed (gloo), and in this process on MPI.COMM_SELF or a pretend pair of ranks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI", reason="optdsl.distributed needs mpi4py "
                          "(pip install 'optdsl[mpi]')")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bf16 compression needs ml_dtypes")

from optdsl import Param  # noqa: E402
from optdsl.distributed import AllReduce, _mpi_half_type  # noqa: E402
from optdsl.optim import SGD  # noqa: E402
from tests.distributed.launch import HERE, ROOT, TIMEOUT, run  # noqa: E402

FP16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
# the odd float32s: none is a float16 or a bfloat16; 1e5 overflows float16
ODD = np.array([1 / 3, np.pi * 1e-3, 1 + 2**-12, -7.3e4, 1e5, 3e-6], np.float32)


@pytest.mark.parametrize("args", [("fp16",), ("fp16", "gathered"), ("bf16",)],
                         ids=["fp16", "fp16-gathered", "bf16"])
def test_compressed_adam_over_two_ranks(args):
    """2 ranks: one reduction predicted bit for bit on the path taken, 20 Adam steps close
    to the whole batch uncompressed (tolerance from the wire's precision), and the same
    param bits on both ranks."""
    done = run("allreduce_compression.py", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"rank (\d+): ok, path (\w+), worst relative error \S+, worst "
                       r"absolute error \S+, params ([0-9a-f]{16})", done.stdout)
    assert sorted(rank for rank, _, _ in found) == ["0", "1"]  # lines may interleave
    assert len({digest for _, _, digest in found}) == 1  # the same params on both ranks
    native = args == ("fp16",) and _mpi_half_type(FP16) is not None
    assert {path for _, path, _ in found} == {"allreduce" if native else "allgather"}


def test_torch_allreduce_compresses_over_gloo():
    """TorchAllReduce(compression=...) on 2 processes of torch.distributed.run: gloo adds
    float16 and bfloat16 itself; predicted bit for bit, the same params on both."""
    pytest.importorskip("torch", reason="the torch.distributed path needs torch")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2",
                           str(HERE / "torch_allreduce_compression.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"rank (\d+): ok, (fp16|bf16), params ([0-9a-f]{16})", done.stdout)
    assert sorted(found) == sorted({(r, c, d) for r, c, d in found})  # no repeats
    for compression in ("fp16", "bf16"):
        mine = [(r, d) for r, c, d in found if c == compression]
        assert sorted(r for r, _ in mine) == ["0", "1"] and len({d for _, d in mine}) == 1


# --- in one process ----------------------------------------------------------------------------

def test_the_compression_argument_is_checked(monkeypatch):
    for bad in ("int8", "FP16", "float16", np.float16, True):
        with pytest.raises(ValueError, match=r"compression must be None, 'fp16' or 'bf16'"):
            AllReduce(MPI.COMM_SELF, compression=bad)
    hook = AllReduce(MPI.COMM_SELF, bucket_mb=4, compression="bf16")
    assert repr(hook) == "AllReduce(size=1, average=True, bucket_mb=4, compression='bf16')"
    assert repr(AllReduce(MPI.COMM_SELF)).endswith("compression=None)")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'optdsl\[bf16\]'"):
        AllReduce(MPI.COMM_SELF, compression="bf16")
    assert AllReduce(MPI.COMM_SELF, compression="fp16").compression == "fp16"


@pytest.mark.parametrize("compression, wire", [("fp16", FP16), ("bf16", BF16)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_rank_still_rounds_to_the_wire(compression, wire, dtype):
    """On one rank the sum is the gradient itself, rounded through the wire dtype: a
    float32 or float64 gradient ends as its round trip, so an SGD step moves by it."""
    w, c = Param(np.zeros(6, dtype)), Param(np.zeros(6, dtype))  # apart: one packed bucket
    w.grad, c.grad = ODD.astype(dtype), -ODD.astype(dtype)
    opt = SGD([w, c], lr=1.0)
    hook = AllReduce(MPI.COMM_SELF, compression=compression)
    opt.register_grad_hook(hook)
    with np.errstate(over="ignore"):
        round_trip = ODD.astype(dtype).astype(wire).astype(dtype)
    assert not np.array_equal(round_trip, ODD.astype(dtype))  # the wire does round
    opt.step()
    np.testing.assert_array_equal(w.data, -round_trip)  # 1e5 -> -inf through fp16
    np.testing.assert_array_equal(c.data, round_trip)
    assert hook.buckets_last_step == 1
    assert w.data.dtype == dtype


def test_float16_and_bfloat16_gradients_are_not_cast():
    """A float16 value that bfloat16 cannot hold, and a bfloat16 one that overflows float16,
    cross both compressions untouched (and bfloat16 without compression too)."""
    h, b = np.array([1 + 2**-10, 6e-8], FP16), np.array([1e6, -3e38], BF16)
    for compression in ("fp16", "bf16", None):
        gh, gb = h.copy(), b.copy()
        hook = AllReduce(MPI.COMM_SELF, compression=compression)
        hook(None, [[gh, gb]])
        assert (gh.dtype, gb.dtype) == (FP16, BF16)
        np.testing.assert_array_equal(gh.view(np.uint16), h.view(np.uint16))
        np.testing.assert_array_equal(gb.view(np.uint16), b.view(np.uint16))
        assert hook.buckets_last_step == 2
        assert hook._sum_types["bfloat16"] is None  # MPI cannot add bfloat16: gathered


class _MirroredPair:
    """Two ranks in one process: the other rank holds the same gradients as this one (so a
    sum doubles, in the buffer's dtype, and an Allgather receives this rank's bytes
    twice)."""

    def Get_size(self) -> int:  # noqa: N802 - mpi4py's names
        return 2

    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Allreduce(self, sendbuf, recvbuf, op):  # noqa: N802
        assert sendbuf is MPI.IN_PLACE and op == MPI.SUM
        if isinstance(recvbuf, list):  # a 16-bit float as uint16, with its MPI datatype
            buffer, mpi_type = recvbuf
            assert mpi_type == MPI.FLOAT16_T
            buffer = buffer.view(FP16)
        else:
            buffer = recvbuf
        with np.errstate(over="ignore"):
            np.add(buffer, buffer, out=buffer)

    def Allgather(self, sendbuf, recvbuf):  # noqa: N802
        send = (sendbuf[0] if isinstance(sendbuf, list) else sendbuf).view(np.uint8)
        recv = (recvbuf[0] if isinstance(recvbuf, list) else recvbuf).view(np.uint8)
        recv[:send.size], recv[send.size:] = send, send


@pytest.mark.parametrize("path", ["allreduce", "allgather"])
def test_average_divides_before_the_cast(path):
    """Two ranks of 40000 each: fp16 holds 40000, not their sum 80000. Divided first, the
    mean arrives whole; divided after MPI's float16 sum, it would be inf. (The gathered
    parts are added in float32, where 80000 fits: that path gets 40000 either way.)"""
    if path == "allreduce" and _mpi_half_type(FP16) is None:
        pytest.skip("this MPI cannot add float16")
    g = np.full(3, 40000.0, np.float32)
    hook = AllReduce(_MirroredPair(), compression="fp16")
    if path == "allgather":
        hook._sum_types["float16"] = None
    hook(None, [[g]])
    np.testing.assert_array_equal(g, np.full(3, 40000.0, np.float32))
    plain = np.full(3, 40000.0, np.float32)
    AllReduce(_MirroredPair())(None, [[plain]])  # uncompressed: summed, then divided
    np.testing.assert_array_equal(plain, g)
    summed = np.full(3, 40000.0, np.float32)
    AllReduce(_MirroredPair(), average=False, compression="fp16")(None, [[summed]])
    if path == "allreduce":  # MPI adds in float16: 80000 overflows
        assert np.isinf(summed).all()


def test_scratch_buffers_are_kept_between_steps():
    w = Param(np.zeros(5, np.float32))
    w.grad = np.ones(5, np.float32)
    opt = SGD([w], lr=1.0)
    hook = AllReduce(MPI.COMM_SELF, compression="bf16")
    opt.register_grad_hook(hook)
    opt.step()
    kept = dict(hook._wire_scratch)
    assert set(kept) == {"wire bfloat16", "gathered"}
    opt.step()
    assert all(hook._wire_scratch[key] is kept[key] for key in kept)
    assert hook._scratch == {}  # one gradient: reduced where it lies, nothing packed
    np.testing.assert_array_equal(w.data, np.full(5, -2.0, np.float32))
