"""Flat parameters: re-home many tensors into one contiguous buffer per dtype.

    flat = optdsl.flatten(model_params)      # p.data and p.grad become views
    opt = Adam(model_params, lr=1e-3)        # each step: one kernel call per group

An optimizer steps params whose data, gradients and state lie end to end in memory with a
single kernel call, so after ``flatten`` a step costs the same for a thousand small tensors
as for one large one. Write gradients into ``p.grad`` in place (``p.grad[...] = g``, or
``+=`` to accumulate): assigning a new array to ``p.grad`` works, but that param then
steps on its own again until it is flattened anew. ``opt.zero_grad()`` zeroes flattened
gradients in place rather than setting them to None (torch's ``set_to_none=False``), so
the views survive; every flattened param then steps, as in torch with zeroed gradients.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import arrays

# The gradient buffers of flattened params: an optimizer's zero_grad() zeroes gradients
# that are views of these in place instead of dropping them (see Optimizer.zero_grad).
# Keyed by id (arrays are not hashable); an entry goes when its buffer does.
GRAD_BUFFERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class FlatBuffer:
    """The params of one dtype, end to end: ``data`` and ``grad`` are 1-D arrays, and
    each param's ``.data`` / ``.grad`` is a view of its slice, in the order given."""

    def __init__(self, params: list[Any], dtype: np.dtype):
        self.params = params
        self.dtype = np.dtype(dtype)
        sizes = [int(np.size(p.data)) for p in params]
        # On the params' device: host memory, or their GPU.
        self.data = arrays.zeros(sum(sizes), self.dtype, params[0].data)
        self.grad = arrays.zeros(sum(sizes), self.dtype, params[0].data)
        GRAD_BUFFERS[id(self.grad)] = self.grad
        self.slices: list[slice] = []
        offset = 0
        with arrays.on_device(self.data):  # copies on the params' GPU
            for p, n in zip(params, sizes, strict=True):
                shape = np.shape(p.data)
                view = self.data[offset: offset + n].reshape(shape)
                view[...] = p.data
                grad = self.grad[offset: offset + n].reshape(shape)
                if p.grad is not None:
                    grad[...] = p.grad
                p.data, p.grad = view, grad
                self.slices.append(slice(offset, offset + n))
                offset += n

    def __repr__(self) -> str:
        return f"FlatBuffer({len(self.params)} params, {self.data.size} x {self.dtype})"


class FlatParams:
    """What :func:`flatten` returns: one :class:`FlatBuffer` per dtype, in first-seen order."""

    def __init__(self, params: list[Any], buffers: list[FlatBuffer]):
        self.params = params
        self.buffers = buffers

    def zero_grad(self) -> None:
        """Zero the gradient buffers in place (one fill each); the views stay. A gradient
        rebound to another array since is not one of them."""
        for buffer in self.buffers:
            buffer.grad.fill(0)

    def is_flat(self) -> bool:
        """Whether every param still points into its buffer (nobody rebound .data or
        .grad since)."""
        for buffer in self.buffers:
            for p, s in zip(buffer.params, buffer.slices, strict=True):
                for arr, flat in ((p.data, buffer.data), (p.grad, buffer.grad)):
                    n = s.stop - s.start
                    if not (arrays.is_array(arr) and arr.base is flat and arr.size == n
                            and (n == 0 or arrays.shares_memory(arr, flat[s]))):
                        return False
        return True

    def __repr__(self) -> str:
        return f"FlatParams({', '.join(map(repr, self.buffers))})"


def flatten(params: Iterable[Any]) -> FlatParams:
    """Copy the params' values into one contiguous buffer per dtype and point each
    ``p.data`` and ``p.grad`` at its slice (gradients are zero where there was none).

    ``params`` are parameters (objects with NumPy or CuPy array attributes ``.data`` and
    ``.grad``, such as :class:`optdsl.Param`), in the order the optimizer will list them;
    each device's params get their own buffers there;
    an optimizer built on them before or after works either way. Raises TypeError for
    anything else, and ValueError for a param listed twice."""
    params = list(params)
    seen: set[int] = set()
    by_dtype: dict[tuple, list[Any]] = {}
    for p in params:
        data = getattr(p, "data", None)
        if not hasattr(p, "grad") or not arrays.is_array(data):
            raise TypeError(f"flatten: {type(p).__name__} is not a parameter with a NumPy "
                            "or CuPy array .data (wrap arrays in optdsl.Param)")
        if not arrays.is_float(data.dtype):
            raise TypeError(f"flatten: parameters must hold floating-point arrays, got "
                            f"{data.dtype}")
        if p.grad is not None and np.shape(p.grad) != data.shape:
            raise ValueError(f"flatten: gradient shape {np.shape(p.grad)} does not match "
                             f"parameter shape {data.shape}")
        if p.grad is not None and getattr(p.grad, "dtype", None) != data.dtype:
            raise TypeError(f"flatten: gradient dtype {getattr(p.grad, 'dtype', None)} does "
                            f"not match parameter dtype {data.dtype}")
        if p.grad is not None and arrays.device(p.grad) != arrays.device(data):
            raise ValueError(f"flatten: the gradient ({arrays.describe(p.grad)}) does not "
                             f"live where its parameter does ({arrays.describe(data)})")
        if id(p) in seen:
            raise ValueError("flatten: the same parameter appears twice")
        if id(data) in seen:
            raise ValueError("flatten: two parameters share one .data array; flattening "
                             "would give each its own copy")
        seen.update((id(p), id(data)))
        # keyed by the dtype itself: bfloat16's .str is '<V2', which np.dtype reads as void
        by_dtype.setdefault((arrays.device(data), np.dtype(data.dtype)), []).append(p)
    buffers = [FlatBuffer(members, key[1]) for key, members in by_dtype.items()]
    return FlatParams(params, buffers)
