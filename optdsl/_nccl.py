"""Data-parallel training of CuPy parameters over NCCL (``cupy.cuda.nccl``): the gradients
are summed (or averaged) on the GPUs, with MPI only to start.

    from mpi4py import MPI
    from optdsl.distributed import NcclAllReduce

    cupy.cuda.Device(local_rank).use()                 # one GPU per rank, before
    hook = NcclAllReduce(MPI.COMM_WORLD)               # average=True, bucket_mb=25
    opt.register_grad_hook(hook)

Unverified on a GPU when written (no GPU was available): tests/distributed/test_nccl.py
runs it on the CPU against a fake NCCL, and tests/gpu/test_nccl_gpu.py on the next GPU.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np

from . import arrays
from .distributed import AllReduce, DistributedError, _runs

# ncclUniqueId's size (nccl.h's NCCL_UNIQUE_ID_BYTES).
_UNIQUE_ID_BYTES = 128
# How the unique id travels: [rank 0 got one (1) or not (0), it was bytes (0, CuPy >= 14)
# or a tuple of C chars (1, older CuPy), its 128 bytes].
_OK, _KIND, _ID = 0, 1, 2


class NcclAllReduce(AllReduce):
    """A grad hook (``opt.register_grad_hook(NcclAllReduce(comm))``) that replaces every
    CuPy gradient by its sum over the ranks of ``comm`` (divided by their number with
    ``average``), reduced by NCCL on the GPUs, in buckets of at most ``bucket_mb`` MiB
    issued in the same order on every rank, on the current CuPy stream.

    ``comm`` (an mpi4py communicator) only starts NCCL and checks the layout: rank 0 gets
    an NCCL unique id, ``comm.Bcast`` sends it to every rank (a NumPy buffer, no pickle),
    and each rank joins an ``NcclCommunicator`` on its current CuPy device, which must be
    another GPU on every rank (NCCL refuses two ranks on one GPU). Every step, as
    :class:`AllReduce`, the ranks first compare their gradients' layout over ``comm``.

    Gradients that lie end to end in one buffer (as ``optdsl.flatten`` leaves them) are
    reduced where they are, in slices; others are packed into a bucket buffer on the GPU
    and back. Gradients must be CuPy arrays on the communicator's GPU, of float16,
    bfloat16, float32 or float64; NumPy gradients go through :class:`AllReduce`.

    ``buckets_last_step`` counts the collectives of the last step; ``device`` is the
    GPU's id; ``nccl_comm`` the ``cupy.cuda.nccl.NcclCommunicator``."""

    def __init__(self, comm: Any, average: bool = True, bucket_mb: float = 25.0):
        if not callable(getattr(comm, "Bcast", None)):
            raise TypeError(f"NcclAllReduce needs an mpi4py communicator (with Bcast), got "
                            f"{type(comm).__name__}")
        super().__init__(comm, average=average, bucket_mb=bucket_mb)
        cupy, nccl = _agree_nccl_is_usable(comm)
        self._cupy, self._nccl = cupy, nccl
        self.device = int(cupy.cuda.runtime.getDevice())
        self._datatypes = _datatypes(nccl)
        uid = _broadcast_unique_id(comm, nccl)
        with cupy.cuda.Device(self.device):
            self.nccl_comm = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())

    def __repr__(self) -> str:
        return (f"NcclAllReduce(size={self.comm.Get_size()}, device={self.device}, "
                f"average={self.average}, bucket_mb={self.bucket_bytes / (1 << 20):g})")

    def __call__(self, opt: Any, grads: list[list[Any]]) -> None:
        for index, group in enumerate(grads):
            for k, g in enumerate(group):
                self._check_gradient(g, f"param {k} of group {index}")
        self._check_layout(grads)
        size = self.comm.Get_size()
        self.buckets_last_step = 0
        with self._cupy.cuda.Device(self.device):
            stream = self._cupy.cuda.get_current_stream().ptr
            for group in grads:
                for run in _runs(group):
                    for bucket in self._buckets(run):
                        self._reduce_on(bucket, stream)
                        # Each element divided once, after its sum: one kernel per bucket,
                        # not one per gradient.
                        if self.average and size > 1:
                            bucket /= size

    def _check_gradient(self, g: Any, where: str) -> None:
        if not arrays.is_cupy(g) or not arrays.is_array(g):
            use = ("; NumPy gradients are reduced over MPI by optdsl.distributed.AllReduce"
                   if isinstance(g, np.ndarray) else
                   " (a row-sparse gradient: densify it with .to_dense(shape) first)")
            raise DistributedError(f"NcclAllReduce: {where} has a {type(g).__name__} "
                                   f"gradient; it reduces CuPy arrays on the GPU{use}")
        if arrays.device(g) != ("cuda", self.device):
            raise DistributedError(f"NcclAllReduce: {where} has a gradient on GPU "
                                   f"{arrays.device(g)[1]}, but this rank's NCCL "
                                   f"communicator is on GPU {self.device}")
        if np.dtype(g.dtype) not in self._datatypes:
            raise DistributedError(f"NcclAllReduce: {where} has a {g.dtype} gradient; it "
                                   "reduces float16, bfloat16, float32 and float64")

    def _check_layout(self, grads: list[list[Any]]) -> None:
        try:
            super()._check_layout(grads)
        except DistributedError as error:
            raise DistributedError(str(error).replace("AllReduce", "NcclAllReduce", 1)) \
                from None

    # --- buckets: AllReduce._buckets, with the packed buffers on the GPU ----------------
    def _empty(self, n: int, dtype: np.dtype) -> Any:
        # On the GPU. Reusing one buffer across buckets is safe: the copies in, the
        # reduction and the copies out are all queued on the one stream, in that order.
        return self._cupy.empty(n, dtype)

    def _reduce_on(self, buffer: Any, stream: int) -> None:
        if buffer.size:
            ptr = buffer.data.ptr
            self.nccl_comm.allReduce(ptr, ptr, buffer.size,
                                     self._datatypes[np.dtype(buffer.dtype)],
                                     self._nccl.NCCL_SUM, stream)
            self.buckets_last_step += 1


