"""What each IR operation computes: one NumPy callable per op.

This table is the single definition of the arithmetic. Generated host code, generated
kernels (through the ufunc names in :data:`UFUNC`), constant folding and the reference
interpreter all use it, which is why a kernel can be compared bit for bit with the
interpreter. Host scalars are ``numpy.float64``, so division by zero gives inf/nan as on
the device instead of raising as Python floats do.
"""

from __future__ import annotations

import numpy as np

# op -> name of the NumPy ufunc that computes it (kernels call these with ``out=``).
UFUNC = {
    "add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "mod": "remainder",
    "pow": "power",
    "min": "minimum", "max": "maximum", "neg": "negative", "sqrt": "sqrt", "exp": "exp",
    "log": "log", "abs": "absolute", "sign": "sign", "floor": "floor", "cos": "cos",
    "sin": "sin", "tanh": "tanh", "lt": "less", "le": "less_equal", "gt": "greater",
    "ge": "greater_equal", "eq": "equal", "ne": "not_equal", "and": "logical_and",
    "or": "logical_or", "not": "logical_not",
}


def rsqrt(x, out=None):
    """1 / sqrt(x), as two correctly rounded steps (the kernels do the same)."""
    r = np.sqrt(x, out=out)
    return np.divide(1.0, r, out=r if out is not None else None)


def where(cond, a, b):
    return np.where(cond, a, b)


def text(codepoints: tuple[int, ...]) -> str:
    """Rebuild a string that generated code carries as numbers (never as source text)."""
    return "".join(map(chr, codepoints))


def streq(a: str, b: str) -> bool:
    return a == b


def count(items: tuple, x) -> np.float64:
    """How many of ``items`` equal ``x`` (the schedule function ``count``)."""
    return np.float64(sum(1 for item in items if item == x))


FUNCS = {op: getattr(np, name) for op, name in UFUNC.items()}
FUNCS["rsqrt"] = rsqrt
FUNCS["where"] = where


def apply(op: str, *args):
    """Compute ``op`` on host scalars or arrays. Strings compare as strings."""
    if op in ("eq", "ne") and isinstance(args[0], str):
        return (args[0] == args[1]) == (op == "eq")
    with np.errstate(all="ignore"):
        return FUNCS[op](*args)


def quiet(fn):
    """``fn`` with NumPy's floating-point warnings off: host code and kernels produce inf
    and nan as the device would, without warnings (or exceptions under ``-W error``)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper
