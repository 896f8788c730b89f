"""Row-sparse gradients: a gradient that is non-zero only in some rows of its parameter.

    emb = optdsl.Param(np.zeros((50_000, 64), np.float32), name="emb")
    emb.grad = optdsl.RowSparse(np.array([3, 17, 3]), rows)   # rows: shape (3, 64)
    opt.step()

A row is a slice along a parameter's first axis. Duplicate rows are summed (as torch's
``coalesce``), in the order given, so a step is deterministic. How an optimizer steps on
one (see docs/sparse.md):

- by default, as on the equivalent dense gradient (zeros outside the given rows): the
  gradient is densified into a parameter-shaped scratch and the parameter steps as usual;
- lazily (``lazy=True``, or a param group's ``"lazy"`` key; always for
  ``optdsl.optim.SparseAdam``): the same compiled kernel runs on the given rows only, and
  every other row of the parameter and of its state keeps its value. The parameter's
  ``step`` still counts every step, as torch.optim.SparseAdam's does.

The runtime calls :func:`check_grad` while it checks a step's input, and
:func:`step_group` for a param group some of whose gradients are row-sparse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import arrays
from .errors import HyperTypeError, SparseGradientError, SparseGradientTypeError


class RowSparse:
    """A gradient that is ``values[k]`` in row ``indices[k]`` of its parameter, and zero in
    every other row; rows named more than once add up.

    ``indices``: a 1-D integer array (NumPy, or CuPy on the parameter's GPU) of row
    numbers in ``[0, p.shape[0])``. ``values``: an array of the parameter's dtype and
    kind (NumPy, or CuPy on the same GPU) of shape ``(len(indices), *p.shape[1:])``.
    Lists are taken for ``indices`` and converted. Both are checked against the parameter
    by ``step()``.

    ``step()`` and clipping first :meth:`coalesce_` the gradient: ``indices`` becomes
    sorted and unique and ``values`` the rows summed (new arrays when that changes
    anything; the arrays given are never written to by coalescing). Clipping then scales
    or clamps ``values`` in place, as it does a dense gradient.
    """

    __slots__ = ("indices", "values")

    def __init__(self, indices: Any, values: Any):
        if isinstance(indices, (list, tuple, range)):
            indices = np.asarray(indices, dtype=np.int64 if len(indices) == 0 else None)
        self.indices = indices
        self.values = values

    @property
    def dtype(self) -> np.dtype:
        """The values' dtype (a gradient's must be its parameter's)."""
        return self.values.dtype

    def __repr__(self) -> str:
        rows = getattr(self.indices, "shape", None)
        rows = rows[0] if rows else "?"
        shape = tuple(getattr(self.values, "shape", ()))
        return f"RowSparse(rows={rows}, values={arrays.describe(self.values)} of shape {shape})"

    def is_coalesced(self) -> bool:
        """Whether ``indices`` is strictly increasing: sorted, with no row twice."""
        _check_structure(self)
        idx = arrays.to_numpy(self.indices)
        return bool(np.all(idx[1:] > idx[:-1]))

    def coalesce(self) -> RowSparse:
        """The same gradient with sorted, unique ``indices`` (``self`` when it has them).

        Duplicates are summed in the order they are given, starting from zero, so the same
        input gives the same bits every time, on the host and on a GPU alike."""
        if self.is_coalesced():
            return self
        idx = arrays.to_numpy(self.indices)
        rows, inverse = np.unique(idx, return_inverse=True)
        inverse = inverse.reshape(-1)
        values = self.values
        xp = arrays.module(values)
        with arrays.on_device(values):
            if len(rows) == len(idx):  # no duplicates: only the order changes
                summed = values[_on(values, np.argsort(inverse, kind="stable"))]
            elif xp is np:
                summed = np.zeros((len(rows), *values.shape[1:]), values.dtype)
                np.add.at(summed, inverse, values)  # unbuffered, in index order
            else:
                summed = _segment_sum(values, inverse, len(rows))
            return RowSparse(_on(values, rows.astype(idx.dtype, copy=False)), summed)

    def coalesce_(self) -> RowSparse:
        """Coalesce in place: rebind ``indices`` and ``values`` to :meth:`coalesce`'s."""
        done = self.coalesce()
        self.indices, self.values = done.indices, done.values
        return self

    def to_dense(self, shape: tuple[int, ...]) -> Any:
        """The equivalent dense gradient of a parameter of ``shape``: zeros, then the
        (summed) rows; an array of the values' kind and device."""
        done = self.coalesce()
        values = done.values
        dense = arrays.zeros(int(np.prod(shape)), values.dtype, values).reshape(shape)
        with arrays.on_device(values):
            dense[done.indices] = values
        return dense


def _on(like: Any, host: np.ndarray) -> Any:
    """A host index array as ``like``'s module indexes with (a CuPy array on its GPU)."""
    if not arrays.is_cupy(like):
        return host
    import cupy

    with arrays.on_device(like):
        return cupy.asarray(host)


def _segment_sum(values: Any, inverse: np.ndarray, n: int) -> Any:
    """``np.add.at(zeros((n, ...)), inverse, values)`` without atomics (whose order, and so
    whose rounding, a GPU does not fix): pass ``r`` adds each output row's ``r``-th
    occurrence, in input order; within a pass no row is written twice. As many passes as
    the most repeated row has occurrences. Bit-identical to ``np.add.at``."""
    order = np.argsort(inverse, kind="stable")
    ordered = inverse[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, len(ordered)])
    rank = np.arange(len(ordered)) - np.repeat(starts, counts)
    xp = arrays.module(values)
    out = xp.zeros((n, *values.shape[1:]), values.dtype)
    for r in range(int(counts.max(initial=0))):
        take = order[rank == r]
        out[_on(values, inverse[take])] += values[_on(values, take)]
    return out


