"""A fake ``cupy`` for machines without a GPU: arrays in host memory that say which GPU
they live on, and kernels that run the CuPy backend's CUDA C++ on the CPU (built by
``cuda_cpu``), so that CI exercises the runtime's device paths.

    def test_something(fake_cupy):          # fake_cupy is sys.modules["cupy"] here
        with fake_cupy.cuda.Device(1):
            w = optdsl.Param(fake_cupy.asarray(values))   # "on GPU 1"

(a module using the fixture binds it: ``fake_cupy = fakecupy.fake_cupy``; outside pytest's
fixtures, ``with fakecupy.installed() as cupy:`` does the same).

It implements what optdsl calls, modelled on CuPy 14.2 where the runtime could go wrong:

- Arrays are made on the current device (``cupy.cuda.Device``); a view keeps its array's
  device; ``ndarray.copy()`` and ``astype`` copy onto the current device, as CuPy's do.
- A kernel reading or writing an array on another device than the current one raises
  CuPy's ``ValueError`` ("... Peer access is unavailable between these devices."): the
  ElementwiseKernel, NumPy ufuncs on fake arrays, ``fill`` of a non-zero value, and
  ``a[...] = b`` where CuPy does not just copy memory. Set ``PEER_ACCESS = True`` to get
  CuPy's PerformanceWarning instead, as on machines whose GPUs can reach each other. A
  RawKernel given an array of another device raises RuntimeError (on a GPU, an illegal
  memory access), and a memcpy (``copy``, same-layout assignment) works across devices.
- NumPy arrays where CuPy wants device arrays raise TypeError (kernel arguments, ufuncs
  and NumPy functions mixing both), and ``cupy_array[...] = numpy_array`` raises CuPy's
  ValueError (only scalars and CuPy arrays can be assigned).

Unlike a real ``cupy.ndarray``, the fake one is a ``numpy.ndarray`` subclass: NumPy code
works on it, ``numpy.asarray(a)`` does not raise, and ``isinstance(a, numpy.ndarray)``
holds. The fixture therefore makes the CPU backends' ``accepts`` refuse fake arrays, as
their ``isinstance`` checks refuse real ones.

Every ElementwiseKernel and RawKernel construction, C++ build and launch is counted in
``counts`` and logged in ``launches`` (which device was current, where the arrays were).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import threading
import types
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

import cuda_cpu
import numpy as np
import pytest

# GPUs the fake machine has.
DEVICE_COUNT = 2
# Whether a kernel on one GPU may read another GPU's memory (CuPy then warns).
PEER_ACCESS = False

# ElementwiseKernel / RawKernel constructions, C++ builds ("compile") and launches
# ("elementwise_launch", "raw_launch"); reset by the fixture.
counts: Counter = Counter()


class Launch(NamedTuple):
    kind: str  # "elementwise" or "raw"
    name: str
    device: int  # the current device at launch
    array_devices: tuple[int, ...]  # the devices of the array arguments, in order
    size: int  # elements (elementwise) or threads (raw)


launches: list[Launch] = []


class PerformanceWarning(RuntimeWarning):
    pass


class CUDARuntimeError(RuntimeError):
    pass


def reset() -> None:
    counts.clear()
    launches.clear()
    _current.device = 0


# --- devices ------------------------------------------------------------------------------

class _Current(threading.local):
    device = 0
    in_function = False  # inside a NumPy function called on a fake array


_current = _Current()


class Device:
    """``cupy.cuda.Device``: ``with Device(1):`` makes GPU 1 the current device."""

    def __init__(self, device: Any = None):
        if device is None:
            device = _current.device
        device = int(getattr(device, "id", device))
        if not 0 <= device < DEVICE_COUNT:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        self.id = device
        self._previous: list[int] = []

    def __enter__(self) -> Device:
        self._previous.append(_current.device)
        _current.device = self.id
        return self

    def __exit__(self, *exc: Any) -> None:
        _current.device = self._previous.pop()

    def use(self) -> None:
        _current.device = self.id

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Device", self.id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


def _get_device() -> int:
    return _current.device


def _set_device(device: int) -> None:
    _current.device = Device(device).id


def _check_peer(array: ndarray, device: int) -> None:
    """What CuPy's kernels check of each array argument (``_check_peer_access``)."""
    if array._device == device:
        return
    message = (f"The device where the array resides ({array._device}) is different from "
               f"the current device ({device}).")
    if not PEER_ACCESS:
        raise ValueError(f"{message} Peer access is unavailable between these devices.")
    warnings.warn(f"{message} Peer access has been activated automatically.",
                  PerformanceWarning, stacklevel=3)


