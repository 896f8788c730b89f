"""A fake ``cupy.cuda.nccl`` for machines without a GPU, to go with ``fakecupy``: the ranks
of a communicator are threads of one process, and ``allReduce`` really sums their arrays,
read and written through the raw pointers it is given (the fake CuPy arrays live in host
memory), as NCCL reads device pointers.

    with fakenccl.installed(fake_cupy) as nccl:   # cupy.cuda.nccl is the fake meanwhile
        ...

It follows CuPy 14.2's ``cupy_backends.cuda.libs.nccl`` (``get_unique_id()`` returns
bytes, ``NcclCommunicator(ndev, commId, rank)``, ``allReduce(sendbuf, recvbuf, count,
datatype, op, stream)`` on pointers) and checks what NCCL would refuse or get wrong: two
ranks on one GPU, a collective issued with another GPU current or on another GPU's stream,
and ranks that issue different collectives (NCCL would hang or mix them up: the fake
raises ``NcclError`` on every rank instead). ``NcclCommunicator.calls`` logs each rank's
collectives: (count, datatype, op, pointer).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import fakecupy
import numpy as np
import pytest

# nccl.h's values
NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64, NCCL_UINT64 = range(6)
NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_BFLOAT16 = 6, 7, 8, 9
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG = range(5)
UNIQUE_ID_BYTES = 128
# Seconds a rank waits for the others in a collective before the fake calls it a hang.
TIMEOUT = 5.0

_DTYPES = {NCCL_FLOAT16: np.dtype(np.float16), NCCL_FLOAT32: np.dtype(np.float32),
           NCCL_FLOAT64: np.dtype(np.float64), NCCL_INT32: np.dtype(np.int32),
           NCCL_INT64: np.dtype(np.int64)}
try:
    import ml_dtypes

    _DTYPES[NCCL_BFLOAT16] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes comes with the 'dev' extra
    pass


class NcclError(RuntimeError):
    pass


class Stream:
    """``cupy.cuda.get_current_stream()``: one stream per device, with a made-up pointer."""

    def __init__(self, device: int):
        self.device_id, self.ptr = device, 0x5EA0 + device


def get_current_stream() -> Stream:
    return Stream(fakecupy._current.device)


class _World:
    """What the ranks of one unique id share."""

    def __init__(self, ndev: int):
        self.ndev = ndev
        self.barrier = threading.Barrier(ndev, timeout=TIMEOUT)
        self.slots: list[Any] = [None] * ndev

    def exchange(self, rank: int, value: Any) -> list[Any]:
        """Every rank's ``value``, once all have given theirs."""
        self.slots[rank] = value
        try:
            self.barrier.wait()
            every = list(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        except threading.BrokenBarrierError:
            self.barrier.abort()
            raise NcclError("a rank did not join the collective (on a GPU: a hang)") from None
        return every


_worlds: dict[bytes, _World] = {}
_lock = threading.Lock()


def get_unique_id() -> bytes:
    return os.urandom(UNIQUE_ID_BYTES)


def _key(comm_id: Any) -> bytes:
    if isinstance(comm_id, tuple):  # CuPy < 14's form
        comm_id = np.array(comm_id, np.int8).tobytes()
    if not isinstance(comm_id, bytes) or len(comm_id) != UNIQUE_ID_BYTES:
        raise TypeError(f"commId must be the {UNIQUE_ID_BYTES} bytes of get_unique_id(), "
                        f"got {type(comm_id).__name__}")
    return comm_id


def _memory(ptr: int, count: int, dtype: np.dtype) -> np.ndarray:
    """The ``count`` elements at address ``ptr``, as an array that writes through."""
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype)


class NcclCommunicator:
    def __init__(self, ndev: int, commId: Any, rank: int):  # noqa: N803 - CuPy's names
        key = _key(commId)
        if not 0 <= rank < ndev:
            raise NcclError(f"invalid rank {rank} of {ndev}")
        with _lock:
            world = _worlds.setdefault(key, _World(ndev))
        if world.ndev != ndev:
            raise NcclError(f"ndev {ndev}, but the id's communicator has {world.ndev}")
        self.world, self.rank, self.ndev = world, rank, ndev
        self.device = fakecupy._current.device
        self.calls: list[tuple[int, int, int, int]] = []
        # ncclCommInitRank waits for every rank, and refuses two on one GPU.
        devices = world.exchange(rank, self.device)
        if len(set(devices)) != len(devices):
            raise NcclError("invalid usage: Duplicate GPU detected "
                            f"(the ranks' devices: {devices})")

    def device_id(self) -> int:
        return self.device

    def rank_id(self) -> int:
        return self.rank

    def size(self) -> int:
        return self.ndev

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int,  # noqa: N802
                  op: int, stream: int) -> None:
        if fakecupy._current.device != self.device:
            raise NcclError(f"allReduce with GPU {fakecupy._current.device} current; the "
                            f"communicator is on GPU {self.device}")
        if stream != Stream(self.device).ptr:
            raise NcclError(f"allReduce on stream {stream:#x}, not GPU {self.device}'s "
                            "current stream")
        if datatype not in _DTYPES or op not in (NCCL_SUM, NCCL_MAX):
            raise NcclError(f"the fake reduces sums and maxima of {sorted(_DTYPES)}, got "
                            f"datatype {datatype}, op {op}")
        dtype = _DTYPES[datatype]
        mine = _memory(sendbuf, count, dtype).copy() if count else np.empty(0, dtype)
        self.calls.append((count, datatype, op, sendbuf))
        every = self.world.exchange(self.rank, (count, datatype, op, mine))
        if len({(c, d, o) for c, d, o, _ in every}) != 1:
            raise NcclError("the ranks issued different collectives: "
                            f"{[(c, d, o) for c, d, o, _ in every]}")
        total = every[0][3].copy()
        for _, _, _, values in every[1:]:  # in rank order, as the tests' reference
            if op == NCCL_SUM:
                total += values
            else:
                np.maximum(total, values, out=total)
        if count:
            _memory(recvbuf, count, dtype)[...] = total


def _make_module(available: bool) -> types.ModuleType:
    fake = types.ModuleType("cupy.cuda.nccl", __doc__)
    fake.available = available
    for name, value in globals().items():
        if name.startswith("NCCL_") or name in ("NcclError", "NcclCommunicator",
                                                 "get_unique_id"):
            setattr(fake, name, value)
    return fake


@contextlib.contextmanager
def installed(cupy: types.ModuleType, available: bool = True) -> Iterator[types.ModuleType]:
    """The fake as ``cupy.cuda.nccl`` of the fake ``cupy`` (``fakecupy.installed()``), with
    ``cupy.cuda.get_current_stream``; ``available=False`` is CuPy without libnccl."""
    nccl = _make_module(available)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cupy.cuda, "nccl", nccl, raising=False)
        mp.setattr(cupy.cuda, "get_current_stream", get_current_stream, raising=False)
        mp.setitem(sys.modules, "cupy.cuda", cupy.cuda)
        mp.setitem(sys.modules, "cupy.cuda.nccl", nccl)
        try:
            yield nccl
        finally:
            with _lock:
                _worlds.clear()
