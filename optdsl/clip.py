"""Gradient clipping with torch.nn.utils' semantics, over NumPy or CuPy gradients.

    total = optdsl.clip_grad_norm_(params, max_norm=1.0)   # g *= min(1, max_norm / (|g| + 1e-6))
    optdsl.clip_grad_value_(params, clip_value=0.5)        # g = clamp(g, -0.5, 0.5)

The total norm is the ``norm_type``-norm of all gradients viewed as one vector:
``||(||g_1||, ..., ||g_n||)||_p``, which for every p > 0 equals the p-norm of the
gradients laid end to end. Gradients that lie end to end in one buffer (as
:func:`optdsl.flatten` leaves them) are therefore read as that one buffer: one reduction
per buffer, not one per tensor. Only the rounding differs from torch's per-tensor order
(see :func:`clip_grad_norm_` for the tolerance).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import arrays
from .errors import HyperError, HyperTypeError, NonFiniteNormError
from .sparse import RowSparse

# Elements reduced at a time on the host: bounds the temporaries |g| and |g|**p.
_CHUNK = 1 << 17


def clip_grad_norm_(params: Any, max_norm: float, norm_type: float | str = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None
                    ) -> np.floating:
    r"""Scale the gradients of ``params`` in place so that their total norm is at most
    ``max_norm``; return the total norm from before clipping.

    .. math::
        N = \Big\| \big(\|g_1\|_p, \dots, \|g_n\|_p\big) \Big\|_p, \qquad
        g_i \leftarrow g_i \cdot \min\!\Big(\frac{\text{max\_norm}}{N + 10^{-6}},\ 1\Big)

    ``params``: one parameter or an iterable of them (objects with array attributes
    ``.data`` and ``.grad``); params whose ``grad`` is None are skipped. An
    :class:`optdsl.RowSparse` gradient counts as its dense equivalent: it is coalesced in
    place and its values are scaled. ``norm_type`` is
    p: any float (``inf``, ``-inf``, ``0`` and ``"inf"`` included, as torch takes them).

    As torch's: the coefficient is computed in the norm's dtype as torch does
    (``max_norm * (1 / (N + 1e-6))``), clamped to 1, and every gradient is multiplied by
    it in its own dtype (a coefficient of exactly 1 changes no bit, so it is not applied);
    a nan or inf norm multiplies the gradients by nan or 0 unless ``error_if_nonfinite``
    raises :class:`NonFiniteNormError` (a RuntimeError) first, changing nothing.

    Returns a NumPy scalar of the gradients' dtype (the promoted one for mixed dtypes;
    ``np.float32(0.0)`` with no gradients, as torch's ``tensor(0.)``), where torch returns
    a 0-d tensor. It equals torch's to float rounding: relative 1e-5 for float32 and
    1e-12 for float64 (inf, -inf norms: exactly), because one reduction per flat buffer
    sums in another order than torch's per-tensor norms.

    Differences from torch: a negative or nan ``max_norm`` raises :class:`HyperError`
    (torch flips the gradients' sign); ``foreach`` is accepted and ignored."""
    max_norm = _number("max_norm", max_norm, "clip_grad_norm_")
    p = _norm_type(norm_type)
    grads = _grads(params)
    norm = total_norm(grads, p)
    if error_if_nonfinite and not math.isfinite(norm):
        raise NonFiniteNormError(
            f"clip_grad_norm_: the total norm of order {p} of the gradients is non-finite "
            f"({norm}), so it cannot be clipped; to scale the gradients by the non-finite "
            "norm anyway, pass error_if_nonfinite=False")
    scale_(grads, clip_coefficient(max_norm, norm))
    return norm


def clip_grad_value_(params: Any, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp the gradients of ``params`` in place to ``[-clip_value, clip_value]`` (the
    bound rounded to each gradient's dtype; a nan stays nan), as torch's. Params whose
    grad is None are skipped; an :class:`optdsl.RowSparse` gradient is coalesced in place
    and its values clamped. A negative or nan ``clip_value`` raises :class:`HyperError`
    (torch sets every gradient to ``clip_value`` then)."""
    clip_value = _number("clip_value", clip_value, "clip_grad_value_")
    for run in _runs(_grads(params)):
        bound = run.dtype.type(clip_value)
        with arrays.on_device(run):
            run.clip(-bound, bound, out=run)


def total_norm(grads: list, p: float) -> np.floating:
    """The ``p``-norm of ``grads`` viewed as one vector, as a scalar of their dtype."""
    if not grads:
        return np.float32(0.0)
    dtype = np.result_type(*[g.dtype for g in grads])
    if math.isinf(p) and any(g.size == 0 for g in grads):
        raise NonFiniteNormError(f"clip_grad_norm_: the {p} norm of an empty gradient is "
                                 "undefined (a max or min over no elements), as in torch")
    if p == 0:  # not additive: torch counts the tensors with a non-zero element
        parts = [float(_reduce(g.reshape(-1), 0.0)) for g in grads]
        return dtype.type(sum(x != 0 for x in parts))
    parts = [_reduce(run, p) for run in _runs(grads)]
    with np.errstate(all="ignore"):
        if any(map(math.isnan, parts)):
            return dtype.type(math.nan)
        if p == math.inf:
            return dtype.type(max(parts))
        if p == -math.inf:
            return dtype.type(min(parts))
        total = math.fsum(parts)
        return dtype.type(math.sqrt(total) if p == 2 else total if p == 1
                          else total ** (1.0 / p))


def clip_coefficient(max_norm: float, norm: np.floating) -> np.floating:
    """``min(max_norm / (norm + 1e-6), 1)`` in the norm's dtype, rounded as torch rounds it
    (``Tensor.__rtruediv__`` is ``reciprocal() * other``)."""
    kind = type(norm)
    with np.errstate(all="ignore"):
        coef = kind(max_norm) * (kind(1.0) / (norm + kind(1e-6)))
    return coef if coef <= 1.0 else kind(1.0) if not math.isnan(coef) else coef


def scale_(grads: list, coef: np.floating) -> None:
    """Multiply every gradient by ``coef`` (rounded to its dtype) in place, one flat
    buffer at a time; nothing to do for exactly 1."""
    if coef == 1.0:
        return
    for run in _runs(grads):
        with arrays.on_device(run), np.errstate(all="ignore"):
            run *= run.dtype.type(coef)


def _reduce(run: Any, p: float) -> float:
    """Sum of |x|**p over ``run`` (max or min of |x| for inf, -inf; count of non-zeros
    for 0), as a float: in the run's dtype (float32 for narrower ones), chunk by chunk."""
    partials = []
    step = run.size if arrays.is_cupy(run) else _CHUNK
    with arrays.on_device(run), np.errstate(all="ignore"):
        for start in range(0, max(run.size, 1), step):
            chunk = run[start: start + step]
            if chunk.dtype.itemsize < 4:
                chunk = chunk.astype(np.float32)
            if not chunk.size:
                partials.append(0.0)
            elif p == 2:
                partials.append(float(chunk.dot(chunk)))
            elif p == 0:
                partials.append(float((chunk != 0).sum()))
            else:
                a = abs(chunk)
                value = a.max() if p == math.inf else a.min() if p == -math.inf \
                    else a.sum() if p == 1 else (a ** chunk.dtype.type(p)).sum()
                partials.append(float(value))
    if any(map(math.isnan, partials)):
        return math.nan
    if p == math.inf:
        return max(partials)
    if p == -math.inf:
        return min(partials)
    return math.fsum(partials)


def _runs(grads: list) -> list:
    """The gradients as flat arrays to reduce or scale in place: gradients that lie end to
    end in one C-contiguous buffer (flattened params, a plan's runs) become one view of
    it; any other gradient is its own (itself, when not contiguous: in-place ops work on
    any layout). Sorted by buffer and address, so the same memory gives the same runs in
    the same order however the list was cut (bit-identical norms)."""
    flat, other = [], []
    for g in grads:
        if not g.size:
            continue
        owner = g if g.base is None else g.base
        if g.flags.c_contiguous and arrays.is_array(owner) and owner.flags.c_contiguous \
                and owner.dtype == g.dtype:
            start = arrays.address(g)
            flat.append((id(owner), start, start + g.nbytes, owner, g))
        else:
            other.append(g)
    flat.sort(key=lambda item: (item[0], item[1]))
    merged: list[list] = []
    for key, start, stop, owner, g in flat:
        last = merged[-1] if merged else None
        if last is not None and last[0] == key and last[2] == start:
            last[2] = stop
        else:
            merged.append([key, start, stop, owner, g])
    out = []
    for _, start, stop, owner, g in merged:
        if stop - start == g.nbytes:
            out.append(g.reshape(-1))
            continue
        whole = owner.reshape(-1)
        offset = (start - arrays.address(whole)) // g.itemsize
        out.append(whole[offset: offset + (stop - start) // g.itemsize])
    return out + other


def _grads(params: Any) -> list:
    """The gradient arrays of one param or an iterable of them, None skipped."""
    if hasattr(params, "grad") and hasattr(params, "data"):
        params = [params]
    elif arrays.is_array(params):
        raise HyperTypeError("clipping takes parameters (objects with .data and .grad, "
                             "such as optdsl.Param), not arrays")
    grads = []
    for p in params:
        if not (hasattr(p, "grad") and hasattr(p, "data")):
            raise HyperTypeError(f"clipping takes parameters (objects with .data and .grad, "
                                 f"such as optdsl.Param), got {type(p).__name__}")
        g = p.grad
        if g is None:
            continue
        if isinstance(g, RowSparse):
            # Its rows, summed first (a norm or a clamp of duplicates apart would not be
            # the dense gradient's); scaled and clamped in place as a dense one.
            g = g.coalesce_().values
            if not g.size:
                continue  # no rows: a zero gradient, as dense (even for the inf-norms)
        if not arrays.is_array(g) or not arrays.is_float(g.dtype):
            raise HyperTypeError(f"clipping: a gradient must be a floating-point NumPy or "
                                 f"CuPy array, got {arrays.describe(g)}")
        grads.append(g)
    return grads


def _number(name: str, value: Any, where: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)) \
            or isinstance(value, np.complexfloating):
        raise HyperTypeError(f"{where}: {name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise HyperError(f"{where}: {name} must be >= 0, got {value}")
    return value


def _norm_type(value: Any) -> float:
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise HyperTypeError(f"clip_grad_norm_: norm_type must be a number such as 2.0 "
                             f"or 'inf', got {value!r}") from None


def check_max_grad_norm(value: Any, where: str) -> float | None:
    """The optimizer's ``max_grad_norm`` (or a group's), validated: None or a number >= 0."""
    return None if value is None else _number("max_grad_norm", value, where)