def _unsupported(value: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(value)}")


# --- arrays -------------------------------------------------------------------------------

class MemoryPointer:
    """``ndarray.data``: the address of the first element, and its device."""

    def __init__(self, ptr: int, device_id: int):
        self.ptr, self.device_id = ptr, device_id

    @property
    def device(self) -> Device:
        return Device(self.device_id)


class ndarray(np.ndarray):  # noqa: N801 - named as CuPy's
    """An array "on a GPU": host memory tagged with a device id."""

    _device: int = 0

    def __array_finalize__(self, obj: Any) -> None:
        # A view lives where its array does; anything NumPy allocates, on the current device.
        device = getattr(obj, "_device", None)
        self._device = device if device is not None and self.base is not None \
            else _current.device

    @property
    def device(self) -> Device:  # overrides NumPy's array-API "cpu"
        return Device(self._device)

    @property
    def data(self) -> MemoryPointer:  # overrides NumPy's buffer
        return MemoryPointer(self.__array_interface__["data"][0], self._device)

    def _host(self) -> np.ndarray:
        return self.view(np.ndarray)

    def get(self, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
        if out is not None:
            np.copyto(out, self._host())
            return out
        return np.array(self._host(), order=order, copy=True)

    def copy(self, order: str = "C") -> ndarray:
        """Onto the current device, as CuPy's (a memcpy across devices)."""
        if self._device != _current.device and self.size and not (
                self.flags.c_contiguous or self.flags.f_contiguous):
            raise NotImplementedError("CuPy cannot copy non-contiguous array between devices.")
        out = _empty(self.shape, self.dtype, _current.device)
        out._host()[...] = self._host()
        return out

    def astype(self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None,
               copy: bool = True) -> ndarray:
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        if self.size:
            _check_peer(self, _current.device)
        out = _empty(self.shape, dtype, _current.device)
        out._host()[...] = self._host()
        return out

    def __copy__(self) -> ndarray:
        return self.copy()

    def __deepcopy__(self, memo: Any) -> ndarray:
        with self.device:
            return self.copy()

    def __reduce__(self):
        return _rebuild, (self.get(), self._device)

    def fill(self, value: Any) -> None:
        if isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        if not (value == 0 and self.flags.c_contiguous):  # else a memset, from any device
            _check_peer(self, _current.device)
        self._host().fill(value)

    def __setitem__(self, key: Any, value: Any) -> None:
        # CuPy's _scatter_op: a scalar fills the view; a CuPy array of the view's layout is
        # copied as memory; anything else goes through a copy kernel on the current device.
        index = key if isinstance(key, tuple) else (key,)
        if not any(k is Ellipsis for k in index):
            index = (*index, Ellipsis)  # a 0-d view, not a scalar, for a single element
        target = np.ndarray.__getitem__(self, index)
        if not (isinstance(target, ndarray) and _owner(target) is _owner(self)):
            target = None  # advanced indexing (a copy): no view to write through
        if not isinstance(value, ndarray):
            if isinstance(value, np.ndarray) and value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            if target is not None:
                target.fill(value)
                return
        elif target is not None and target.shape == value.shape \
                and target.strides == value.strides:
            if target.size == 0 or target.data.ptr == value.data.ptr:
                return
            if target.flags.c_contiguous and target.dtype == value.dtype:
                target._host()[...] = value._host()  # a memcpy: works across devices
                return
        if isinstance(value, ndarray):
            _check_peer(value, _current.device)
            value = value._host()
        _check_peer(self, _current.device)
        self._host()[key] = value

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, out: Any = None,
                        **kwargs: Any) -> Any:
        device = _current.device
        for x in (*inputs, *(out or ())):
            if isinstance(x, ndarray):
                _check_peer(x, device)
            elif isinstance(x, np.ndarray):
                raise _unsupported(x)
        args = [x._host() if isinstance(x, ndarray) else x for x in inputs]
        kwargs = {k: v._host() if isinstance(v, ndarray) else v for k, v in kwargs.items()}
        if out is not None:
            kwargs["out"] = tuple(o._host() if isinstance(o, ndarray) else o for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(_adopt(r, device) for r in result)
        return _adopt(result, device)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        # CuPy's own functions take no NumPy arrays (NumPy's, called by the one the user
        # called, may make some: only the outermost call is checked).
        if not _current.in_function:
            for x in (*args, *kwargs.values()):
                for item in (x if isinstance(x, (list, tuple)) else (x,)):
                    if isinstance(item, np.ndarray) and not isinstance(item, ndarray):
                        raise _unsupported(item)
        outer, _current.in_function = _current.in_function, True
        try:
            return super().__array_function__(func, types, args, kwargs)
        finally:
            _current.in_function = outer


ndarray.__module__ = "cupy"


def _owner(array: np.ndarray) -> np.ndarray:
    return array if array.base is None else array.base


def _empty(shape: Any, dtype: Any, device: int) -> ndarray:
    """An array owning its memory (``base`` None, as CuPy's), on ``device``."""
    out = np.ndarray.__new__(ndarray, shape, np.dtype(dtype))
    out._device = device
    return out


def _adopt(value: Any, device: int) -> ndarray:
    """A ufunc's result as an owning array on ``device`` (0-d for a scalar, as CuPy's)."""
    host = np.asarray(value)
    out = _empty(host.shape, host.dtype, device)
    out._host()[...] = host
    return out


def _rebuild(values: np.ndarray, device: int) -> ndarray:
    return _adopt(values, device)


def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return _empty(shape, dtype, _current.device)


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    out = _empty(shape, dtype, _current.device)
    out._host().fill(0)
    return out


def ones(shape: Any, dtype: Any = float) -> ndarray:
    out = _empty(shape, dtype, _current.device)
    out._host().fill(1)
    return out


def full_like(a: Any, fill_value: Any, dtype: Any = None) -> ndarray:
    """On the current device, as CuPy's (the README's GPU block uses it)."""
    out = _empty(np.shape(a), a.dtype if dtype is None else dtype, _current.device)
    out._host().fill(fill_value)
    return out


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    """A CuPy array is returned as it is (on its device); anything else is copied onto
    the current device."""
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype, copy=False)
    return _adopt(np.asarray(a, dtype=dtype), _current.device)