def _check_structure(grad: RowSparse, where: str | None = None) -> None:
    """What a RowSparse must be whatever its parameter: 1-D integer indices, values with
    one row per index. ``where`` starts the message (the param, in a step)."""
    idx, values = grad.indices, grad.values
    where = "" if where is None else f"{where}: "
    if not arrays.is_array(idx):
        raise SparseGradientTypeError(f"{where}RowSparse indices must be a NumPy or CuPy "
                                      f"integer array, got {type(idx).__name__}")
    if idx.dtype.kind not in "iu":
        raise SparseGradientTypeError(f"{where}RowSparse indices must be integers, got "
                                      f"dtype {idx.dtype}")
    if idx.ndim != 1:
        raise SparseGradientError(f"{where}RowSparse indices must be 1-D (one row number "
                                  f"per row of values), got shape {tuple(idx.shape)}")
    if not arrays.is_array(values):
        raise SparseGradientTypeError(f"{where}RowSparse values must be a NumPy or CuPy "
                                      f"array, got {type(values).__name__}")
    if values.ndim < 1 or values.shape[0] != idx.shape[0]:
        raise SparseGradientError(f"{where}RowSparse values of shape "
                                  f"{tuple(values.shape)} do not have one row per index "
                                  f"({idx.shape[0]} indices)")
    if arrays.is_cupy(idx) and (not arrays.is_cupy(values)
                                or arrays.device(idx) != arrays.device(values)):
        raise SparseGradientError(f"{where}RowSparse indices ({arrays.describe(idx)}) "
                                  "must be a NumPy array or live where the values do "
                                  f"({arrays.describe(values)})")


# --- what the runtime calls ----------------------------------------------------------------

