"""NcclAllReduce on the CPU: the ranks are threads of this process, each on its own fake GPU
(tests/fakecupy.py), NCCL is tests/fakenccl.py (whose allReduce really sums the ranks'
arrays through their pointers), and MPI, which only starts NCCL and checks the layout, is
a thread communicator here with mpi4py's buffer-based methods only (no pickle), or
MPI.COMM_SELF for one rank. tests/gpu/test_nccl_gpu.py runs the real thing on a GPU."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI", reason="optdsl.distributed needs mpi4py "
                          "(pip install 'optdsl[mpi]')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy, fakenccl

import fakecupy  # noqa: E402
import fakenccl  # noqa: E402

import optdsl  # noqa: E402
from optdsl import Param, RowSparse  # noqa: E402
from optdsl.distributed import DistributedError, NcclAllReduce, _common_buffer  # noqa: E402
from optdsl.optim import SGD  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture: cupy is the fake for one test
F8_BUCKET = 16 / (1 << 20)  # bucket_mb for two float64 per bucket


@pytest.fixture
def nccl(fake_cupy, monkeypatch):
    monkeypatch.setattr(fakecupy, "DEVICE_COUNT", 4)  # one fake GPU per thread-rank
    with fakenccl.installed(fake_cupy) as fake:
        yield fake


class ThreadComm:
    """What NcclAllReduce asks of an mpi4py communicator, among threads: ``world(n)``
    gives one per rank."""

    def __init__(self, rank: int, shared: fakenccl._World):
        self.rank, self.shared = rank, shared

    @classmethod
    def world(cls, n: int) -> list[ThreadComm]:
        shared = fakenccl._World(n)
        return [cls(r, shared) for r in range(n)]

    def Get_size(self) -> int:  # noqa: N802 - mpi4py's names
        return self.shared.ndev

    def Get_rank(self) -> int:  # noqa: N802
        return self.rank

    def _every(self, buf) -> list[np.ndarray]:
        return self.shared.exchange(self.rank, np.array(buf, copy=True).reshape(-1))

    def Bcast(self, buf, root=0) -> None:  # noqa: N802
        buf[...] = self._every(buf)[root].reshape(np.shape(buf))

    def Allgather(self, sendbuf, recvbuf) -> None:  # noqa: N802
        recvbuf[...] = np.concatenate(self._every(sendbuf)).reshape(recvbuf.shape)

    def Allgatherv(self, sendbuf, recv) -> None:  # noqa: N802
        recv[0][...] = np.concatenate(self._every(sendbuf))

    def Allreduce(self, sendbuf, recvbuf, op=None) -> None:  # noqa: N802
        recvbuf[...] = np.sum(self._every(sendbuf), axis=0).reshape(recvbuf.shape)


def on_ranks(n: int, body) -> list:
    """``body(rank, comm)`` on n threads, each with its own fake GPU current; the results
    in rank order (an exception where one raised)."""
    comms = ThreadComm.world(n)
    results: list = [None] * n

    def run(rank: int) -> None:
        try:
            with fakecupy.Device(rank):
                results[rank] = body(rank, comms[rank])
        except Exception as error:  # noqa: BLE001 - handed to the test
            results[rank] = error

    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a rank hangs"
    return results


# Gradients of small integers (sums and means by 2 and 4 exact in every dtype), in runs of
# float64, float32 and float64 again: three runs, so three buckets at the default size.
SHAPES = [((3, 2), np.float64), ((4,), np.float64), ((5,), np.float32), ((2, 2), np.float64)]


def rank_grads(rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(rank)
    return [rng.integers(-8, 8, shape).astype(dtype) for shape, dtype in SHAPES]


def reduce_on_ranks(n, *, flat=False, average=True, bucket_mb=25.0):
    def body(rank, comm):
        cupy = sys.modules["cupy"]
        params = [Param(cupy.zeros(shape, dtype), grad=cupy.asarray(g))
                  for (shape, dtype), g in zip(SHAPES, rank_grads(rank), strict=True)]
        if flat:
            optdsl.flatten(params)
        hook = NcclAllReduce(comm, average=average, bucket_mb=bucket_mb)
        grads = [p.grad for p in params]
        pointers = [g.data.ptr for g in grads]
        hook(None, [grads[:3], grads[3:]])  # two param groups
        assert [g.data.ptr for g in grads] == pointers  # in place
        assert {g.device.id for g in grads} == {rank}
        return hook, [g.get() for g in grads]

    return on_ranks(n, body)


def expected(n, average=True):
    every = [rank_grads(r) for r in range(n)]
    sums = [sum(gs[k] for gs in every) for k in range(len(SHAPES))]
    return [s / n if average else s for s in sums]


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("flat", [False, True], ids=["packed", "flattened"])
@pytest.mark.parametrize("bucket_mb", [25.0, F8_BUCKET], ids=["25MiB", "small-buckets"])
def test_every_rank_gets_the_mean_of_the_gradients(nccl, n, flat, bucket_mb):
    results = reduce_on_ranks(n, flat=flat, bucket_mb=bucket_mb)
    want = expected(n)
    for result in results:
        assert not isinstance(result, BaseException), result
        hook, got = result
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    hooks = [hook for hook, _ in results]
    calls = [hook.nccl_comm.calls for hook in hooks]
    # the same collectives on every rank (sizes and types), each on the rank's own memory
    assert all([c[:3] for c in mine] == [c[:3] for c in calls[0]] for mine in calls)
    assert len({hook.buckets_last_step for hook in hooks}) == 1
    assert hooks[0].buckets_last_step == len(calls[0])
    # group 0: a float64 run of 6 + 4 elements, 5 float32; group 1: 4 float64. In buckets
    # of 16 bytes: 2 float64 or 4 float32, but a gradient is packed whole.
    assert [count for count, *_ in calls[0]] == (
        [10, 5, 4] if bucket_mb == 25.0 else
        [2, 2, 2, 2, 2, 4, 1, 2, 2] if flat else [6, 4, 4, 1, 2, 2])
    if flat:
        assert all(hook._scratch == {} for hook in hooks)  # nothing packed
    else:
        assert all(set(hook._scratch) == {np.dtype(np.float64)} for hook in hooks)
        assert all(h._scratch[np.dtype(np.float64)].device.id == r
                   for r, h in enumerate(hooks))  # the bucket lives on the rank's GPU


def test_the_sum_without_average(nccl):
    for hook, got in reduce_on_ranks(2, average=False):
        for g, w in zip(got, expected(2, average=False), strict=True):
            np.testing.assert_array_equal(g, w)
        assert "size=2" in repr(hook) and "average=False" in repr(hook)


def test_flattened_gradients_are_reduced_where_they_lie(nccl):
    """One float64 buffer for w, c and d: its slices go to NCCL, not a packed copy."""
    (hook, _), _ = reduce_on_ranks(2, flat=True, bucket_mb=F8_BUCKET)
    pointers = [ptr for *_, ptr in hook.nccl_comm.calls]
    assert len(set(pointers)) == len(pointers)  # every slice its own address
    assert hook._scratch == {}


def test_a_layout_mismatch_is_an_error_on_every_rank(nccl):
    def body(rank, comm):
        cupy = sys.modules["cupy"]
        hook = NcclAllReduce(comm)
        hook(None, [[cupy.ones(4 if rank == 0 else 3)]])

    results = on_ranks(2, body)
    for error in results:
        assert isinstance(error, DistributedError), error
        assert str(error).startswith("NcclAllReduce: param 0 of group 0 has a gradient of "
                                     "shape (3,) and dtype float64 on rank 1 but shape (4,)")


def test_one_rank_over_comm_self_in_an_optimizer_step(nccl, fake_cupy):
    w = Param(fake_cupy.ones(3), grad=fake_cupy.asarray([2.0, 4.0, 6.0]))
    opt = SGD([w], lr=0.5)
    hook = NcclAllReduce(MPI.COMM_SELF)
    opt.register_grad_hook(hook)
    opt.step()
    np.testing.assert_array_equal(w.data.get(), [0.0, -1.0, -2.0])
    assert hook.buckets_last_step == 1 and hook.device == 0
    assert repr(hook) == "NcclAllReduce(size=1, device=0, average=True, bucket_mb=25)"


def test_gradients_it_cannot_reduce_are_refused(nccl, fake_cupy):
    hook = NcclAllReduce(MPI.COMM_SELF)
    with pytest.raises(DistributedError, match="ndarray gradient; it reduces CuPy arrays on "
                       "the GPU; NumPy gradients are reduced over MPI by optdsl.distributed"
                       ".AllReduce"):
        hook(None, [[np.ones(3)]])
    with pytest.raises(DistributedError, match="RowSparse gradient.*densify"):
        hook(None, [[RowSparse([1], np.ones((1, 2)))]])
    with fake_cupy.cuda.Device(1):
        elsewhere = fake_cupy.ones(3)
    with pytest.raises(DistributedError, match="param 0 of group 1 has a gradient on GPU 1, "
                       "but this rank's NCCL communicator is on GPU 0"):
        hook(None, [[], [elsewhere]])
    with pytest.raises(DistributedError, match="int64 gradient"):
        hook(None, [[fake_cupy.asarray(np.arange(3))]])
    assert hook.nccl_comm.calls == []


def test_construction_without_cupy_or_nccl_is_a_clear_error(fake_cupy, monkeypatch):
    with fakenccl.installed(fake_cupy, available=False):
        with pytest.raises(DistributedError, match="CuPy cannot load the NCCL library"):
            NcclAllReduce(MPI.COMM_SELF)
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(DistributedError, match="CuPy is not installed.*optdsl\\[cuda\\]"):
        NcclAllReduce(MPI.COMM_SELF)
    with pytest.raises(TypeError, match="with Bcast"):
        NcclAllReduce(object())


def test_a_rank_without_nccl_stops_every_rank(nccl, monkeypatch):
    from optdsl import _nccl

    load = _nccl._load_nccl

    def rank_1_lacks_nccl():
        cupy, module, reason = load()
        return (cupy, module, "no NCCL on rank 1") if fakecupy._current.device == 1 \
            else (cupy, module, reason)

    monkeypatch.setattr(_nccl, "_load_nccl", rank_1_lacks_nccl)
    first, second = on_ranks(2, lambda rank, comm: NcclAllReduce(comm))
    assert isinstance(first, DistributedError) and "rank(s) 1" in str(first)
    assert isinstance(second, DistributedError) and "no NCCL on rank 1" in str(second)


def test_rank_0_without_a_unique_id_stops_every_rank(nccl, monkeypatch):
    def fails():
        raise fakenccl.NcclError("unhandled system error")

    monkeypatch.setattr(nccl, "get_unique_id", fails)
    first, second = on_ranks(2, lambda rank, comm: NcclAllReduce(comm))
    assert isinstance(first, DistributedError) and "unhandled system error" in str(first)
    assert isinstance(second, DistributedError) and "rank 0 could not get" in str(second)


def test_an_older_cupys_tuple_unique_id_travels_too(nccl, monkeypatch):
    """CuPy < 14's get_unique_id() gave the id's 128 C chars as a tuple of ints."""
    monkeypatch.setattr(nccl, "get_unique_id",
                        lambda: tuple(np.frombuffer(fakenccl.get_unique_id(), np.int8).tolist()))
    seen = []
    real = fakenccl.NcclCommunicator.__init__

    def recording(self, ndev, comm_id, rank):
        seen.append(comm_id)
        real(self, ndev, comm_id, rank)

    monkeypatch.setattr(fakenccl.NcclCommunicator, "__init__", recording)
    hooks = on_ranks(2, lambda rank, comm: NcclAllReduce(comm))
    assert all(isinstance(h, NcclAllReduce) for h in hooks), hooks
    assert isinstance(seen[0], tuple) and seen[0] == seen[1]
    assert min(seen[0]) < 0  # signed chars, as CuPy gave them


def test_two_ranks_on_one_gpu_are_refused_by_nccl(nccl):
    def body(rank, comm):
        with fakecupy.Device(0):
            return NcclAllReduce(comm)

    assert all(isinstance(e, fakenccl.NcclError) and "Duplicate GPU" in str(e)
               for e in on_ranks(2, body))


def test_a_common_buffer_is_one_arrays_views_only():
    whole = np.zeros(8)
    a, b = whole[:3], whole[3:8]
    assert np.shares_memory(_common_buffer([a, b]), whole)
    assert _common_buffer([a, b]).size == 8
    assert _common_buffer([b, a]) is None  # not in order
    assert _common_buffer([whole[:3], whole[4:]]) is None  # a gap
    # end to end in memory, but b2 is not a view of a's array (as two CuPy allocations of
    # one memory pool chunk may lie)
    b2 = np.frombuffer(memoryview(whole[3:]), np.float64)
    assert b2.base is not None and not isinstance(b2.base, np.ndarray)
    assert _common_buffer([a, b2]) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_gradients_go_as_they_are(nccl, dtype):
    """float16 and bfloat16 buckets reach NCCL as NCCL_FLOAT16 and NCCL_BFLOAT16."""
    if dtype == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    code = {"float16": fakenccl.NCCL_FLOAT16}.get(str(np.dtype(dtype)), fakenccl.NCCL_BFLOAT16)

    def body(rank, comm):
        cupy = sys.modules["cupy"]
        g = cupy.asarray(np.arange(6.0).astype(dtype) * (rank + 1))
        hook = NcclAllReduce(comm)
        hook(None, [[g]])
        return hook, g.get()

    for hook, got in on_ranks(2, body):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.astype(np.float64), np.arange(6.0) * 1.5)
        assert [call[1] for call in hook.nccl_comm.calls] == [code]
