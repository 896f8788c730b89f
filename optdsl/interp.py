"""The reference interpreter: evaluates an *unoptimised* IR Program on whole arrays.

It is the oracle the kernels are tested against. It walks the SSA instructions one by
one with :func:`optdsl.ops.apply`, with no passes, no chunking, no scratch reuse and no
hoisting: host values are ``numpy.float64``, tensor values are arrays of the parameter's
dtype (host operands are cast to that dtype where they meet a tensor, as the runtime casts
kernel arguments).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import ops
from .errors import InternalCompilerError
from .ir import Program
from .stages import factored_mean, factored_op, reduce_values


def interpret(program: Program, hypers: dict[str, Any], t: int,
              buffers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``program`` on ``buffers`` (p, g, states, and scalar states as numbers);
    return the new outputs (scalar states' as numbers).

    The inputs are not modified.
    """
    dtype = np.asarray(buffers["p"]).dtype
    values: dict[int, Any] = {}
    for ins in program.host + program.body:
        if ins.op == "const":
            value = ins.attr if isinstance(ins.attr, (bool, str)) else np.float64(ins.attr)
        elif ins.op == "hyper":
            raw = hypers[ins.attr]
            if ins.out.type.elem == "tuple":
                value = tuple(np.float64(v) for v in raw)
            elif ins.out.type.elem == "float":
                value = np.float64(raw)
            else:
                value = raw
        elif ins.op == "step":
            value = np.float64(t)
        elif ins.op == "load":
            value = np.array(buffers[ins.attr], dtype=dtype, copy=True)
        elif ins.op == "index":
            value = values[ins.args[0].id][ins.attr]
        elif ins.op == "scalar":  # per-parameter values: see optdsl.stages
            value = _per_parameter(ins.attr, buffers)
        elif ins.op == "reduce" and ins.out.type.is_factored:  # row_mean, col_mean
            x = values[ins.args[0].id]
            value = factored_mean(ins.attr, x, np.shape(x), dtype)
        elif ins.op == "reduce":
            value = np.float64(reduce_values(ins.attr, np.ravel(values[ins.args[0].id])))
        elif ins.out.type.is_factored:
            value = factored_op(ins, [values[a.id] for a in ins.args])
        elif ins.op == "copy" and ins.out.type.is_tensor:  # also fills with a host scalar
            value = _as_dtype(values[ins.args[0].id], dtype)
            value = np.broadcast_to(value, np.shape(buffers["p"])).copy()
        elif ins.op == "copy":
            value = values[ins.args[0].id]
        else:
            args = [values[a.id] for a in ins.args]
            if ins.out.type.is_tensor:
                args = [_as_dtype(a, dtype) for a in args]
            if ins.op == "where" and not ins.out.type.is_tensor:
                value = args[1] if args[0] else args[2]
            else:
                value = ops.apply(ins.op, *args)
            if ins.out.type.is_tensor:
                value = np.asarray(value)
                if ins.out.type.elem == "float":
                    value = value.astype(dtype, copy=False)
                value = np.broadcast_to(value, np.shape(buffers["p"])).copy()
            elif ins.out.type.elem == "float":
                value = np.float64(value)
            elif ins.out.type.elem == "bool":
                value = bool(value)
        values[ins.out.id] = value
    out = {}
    for name, var in program.outputs:
        if not var.type.is_tensor:
            raise InternalCompilerError(f"output {name} is not elementwise")
        out[name] = values[var.id]
    for name, var in program.scalar_outputs:  # scalar states' new values
        out[name] = np.float64(values[var.id])
    for name, var in program.factored_outputs:  # row and column states' new values
        old = np.asarray(buffers[name])
        out[name] = np.broadcast_to(np.asarray(values[var.id], dtype=old.dtype),
                                    old.shape).copy()
    return out


def _per_parameter(key: str, buffers: dict[str, Any]) -> Any:
    """A ``scalar`` leaf: the parameter's size, or a scalar state (a number in
    ``buffers``). Reductions are computed here, so their results are never leaves."""
    if key == "numel":
        return np.float64(np.size(buffers["p"]))
    if key == "factored":
        return np.ndim(buffers["p"]) >= 2
    if key == "dtype_eps":
        return np.float64(np.finfo(np.asarray(buffers["p"]).dtype).eps)
    if key.startswith("state:"):
        value = buffers[key[len("state:"):]]
        return value if np.ndim(value) else np.float64(value)  # a row or column state
    raise InternalCompilerError(f"interpret() takes a lowered program, not a stage ({key})")


def _as_dtype(value: Any, dtype: np.dtype) -> Any:
    """Host floats meet tensors in the tensor's dtype, and so do row and column values,
    as the kernel reads them (broadcast into a buffer of its dtype); bools and tensors
    pass through."""
    if isinstance(value, np.floating):
        return dtype.type(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.dtype != dtype:
        return value.astype(dtype)
    return value