def check_lazy(value: Any, where: str) -> bool:
    """An optimizer's ``lazy`` keyword or a group's ``"lazy"`` key: True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise HyperTypeError(f"{where}: lazy must be True or False, got {value!r}")
    return bool(value)


def resolve_lazy(cls: type, lazy: bool | None) -> bool:
    """The constructor's ``lazy`` (None: the class's default). A sparse-only optimizer
    (``optdsl.optim.SparseAdam``) steps lazily and cannot be told otherwise."""
    name = cls.__name__
    if lazy is None:
        return bool(cls.sparse_only)
    lazy = check_lazy(lazy, name)
    if cls.sparse_only and not lazy:
        raise HyperTypeError(f"{name}: lazy=False is not possible: {name} steps only the "
                             "rows of RowSparse gradients; for dense steps use Adam")
    _refuse_per_parameter(cls, lazy, name)
    return lazy


def _refuse_per_parameter(cls: type, lazy: bool, where: str) -> None:
    """Lazy steps see only the named rows: no whole-parameter reduction, and a scalar
    state would advance on a part of the parameter."""
    if lazy and cls._spec.per_parameter:
        raise HyperTypeError(f"{where}: lazy=True is not possible: {cls.__name__}'s rule "
                             "reduces over whole parameters or keeps scalar states, which "
                             "a step of some rows cannot compute; leave lazy off to step "
                             "on the densified gradient")


def group_lazy(opt: Any, index: int, group: dict | None = None) -> bool:
    """Whether param group ``index`` (``group``, before it is added) steps RowSparse
    gradients lazily: its ``"lazy"`` key, validated, else the optimizer's ``lazy``."""
    group = opt.param_groups[index] if group is None else group
    if "lazy" not in group:
        return opt.lazy
    where = f"{type(opt).__name__}: param group {index}"
    lazy = check_lazy(group["lazy"], where)
    if opt.sparse_only and not lazy:
        raise HyperTypeError(f"{where}: lazy=False is not possible: "
                             f"{type(opt).__name__} steps only the rows of RowSparse "
                             "gradients")
    _refuse_per_parameter(type(opt), lazy, where)
    return lazy


def check_grad(opt: Any, index: int, p: Any) -> None:
    """``step()``'s check of a RowSparse gradient against its parameter (and, for a
    sparse-only optimizer, its refusal of any other gradient). Coalesces the gradient
    in place: everything after (clipping, the non-finite check, the step) reads the
    coalesced rows."""
    where = opt._where(index, p)
    data, grad = p.data, p.grad
    name = type(opt).__name__
    if not isinstance(grad, RowSparse):
        raise SparseGradientTypeError(
            f"{where}: {name} does not support dense gradients (got "
            f"{arrays.describe(grad)}); give it an optdsl.RowSparse gradient, or use Adam")
    group_lazy(opt, index)
    shape = tuple(np.shape(data))
    if not shape:
        raise SparseGradientError(f"{where}: a RowSparse gradient needs a parameter with "
                                  "rows (at least one dimension); this parameter is 0-d")
    _check_structure(grad, where)
    values = grad.values
    if values.dtype != data.dtype:
        raise SparseGradientTypeError(f"{where}: RowSparse values dtype {values.dtype} does "
                                      f"not match parameter dtype {data.dtype}")
    if arrays.is_cupy(values) != arrays.is_cupy(data) \
            or arrays.device(values) != arrays.device(data):
        raise SparseGradientError(f"{where}: the RowSparse values ({arrays.describe(values)}) "
                                  f"do not live where the parameter does "
                                  f"({arrays.describe(data)})")
    want = (grad.indices.shape[0], *shape[1:])
    if tuple(values.shape) != want:
        raise SparseGradientError(f"{where}: RowSparse values shape {tuple(values.shape)} "
                                  f"does not match {want} (one row of the parameter of shape "
                                  f"{shape} per index)")
    grad.coalesce_()
    rows = arrays.to_numpy(grad.indices)
    if rows.size and (rows[0] < 0 or rows[-1] >= shape[0]):
        bad = rows[0] if rows[0] < 0 else rows[-1]
        raise SparseGradientError(f"{where}: RowSparse row index {bad} is out of range for a "
                                  f"parameter of {shape[0]} rows (0 to {shape[0] - 1})")


def has_row_sparse(params: list[Any]) -> bool:
    return any(isinstance(p.grad, RowSparse) for p in params)


