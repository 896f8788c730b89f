"""The few array operations the runtime needs, for NumPy arrays and CuPy (GPU) arrays.

The runtime keeps each param group's state where its params live: NumPy arrays in host
memory, CuPy arrays on their GPU. Everything here dispatches on the array's type by its
module's name, so that NumPy users never import cupy.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np


def is_cupy(array: Any) -> bool:
    module = type(array).__module__
    return module == "cupy" or module.startswith("cupy.")


def is_array(array: Any) -> bool:
    """A NumPy or CuPy ndarray."""
    if isinstance(array, np.ndarray):
        return True
    if is_cupy(array):
        import cupy

        return isinstance(array, cupy.ndarray)
    return False


def module(array: Any):
    """``numpy`` or ``cupy``: the module that makes arrays like ``array``."""
    if is_cupy(array):
        import cupy

        return cupy
    return np


def device(array: Any) -> Any:
    """Where ``array`` lives: ``"cpu"``, or ``("cuda", id)``."""
    if is_cupy(array):
        return ("cuda", int(array.device.id))
    return "cpu"


def describe(array: Any) -> str:
    """``numpy.ndarray float32`` or ``cupy.ndarray float32 on GPU 0``, for messages."""
    where = device(array)
    kind = f"{type(array).__module__.split('.')[0]}.{type(array).__name__}"
    dtype = getattr(array, "dtype", None)
    text = f"{kind} {dtype}" if dtype is not None else kind
    return text if where == "cpu" else f"{text} on GPU {where[1]}"


def on_device(array: Any):
    """A context in which ``array``'s GPU is the current device, so that CuPy's copies,
    fills and kernels on it run there (a no-op for NumPy arrays, and when it already is)."""
    if not is_cupy(array):
        return contextlib.nullcontext()
    import cupy

    if cupy.cuda.runtime.getDevice() == array.device.id:
        return contextlib.nullcontext()
    return cupy.cuda.Device(array.device.id)


def is_float(dtype: Any) -> bool:
    """Floating point, bfloat16 (ml_dtypes, which NumPy reports as kind 'V') included."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name == "bfloat16"


def address(array: Any) -> int:
    """The address of the array's first element."""
    if is_cupy(array):
        return int(array.data.ptr)
    return array.__array_interface__["data"][0]


def zeros(n: int, dtype: Any, like: Any) -> Any:
    """A zeroed 1-D array of ``n`` elements, where ``like`` lives."""
    if is_cupy(like):
        import cupy

        with on_device(like):
            return cupy.zeros(n, dtype)
    return np.zeros(n, dtype)


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array of the values (copied from the GPU for a CuPy array)."""
    if is_cupy(array):
        return array.get()
    return np.asarray(array)


def copy(array: Any) -> Any:
    """A copy, where the array lives."""
    if is_cupy(array):
        with on_device(array):
            return array.copy()
    return np.array(array, copy=True)


def for_host_code(array: Any) -> Any:
    """A param's data as generated host code (a state's ``init``) takes it: a NumPy
    array, or the CuPy array itself (NumPy's functions dispatch to CuPy for it)."""
    return array if is_cupy(array) else np.asarray(array)


def copy_into(dst: Any, src: Any, casting: str = "unsafe") -> None:
    """``dst[...] = src`` across devices: ``src`` may be a NumPy or CuPy array or a
    scalar, and is converted to ``dst``'s dtype as ``casting`` allows."""
    if not is_cupy(dst):
        np.copyto(dst, to_numpy(src) if is_cupy(src) else src, casting=casting)
        return
    import cupy

    with on_device(dst):
        if is_cupy(src):
            if not np.can_cast(src.dtype, dst.dtype, casting):
                raise TypeError(f"cannot cast {src.dtype} to {dst.dtype} ({casting})")
            dst[...] = src
            return
        value = np.asarray(src)
        if value.ndim and not np.can_cast(value.dtype, dst.dtype, casting):
            raise TypeError(f"cannot cast {value.dtype} to {dst.dtype} ({casting})")
        dst[...] = cupy.asarray(value.astype(dst.dtype, copy=False))


def ascontiguous(array: Any) -> Any:
    with on_device(array):
        return module(array).ascontiguousarray(array)


def shares_memory(a: Any, b: Any) -> bool:
    return bool(module(a).shares_memory(a, b))