def array(a: Any, dtype: Any = None, copy: bool = True) -> ndarray:
    if isinstance(a, ndarray):
        return a.astype(a.dtype if dtype is None else dtype, copy=copy)
    return asarray(a, dtype)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    if not isinstance(a, ndarray):
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base,"
                        f" got {type(a).__name__})")
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if a.flags.c_contiguous and dtype == a.dtype:
        return a
    return a.astype(dtype, order="C", copy=True)  # a copy kernel on the current device


def shares_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    for x in (a, b):
        if not isinstance(x, ndarray):
            raise _unsupported(x)
    return bool(np.shares_memory(a._host(), b._host()))


def asnumpy(a: Any) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*args: Any) -> types.ModuleType:
    return module if any(isinstance(a, ndarray) for a in args) else np


def is_available() -> bool:
    return True


# --- kernels ------------------------------------------------------------------------------

def _params(text: str) -> list[tuple[str, str]]:
    """``'T b_g, S a0'`` -> [('T', 'b_g'), ('S', 'a0')]."""
    return [tuple(p.split()[-2:]) for p in (q.strip() for q in text.split(",")) if p]


class ElementwiseKernel:
    """``cupy.ElementwiseKernel``, run by ``cuda_cpu.elementwise`` (one build per dtype).

    Takes what optdsl's kernels use: arrays of one type placeholder ``T`` (all of one
    shape; no broadcasting), scalars of a placeholder ``S`` (which the C++ loop types as
    the math type of ``T``: float for float16, else ``T``), and ``bool`` scalars; output
    arrays must be given."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False,
                 return_tuple: bool = False, loop_prep: str = "", after_loop: str = "",
                 options: tuple = (), **kwargs: Any):
        counts["ElementwiseKernel"] += 1
        self.in_params, self.out_params = in_params, out_params
        self.operation, self.name, self.preamble = operation, name, preamble
        self.options, self.no_return = tuple(options), no_return
        self.params = _params(in_params) + _params(out_params)
        self.nin = len(_params(in_params))
        self._runs: dict[str, Any] = {}

    def __call__(self, *args: Any, size: Any = None, block_size: Any = None,
                 stream: Any = None) -> Any:
        if len(args) != len(self.params):
            raise TypeError(f"Wrong number of arguments for {self.name!r} (the fake takes "
                            f"every in and out parameter: {len(self.params)})")
        device = _current.device
        for x in args:
            if isinstance(x, ndarray):
                _check_peer(x, device)
            elif isinstance(x, np.ndarray):
                raise _unsupported(x)
        arrays = [a for (ctype, _), a in zip(self.params, args, strict=True) if ctype == "T"]
        if not arrays or not all(isinstance(a, ndarray) for a in arrays):
            raise TypeError(f"{self.name}: the fake takes arrays for every T parameter")
        dtype = arrays[0].dtype
        if any(a.dtype != dtype for a in arrays):
            raise TypeError(f"Type is mismatched. T {[str(a.dtype) for a in arrays]}")
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"{self.name}: the fake does not broadcast "
                             f"{[a.shape for a in arrays]}")
        math = np.dtype(np.float32) if dtype.itemsize < 4 else dtype
        for (ctype, pname), a in zip(self.params, args, strict=True):
            if ctype == "S" and np.asarray(a).dtype != math:
                raise TypeError(f"{self.name}: scalar {pname} is {np.asarray(a).dtype}; the "
                                f"fake builds S as {math} for {dtype} arrays")
            if ctype == "bool" and not isinstance(a, (bool, np.bool_)):
                raise TypeError(f"{self.name}: {pname} must be a bool, got {type(a).__name__}")
        launches.append(Launch("elementwise", self.name, device,
                               tuple(a._device for a in arrays), arrays[0].size))
        counts["elementwise_launch"] += 1
        if arrays[0].size == 0:
            return None  # CuPy launches nothing
        run = self._runs.get(dtype.str)
        if run is None:
            counts["compile"] += 1
            run = self._runs[dtype.str] = cuda_cpu.elementwise(
                self.in_params, self.out_params, self.operation, self.preamble, dtype)
        flat, back = [], []
        for (ctype, _), a in zip(self.params, args, strict=True):
            if ctype != "T":
                flat.append(a)
                continue
            host = a._host()
            if not host.flags.c_contiguous:  # CuPy indexes strided arrays; copy in and out
                contiguous = np.ascontiguousarray(host)
                back.append((host, contiguous))
                host = contiguous
            flat.append(host.reshape(-1))
        run(*flat)
        for host, contiguous in back:
            host[...] = contiguous
        return None


class RawKernel:
    """``cupy.RawKernel``, run by ``cuda_cpu.raw_kernel`` (blocks and threads in a loop)."""

    def __init__(self, code: str, name: str, options: tuple = (), backend: str = "nvrtc",
                 translate_cucomplex: bool = False, enable_cooperative_groups: bool = False,
                 jitify: bool = False):
        counts["RawKernel"] += 1
        self.code, self.name, self.options = code, name, tuple(options)
        self._launch: Any = None

    def __call__(self, grid: Any, block: Any, args: tuple, *, shared_mem: int = 0,
                 stream: Any = None, enable_cooperative_groups: bool = False) -> None:
        grid = tuple(grid) if isinstance(grid, tuple) else (grid,)
        block = tuple(block) if isinstance(block, tuple) else (block,)
        if any(d != 1 for d in (*grid[1:], *block[1:])):
            raise NotImplementedError("the fake launches 1-D grids and blocks only")
        if not isinstance(args, (tuple, list)):
            raise TypeError("args must be a tuple")
        device = _current.device
        for a in args:
            if isinstance(a, ndarray):
                if a._device != device and not PEER_ACCESS:
                    raise RuntimeError(f"{self.name}: an argument lives on GPU {a._device}, "
                                       f"the kernel runs on GPU {device} (on a GPU: "
                                       "cudaErrorIllegalAddress)")
            elif isinstance(a, np.ndarray):
                raise _unsupported(a)
        launches.append(Launch("raw", self.name, device,
                               tuple(a._device for a in args if isinstance(a, ndarray)),
                               grid[0] * block[0]))
        counts["raw_launch"] += 1
        if self._launch is None:
            counts["compile"] += 1
            self._launch = cuda_cpu.raw_kernel(self.code, self.name)
        self._launch(grid[:1], block[:1],
                     tuple(a._host() if isinstance(a, ndarray) else a for a in args))


# --- the module ---------------------------------------------------------------------------

def _make_module() -> types.ModuleType:
    fake = types.ModuleType("cupy", __doc__)
    # importlib.util.find_spec("cupy") reads this (optdsl's CupyBackend.available()).
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    fake.__version__ = "14.2.0+fake"
    for name in ("ndarray", "ElementwiseKernel", "RawKernel", "empty", "zeros", "ones",
                 "full_like",
                 "asarray",
                 "array", "ascontiguousarray", "shares_memory", "asnumpy", "get_array_module",
                 "is_available"):
        setattr(fake, name, globals()[name])
    for name in ("float16", "float32", "float64", "bool_", "int64"):
        setattr(fake, name, getattr(np, name))
    runtime = types.SimpleNamespace(getDevice=_get_device, setDevice=_set_device,
                                    getDeviceCount=lambda: DEVICE_COUNT,
                                    CUDARuntimeError=CUDARuntimeError)
    fake.cuda = types.SimpleNamespace(Device=Device, runtime=runtime,
                                      is_available=lambda: True, MemoryPointer=MemoryPointer)
    return fake


module = _make_module()


def _refusing_cupy(accepts):
    def refuse(self, array: Any) -> bool:
        return not isinstance(array, ndarray) and accepts(self, array)

    return refuse


@contextlib.contextmanager
def installed() -> Iterator[types.ModuleType]:
    """The fake as ``sys.modules["cupy"]`` (counts and launches reset, GPU 0 current).
    Real CuPy's modules are hidden meanwhile, so nothing imported inside mixes them with the
    fake; afterwards everything is as it was, and no compiled optdsl kernel keeps a fake
    CuPy kernel (a later test on a real GPU, in the same process, builds its own)."""
    from optdsl.backend import cupy_backend, numba_backend, numpy_backend

    # The compiled kernels' runners used meanwhile, with the CuPy kernels they held before
    # (real ones, on a machine with a GPU): the fake's are built afresh and dropped after.
    saved: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def recording(method):
        def record(runner: Any, *args: Any) -> Any:
            if runner not in saved:
                saved[runner] = (runner._elementwise, dict(runner._multi))
                runner._elementwise = None
                runner._multi.clear()
            return method(runner, *args)

        return record

    with pytest.MonkeyPatch.context() as mp:
        for name in list(sys.modules):
            if name.split(".")[0] in ("cupy", "cupyx", "cupy_backends"):
                mp.delitem(sys.modules, name)
        mp.setitem(sys.modules, "cupy", module)
        mp.setattr(sys.modules[__name__], "PEER_ACCESS", False)
        for backend_module in (numpy_backend, numba_backend):
            for cls in vars(backend_module).values():
                if isinstance(cls, type) and "accepts" in vars(cls) \
                        and cls.__module__ == backend_module.__name__:
                    mp.setattr(cls, "accepts", _refusing_cupy(vars(cls)["accepts"]))
        for method in ("elementwise", "_multi_kernel"):
            mp.setattr(cupy_backend._Runner, method,
                       recording(getattr(cupy_backend._Runner, method)))
        reset()
        try:
            yield module
        finally:
            reset()
            for runner, (elementwise, multi) in saved.items():
                runner._elementwise = elementwise
                runner._multi.clear()
                runner._multi.update(multi)


@pytest.fixture
def fake_cupy() -> Iterator[types.ModuleType]:
    """The fake cupy for one test (see :func:`installed`); skips without g++."""
    if not cuda_cpu.available():
        pytest.skip("g++ is needed to run the CUDA C++ on the CPU")
    with installed() as fake:
        yield fake