def grad_array(grad: Any) -> Any:
    """The array clipping and the non-finite check read for a gradient: a RowSparse's
    (coalesced) values, else the gradient itself."""
    return grad.values if isinstance(grad, RowSparse) else grad


def step_group(opt: Any, index: int, live: list[Any], values: dict, backend: Any) -> None:
    """Step a param group some of whose gradients are RowSparse, param by param (no plan:
    the rows differ from step to step). Dense gradients step as usual."""
    enabled = opt._spec.host["state_enabled"](values)
    lazy = group_lazy(opt, index)
    cache: dict[tuple, tuple] = {}
    for p in live:
        with arrays.on_device(p.data):
            if not isinstance(p.grad, RowSparse):
                opt._step_param(index, p, values, enabled, backend, cache)
            elif lazy:
                _step_rows(opt, index, p, values, enabled, backend, cache)
            else:
                _step_densified(opt, index, p, values, enabled, backend, cache)


def _step_densified(opt, index, p, values, enabled, backend, cache) -> None:
    """Step ``p`` exactly as on the equivalent dense gradient."""
    sparse = p.grad
    # The param's ordinary step reads p.grad: lend it the dense scratch for that step.
    p.grad = sparse.to_dense(tuple(np.shape(p.data)))
    try:
        opt._step_param(index, p, values, enabled, backend, cache)
    finally:
        p.grad = sparse


def _step_rows(opt, index, p, values, enabled, backend, cache) -> None:
    """Run ``p``'s kernel on the rows its (coalesced) RowSparse gradient names: gather
    those rows of the parameter and of each state the kernel reads into contiguous
    temporaries, step them, scatter them back. The state is made as a dense step makes
    it (:meth:`Optimizer._prepare_state`); the step count advances by one."""
    data, grad = p.data, p.grad
    st = opt.state[p]
    t = st.get("step", 0) + 1
    dtype = np.dtype(data.dtype)
    kernel, args, _ = opt._kernel(values, t, dtype, backend, cache)
    layout = opt._prepare_state(index, p, values, enabled, kernel)
    if grad.indices.shape[0]:
        rows = _on(data, arrays.to_numpy(grad.indices))
        # An fp32 master copy (master_weights) stands in for a narrow param as the
        # kernel's p, and the param gets its new values rounded (as Optimizer._launch's
        # mirror does for a dense step).
        master = "master" in layout.names
        states = [b for b in kernel.buffers if b not in ("p", "g") and ":" not in b]
        states += ["master"] if master and "master" not in states else []
        # C-contiguous copies (as fancy indexing need not give), so that the flat views
        # the kernel writes through are views of them.
        gathered = {s: arrays.ascontiguous(layout.view(s, p)[rows]) for s in states}
        # Extra outputs (diagnostics, "KIND:NAME"): zero outside the rows, which did not
        # step (no update, no dependence on a hyper).
        extras = [b for b in kernel.buffers if ":" in b]
        extra = opt._extra_layout(index, layout, kernel) if extras else None
        for b in extras:
            gathered[b] = arrays.ascontiguous(extra.view(b, p)[rows])
        param_rows = arrays.ascontiguous(data[rows])
        gathered["p"] = gathered["master"] if master else param_rows
        gathered["g"] = arrays.ascontiguous(grad.values)
        mirror = param_rows.reshape(-1) if master and "p" in kernel.outputs else None
        opt._launch(kernel, backend, param_rows.size,
                    [gathered[b].reshape(-1) for b in kernel.buffers], args, dtype, mirror)
        written = {"master" if master and b == "p" else b for b in kernel.outputs}
        if "p" in kernel.outputs:
            data[rows] = param_rows
        for s in states:
            if s in written:
                layout.view(s, p)[rows] = gathered[s]
        for b in extras:
            whole = extra.view(b, p)
            whole[...] = 0
            whole[rows] = gathered[b]
    else:  # no rows stepped: the extra outputs say so (not last step's values)
        extra = opt._extra_layout(index, layout, kernel)
        for b in (b for b in kernel.buffers if ":" in b):
            extra.view(b, p)[...] = 0
    st["step"] = t