# --- starting NCCL -----------------------------------------------------------------------------

def _agree_nccl_is_usable(comm: Any) -> tuple[Any, Any]:
    """(cupy, cupy.cuda.nccl) on every rank, or a DistributedError on every rank (rather
    than the ranks that can go on waiting for the others in the next collective)."""
    cupy, nccl, reason = _load_nccl()
    size = comm.Get_size()
    every = np.empty(size, np.int64)
    comm.Allgather(np.array([reason is None], np.int64), every)
    if reason is not None:
        raise DistributedError(f"NcclAllReduce: {reason}")
    if not every.all():
        ranks = ", ".join(str(r) for r in np.flatnonzero(every == 0))
        raise DistributedError(f"NcclAllReduce: NCCL cannot be used on rank(s) {ranks} "
                               "(their error says why); every rank needs CuPy, NCCL and a GPU")
    return cupy, nccl


def _load_nccl() -> tuple[Any, Any, str | None]:
    """(cupy, cupy.cuda.nccl, None), or (..., why not) in words."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as error:
        return None, None, (f"CuPy is not installed ({error}); install the 'cuda' extra: "
                            "pip install 'optdsl[cuda]'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            nccl = importlib.import_module("cupy.cuda.nccl")
        except ImportError as error:  # pragma: no cover - CuPy ships the module
            return cupy, None, f"cupy.cuda.nccl cannot be imported ({error})"
    if not getattr(nccl, "available", False):
        # CuPy's why, warned on the first import only
        said = " ".join(" ".join(str(w.message).split()) for w in caught
                        if "nccl" in str(w.message).lower())
        return cupy, nccl, ("CuPy cannot load the NCCL library"
                            + (f": {said}" if said else
                               " (install NCCL for CuPy's CUDA, e.g. pip install "
                               "nvidia-nccl-cu13)"))
    if not cupy.cuda.is_available():
        return cupy, nccl, "no CUDA GPU here (cupy.cuda.is_available() is False)"
    return cupy, nccl, None


def _datatypes(nccl: Any) -> dict[np.dtype, int]:
    """NCCL's datatype for each gradient dtype it reduces."""
    table = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
             np.dtype(np.float64): nccl.NCCL_FLOAT64}
    try:
        import ml_dtypes
    except ImportError:
        return table
    if hasattr(nccl, "NCCL_BFLOAT16"):
        table[np.dtype(ml_dtypes.bfloat16)] = nccl.NCCL_BFLOAT16
    return table


def _broadcast_unique_id(comm: Any, nccl: Any) -> Any:
    """Rank 0's ``nccl.get_unique_id()`` on every rank, sent with the buffer-based
    ``comm.Bcast``; if rank 0 cannot get one, a DistributedError on every rank."""
    message = np.zeros(_ID + _UNIQUE_ID_BYTES, np.uint8)
    failure = None
    if comm.Get_rank() == 0:
        try:
            uid = nccl.get_unique_id()
            if isinstance(uid, (bytes, bytearray)):
                raw = np.frombuffer(bytes(uid), np.uint8)
            else:  # CuPy < 14: a tuple of the id's C chars, as ints
                raw = np.array(uid, np.int8).view(np.uint8)
                message[_KIND] = 1
            if raw.size != _UNIQUE_ID_BYTES:
                raise ValueError(f"an NCCL unique id of {raw.size} bytes, not "
                                 f"{_UNIQUE_ID_BYTES}")
            message[_ID:] = raw
            message[_OK] = 1
        except Exception as error:  # noqa: BLE001 - every rank must hear of it
            failure = error
    comm.Bcast(message, root=0)
    if not message[_OK]:
        if failure is not None:
            raise DistributedError(f"NcclAllReduce: rank 0 could not get an NCCL unique id: "
                                   f"{failure}") from failure
        raise DistributedError("NcclAllReduce: rank 0 could not get an NCCL unique id "
                               "(its error says why)")
    raw = message[_ID:]
    if message[_KIND]:
        return tuple(int(c) for c in raw.view(np.int8))
    return raw.tobytes()
