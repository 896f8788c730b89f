"""What each step did, per parameter and per param group: ``diagnostics=True``.

    opt = Adam(params, lr=1e-3, diagnostics=True)   # or opt.diagnostics_enabled = True
    opt.step()
    d = opt.diagnostics()                            # a Diagnostics
    d.groups[0].update_ratio, d.param("w").tracks["effective_lr"].mean
    with JSONLLogger("runs/diag.jsonl", every=10) as log:
        ...
        log.log(opt)                                 # then: optdsl plot-diagnostics

With diagnostics on, the runtime asks every kernel for two extra outputs (see
:mod:`optdsl.extras`): ``diag:update`` (new p - old p, of the fp32 master where there is
one) and each ``track NAME = EXPR`` the kernel's path reaches (``track:NAME``). They are
written in the same fused pass as the update. After every step, skipped ones included,
the runtime calls :func:`collect`, which reduces the gradients, the parameters and those
outputs in float64: host arrays chunk by chunk (small ones in batches, large ones over
the thread pool), GPU arrays on their GPU:

- norms (2-norms, sums of squares in float64): of the gradient, of the parameter after
  the step (as stored, e.g. float16), and of the update; the update/param ratio;
- counts of non-finite elements of each;
- min, mean and max of each track the step wrote (NumPy's semantics: a nan gives nan);
- a histogram of the gradient's finite values in :data:`BINS` equal bins over the finite
  range of its group's gradients, with the nans, +infs and -infs counted apart.

Per group, the same over all of the group's stepped params together. See
docs/diagnostics.md.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import arrays
from .backend import pool
from .errors import OptdslError
from .sparse import RowSparse, group_lazy

# Bins of every gradient histogram.
BINS = 32

# Elements per chunk of a host reduction: float64 scratch of 512 KiB, an L2 cache here.
CHUNK = 1 << 16

# Arrays smaller than this are reduced in batches (see _scan_many).
SMALL = 1 << 13

# Elements per thread below which an array is reduced on the calling thread alone. Higher
# than the kernels' (pool.MIN_ELEMENTS_PER_THREAD): a step reduces several arrays one after
# the other, each a hand-off to the pool and a wait, and on a machine busy with other work
# (2 cores, 4M params in 8 tensors) two threads took longer than one below about this.
PARALLEL_MIN = 1 << 20

# The version of the dicts to_dict gives (and of a JSONL record), for readers.
FORMAT = 1


class DiagnosticsError(OptdslError, RuntimeError):
    """Diagnostics asked for where there are none: turned off, or no step since they were
    turned on; or a diagnostics log that cannot be read."""


# --- the result ------------------------------------------------------------------------

@dataclass(frozen=True)
class Histogram:
    """Counts of a gradient's finite values in :data:`BINS` equal bins (``edges``, one
    more than the counts; None when the group has no finite value), from the smallest to
    the largest finite gradient value of the param group: a group's params share its
    bins, and their counts add up to the group's. Bin k holds ``edges[k] <= x <
    edges[k+1]``, the last one its right edge too, as ``np.histogram(x, BINS,
    range=(min, max))`` (up to values within a rounding error of an edge); a single
    value v gets the range ``(v - 0.5, v + 0.5)``, as NumPy gives it. nans and
    infinities are not binned but counted."""

    counts: tuple[int, ...]
    edges: tuple[float, ...] | None
    nan: int = 0
    posinf: int = 0
    neginf: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, as :meth:`Diagnostics.to_dict` gives them."""
        return {"counts": list(self.counts),
                "edges": None if self.edges is None else list(self.edges),
                "nan": self.nan, "posinf": self.posinf, "neginf": self.neginf}


@dataclass(frozen=True)
class TrackStats:
    """Min, mean and max of one tracked value over the elements the step wrote it for
    (a nan anywhere gives nan, as NumPy's do); ``nonfinite`` counts nans and infs."""

    min: float
    mean: float
    max: float
    nonfinite: int
    size: int

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, as :meth:`Diagnostics.to_dict` gives them."""
        return {"min": self.min, "mean": self.mean, "max": self.max,
                "nonfinite": self.nonfinite, "size": self.size}


@dataclass(frozen=True)
class Stats:
    """What one step did to a parameter, or to a param group's stepped params together.

    ``grad_norm``, ``param_norm`` (after the step, as stored) and ``update_norm`` are
    2-norms (nan if a value is nan, inf if one is inf); ``update_ratio`` is update norm /
    param norm (0 for no update, inf for an update of a zero param, nan when either norm
    is nan). ``nonfinite`` counts the non-finite elements of ``"grad"``, ``"param"`` and
    ``"update"``. A skipped step has an update of 0 and no tracks."""

    size: int
    grad_norm: float
    param_norm: float
    update_norm: float
    update_ratio: float
    nonfinite: dict[str, int]
    tracks: dict[str, TrackStats]
    grad_histogram: Histogram

    def _fields(self) -> dict[str, Any]:
        return {"size": self.size, "grad_norm": self.grad_norm,
                "param_norm": self.param_norm, "update_norm": self.update_norm,
                "update_ratio": self.update_ratio, "nonfinite": dict(self.nonfinite),
                "tracks": {k: v.to_dict() for k, v in self.tracks.items()},
                "grad_histogram": self.grad_histogram.to_dict()}


@dataclass(frozen=True)
class ParamStats(Stats):
    """:class:`Stats` of one parameter: ``label`` is its name, or ``group G param I``."""

    label: str = ""
    group: int = 0
    index: int = 0
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, as :meth:`Diagnostics.to_dict` gives them."""
        return {"label": self.label, "group": self.group, "index": self.index,
                "shape": list(self.shape), "dtype": self.dtype, **self._fields()}


@dataclass(frozen=True)
class GroupStats(Stats):
    """:class:`Stats` of one param group's stepped params together (``params`` of them),
    with the group's ``lr`` and its hypers that are numbers, booleans or tuples of
    numbers."""

    index: int = 0
    params: int = 0
    lr: float | None = None
    hypers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, as :meth:`Diagnostics.to_dict` gives them."""
        return {"group": self.index, "params": self.params, "lr": self.lr,
                "hypers": dict(self.hypers), **self._fields()}


@dataclass(frozen=True)
class Diagnostics:
    """One step's diagnostics (:meth:`Optimizer.diagnostics`).

    ``step``: the step count of the params after this step (the largest, where they
    differ; unchanged by a skipped step). ``skipped``: whether ``skip_nonfinite``
    skipped it, and ``skipped_steps`` how many it has skipped in all. ``groups`` and
    ``params`` hold the param groups that had a gradient and their params, in order."""

    optimizer: str
    step: int
    skipped: bool
    skipped_steps: int
    groups: tuple[GroupStats, ...]
    params: tuple[ParamStats, ...]
    # The step count total of the optimizer when collected: require() tells from it
    # whether a step has run since (with diagnostics off, which collects nothing).
    mark: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)
    # The param objects of ``params``, in order, for param() to find one by identity.
    objects: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def param(self, key: Any) -> ParamStats:
        """A param's stats, by label (its name) or by the param object."""
        for stats, obj in zip(self.params, self.objects, strict=False):
            if obj is key or (isinstance(key, str) and stats.label == key):
                return stats
        labels = ", ".join(s.label for s in self.params) or "none"
        raise KeyError(f"no stepped param {key!r} in these diagnostics (params: {labels})")

    def group(self, index: int) -> GroupStats:
        """A group's stats, by its index in ``param_groups``."""
        for stats in self.groups:
            if stats.index == index:
                return stats
        raise KeyError(f"param group {index} did not step (groups: "
                       f"{[g.index for g in self.groups]})")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (dicts, lists, str, int, float, bool, None) that
        ``json.dumps`` writes; non-finite numbers stay floats (``NaN``, ``Infinity``)."""
        return {"format": FORMAT, "optimizer": self.optimizer, "step": self.step,
                "skipped": self.skipped, "skipped_steps": self.skipped_steps,
                "groups": [g.to_dict() for g in self.groups],
                "params": [p.to_dict() for p in self.params]}

    def table(self) -> str:
        """A few columns per group and param, for printing."""
        head = (f"{self.optimizer} step {self.step}" + (" (skipped)" if self.skipped else ""))
        rows = [f"{'':24s} {'grad norm':>10s} {'param norm':>10s} {'update/param':>12s}"]
        for g in self.groups:
            rows.append(_row(f"group {g.index} (lr {_g(g.lr)})", g))
            rows += [_row(f"  {p.label}", p) for p in self.params if p.group == g.index]
        return "\n".join([head, *rows])


def _row(label: str, s: Stats) -> str:
    return f"{label:24s} {_g(s.grad_norm):>10s} {_g(s.param_norm):>10s} " \
           f"{_g(s.update_ratio):>12s}"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


# --- what the runtime calls ------------------------------------------------------------

def require(opt: Any) -> Diagnostics:
    """``opt.diagnostics()``: the last step's :class:`Diagnostics`; raises
    :class:`DiagnosticsError` when diagnostics are off or no step ran since they were
    turned on."""
    name = type(opt).__name__
    if not opt.diagnostics_enabled:
        raise DiagnosticsError(f"{name}: diagnostics are off; build the optimizer with "
                               "diagnostics=True, or set opt.diagnostics_enabled = True, "
                               "then step")
    last = opt._last_diagnostics
    if last is None or last.mark != _mark(opt):
        raise DiagnosticsError(f"{name}: no step has run since diagnostics were turned on; "
                               "call opt.step() first")
    return last


def collect(opt: Any, todo: list) -> Diagnostics:
    """The diagnostics of the step ``opt`` just took (or skipped) over ``todo``: the
    runtime's list of ``(group index, group, live params or None, signature, plan,
    hypers, backend)``, one per group that had a gradient."""
    skipped = bool(opt.last_step_skipped)
    groups, params, objects = [], [], []
    for index, group, live, _, _, values, backend in todo:
        stepped = live if live is not None else [p for p in group["params"]
                                                 if p.grad is not None]
        written: dict[int, tuple[str, ...]] = {}  # by step count, for this group's hypers
        outputs = [() if skipped else _outputs(opt, values, p, backend, written)
                   for p in stepped]
        g_stats, p_stats = _group(opt, index, group, stepped, outputs, skipped, values)
        groups.append(g_stats)
        params += p_stats
        objects += stepped
    steps = [opt.state[p].get("step", 0) for p in objects]
    return Diagnostics(type(opt).__name__, max(steps, default=0), skipped,
                       int(opt.skipped_steps), tuple(groups), tuple(params), _mark(opt),
                       tuple(objects))


def _mark(opt: Any) -> tuple[int, int]:
    """What any step changes: the params' step counts in all, and the skipped steps."""
    total = 0
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                total += int(st.get("step", 0))
    return total, int(opt.skipped_steps)


def _outputs(opt: Any, values: dict, p: Any, backend: Any, cache: dict) -> tuple[str, ...]:
    """The extra outputs the kernel of ``p``'s step wrote: the kernel of the path that its
    group's hypers ``values`` and its step count choose (a host ``if`` may test t), with
    the extras the runtime asked for: the kernel :meth:`Optimizer._kernel` chose, from the
    spec's cache. A track inside a branch the path did not take is not among them: its
    buffer holds an older step's values. ``cache``: by step count, for one group."""
    t = opt.state[p]["step"]
    if t not in cache:
        path = opt._spec.host["decide"](values, t)
        extras = opt._extras()
        kernel = opt._spec.kernel(backend, path, extras) if extras else None
        cache[t] = () if kernel is None else tuple(o for o in kernel.outputs if ":" in o)
    return cache[t]


def _group(opt: Any, index: int, group: dict, stepped: list, outputs: list,
           skipped: bool, values: dict) -> tuple[GroupStats, list[ParamStats]]:
    """The stats of one group's stepped params, and of the group."""
    lazy = any(isinstance(p.grad, RowSparse) for p in stepped) and group_lazy(opt, index)
    grads, updates, tracks = [], [], {}
    for k, (p, out) in enumerate(zip(stepped, outputs, strict=True)):
        grad, rows = p.grad, None
        if isinstance(grad, RowSparse):
            # Its rows (coalesced by the step's checks): the implicit zeros add nothing
            # to a norm and are left out of the histogram. A lazy step wrote its tracks on
            # these rows only (the others read 0), and nothing at all for no row.
            rows = arrays.to_numpy(grad.indices) if lazy else None
            grad = grad.values
        grads.append(grad)
        if rows is not None and rows.size == 0:
            out = ()
        # None when skipped, or nothing stepped: no change
        updates.append(opt.extra_output(p, "diag:update", index) if "diag:update" in out
                       else None)
        for name in out:
            value = opt.extra_output(p, name, index) if name.startswith("track:") else None
            if value is not None:
                tracks.setdefault(name[6:], {})[k] = value if rows is None \
                    else value[_on(value, rows)]
    g = _scan_many(grads, NORM | RANGE)
    d = _scan_many([p.data for p in stepped], NORM)
    u = _scan_many(updates, NORM)
    t = {name: dict(zip(by, _scan_many(list(by.values()), RANGE | SUM), strict=True))
         for name, by in tracks.items()}
    # One set of bins per group, from its gradients' finite min to max: each param's
    # histogram uses them, and the group's is their sum.
    grad = _Scan.combine(g)
    edges = _edges(grad)
    edge_tuple = None if edges is None else tuple(float(e) for e in edges)
    counts = _histogram_many(grads, g, edges)
    position = {id(p): i for i, p in enumerate(group["params"])}
    out = []
    for k, p in enumerate(stepped):
        hist = Histogram(tuple(counts[k].tolist()), edge_tuple, g[k].nan, g[k].posinf,
                         g[k].neginf)
        size = int(np.size(p.data))
        where = position.get(id(p), -1)
        out.append(ParamStats(**_common(size, g[k], d[k], u[k],
                                        {n: by[k] for n, by in t.items() if k in by}, hist),
                              label=_label(p, index, where), group=index, index=where,
                              shape=tuple(int(n) for n in np.shape(p.data)),
                              dtype=_dtype_name(p.data.dtype)))
    total = counts.sum(axis=0) if len(stepped) else np.zeros(BINS, np.int64)
    hist = Histogram(tuple(total.tolist()), edge_tuple, grad.nan, grad.posinf, grad.neginf)
    common = _common(sum(s.size for s in out), grad, _Scan.combine(d), _Scan.combine(u),
                     {n: _Scan.combine(by.values()) for n, by in t.items()}, hist)
    lr = values.get("lr")
    return GroupStats(**common, index=index, params=len(stepped),
                      lr=_plain(lr) if _is_number(lr) else None, hypers=_hypers(values)), out


def _on(like: Any, host: np.ndarray) -> Any:
    if not arrays.is_cupy(like):
        return host
    import cupy

    with arrays.on_device(like):
        return cupy.asarray(host)


@functools.cache
def _dtype_name(dtype: np.dtype) -> str:
    return str(np.dtype(dtype))  # (NumPy works the name out anew each time)


def _label(p: Any, group: int, index: int) -> str:
    name = getattr(p, "name", None)
    return name if isinstance(name, str) and name else f"group {group} param {index}"


def _common(size, grad, param, update, tracks, hist) -> dict[str, Any]:
    gn, pn, un = grad.norm(), param.norm(), update.norm()
    return {"size": size, "grad_norm": gn, "param_norm": pn, "update_norm": un,
            "update_ratio": _ratio(un, pn),
            "nonfinite": {"grad": grad.nonfinite, "param": param.nonfinite,
                          "update": update.nonfinite},
            "tracks": {n: s.track() for n, s in tracks.items()},
            "grad_histogram": hist}


def _ratio(update: float, param: float) -> float:
    """update / param without a warning: 0 for no update, inf for an update of a zero
    param, nan when either is nan."""
    if math.isnan(update) or math.isnan(param):
        return math.nan
    if update == 0:
        return 0.0
    if param == 0:
        return math.inf
    return update / param


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))


def _plain(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(v)


def _hypers(values: dict) -> dict[str, Any]:
    """The hypers that are numbers, booleans or tuples of numbers, as plain values."""
    out = {}
    for k, v in values.items():
        if isinstance(v, (bool, np.bool_)) or _is_number(v):
            out[k] = _plain(v)
        elif isinstance(v, (tuple, list)) and v and all(map(_is_number, v)):
            out[k] = [_plain(x) for x in v]
    return out


# --- reductions ------------------------------------------------------------------------

@dataclass
class _Scan:
    """One pass over an array, in float64: sum of squares, sum, the finite values' min
    and max, and counts of nans, +infs and -infs."""

    size: int = 0
    sumsq: float = 0.0
    total: float = 0.0
    lo: float = math.inf  # of the finite values
    hi: float = -math.inf
    nan: int = 0
    posinf: int = 0
    neginf: int = 0

    @staticmethod
    def combine(scans: Iterable[_Scan]) -> _Scan:
        out = _Scan()
        for s in scans:
            out.size += s.size
            out.sumsq += s.sumsq
            out.total += s.total
            out.lo, out.hi = min(out.lo, s.lo), max(out.hi, s.hi)
            out.nan += s.nan
            out.posinf += s.posinf
            out.neginf += s.neginf
        return out

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    def norm(self) -> float:
        """The 2-norm: nan if a value is nan, else inf if one is infinite."""
        if self.nan:
            return math.nan
        if self.posinf or self.neginf:
            return math.inf
        return math.sqrt(self.sumsq)

    def track(self) -> TrackStats:
        if self.size == 0:
            return TrackStats(math.nan, math.nan, math.nan, 0, 0)
        if self.nan:
            lo = hi = mean = math.nan
        else:
            finite = self.size - self.posinf - self.neginf
            lo = -math.inf if self.neginf else (self.lo if finite else math.inf)
            hi = math.inf if self.posinf else (self.hi if finite else -math.inf)
            mean = math.nan if self.posinf and self.neginf else (
                math.inf if self.posinf else -math.inf if self.neginf else
                self.total / self.size)
        return TrackStats(lo, mean, hi, self.nonfinite, self.size)


def _flat(x: Any) -> Any:
    """A 1-D view (a copy only where the array is not contiguous)."""
    if not x.flags.c_contiguous:
        x = arrays.ascontiguous(x)
    return x.reshape(-1)


# What a scan computes: the sum of squares (a norm), the finite values' min and max (a
# histogram's range, a track's min and max), the sum (a track's mean). Non-finite values
# are counted whatever is asked.
NORM, RANGE, SUM = 1, 2, 4
# NumPy's own float dtypes, which its ufuncs read as they are (a min, a max, a cast into
# the float64 scratch). Others (ml_dtypes' bfloat16) are widened into the scratch first.
_NATIVE = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}


def _scan(x: Any, what: int) -> _Scan:
    """:class:`_Scan` of an array: a host array chunk by chunk (over the thread pool when
    large), one read and no param-sized temporary; a GPU array where it lives."""
    if arrays.is_cupy(x):
        return _scan_device(x)
    flat = _flat(np.asarray(x))
    n = flat.size
    if n == 0:
        return _Scan()
    parts: dict[int, _Scan] = {}

    def run(n, a, args, scratch, chunk, start, stop) -> None:
        parts[start] = _scan_range(a, start, stop, scratch, what)

    _pooled(run, flat)
    out = _Scan.combine(parts[k] for k in sorted(parts))
    out.size = n
    return out


def _scan_many(xs: list[Any], what: int) -> list[_Scan]:
    """:func:`_scan` of each of ``xs`` (None: an empty scan). Arrays of fewer than
    :data:`SMALL` elements are reduced in batches: copied end to end into one chunk of
    float64, each reduction runs once over the chunk and is split by array with
    ``ufunc.reduceat``, so a thousand small params cost a few calls, not thousands."""
    out = [_Scan() for _ in xs]
    small = []
    for i, x in enumerate(xs):
        if x is None or x.size == 0:
            continue
        if x.size >= SMALL or arrays.is_cupy(x):
            out[i] = _scan(x, what)
        else:
            small.append(i)
    for batch in _batches(xs, small):
        for i, scan in zip(batch, _scan_batch([xs[i] for i in batch], what), strict=True):
            out[i] = scan
    return out


def _batches(xs: list[Any], indices: list[int]) -> Iterator[list[int]]:
    """``indices`` in runs whose arrays hold at most CHUNK elements together."""
    batch, size = [], 0
    for i in indices:
        n = xs[i].size
        if batch and size + n > CHUNK:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += n
    if batch:
        yield batch


def _gather(xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (non-empty, host) arrays end to end in one float64 array; where each starts,
    and its size."""
    flat = [x.reshape(-1) for x in xs]
    sizes = np.fromiter(map(len, flat), np.intp, len(flat))
    starts = np.zeros(len(xs), np.intp)
    np.cumsum(sizes[:-1], out=starts[1:])
    buf = np.empty(int(starts[-1] + sizes[-1]))
    if all(x.dtype in _NATIVE for x in flat):
        np.concatenate(flat, out=buf, casting="unsafe")
    else:
        for x, start, n in zip(flat, starts, sizes, strict=True):
            np.copyto(buf[start:start + n], x, casting="unsafe")
    return buf, starts, sizes


def _scan_batch(xs: list[np.ndarray], what: int) -> list[_Scan]:
    """:func:`_scan` of each of ``xs``, small host arrays, at once."""
    buf, starts, sizes = _gather(xs)
    n = len(xs)
    finite = np.ones(n, bool)
    lo = hi = total = sumsq = np.zeros(n)
    with np.errstate(all="ignore"):
        if what & RANGE:
            lo, hi = np.minimum.reduceat(buf, starts), np.maximum.reduceat(buf, starts)
            finite &= np.isfinite(lo) & np.isfinite(hi)
        if what & SUM:
            total = np.add.reduceat(buf, starts)
        if what & NORM:
            sumsq = np.add.reduceat(buf * buf, starts)
            finite &= np.isfinite(sumsq)
    out = [_Scan(int(sizes[k]), float(sumsq[k]), float(total[k]),
                 float(lo[k]) if what & RANGE else math.inf,
                 float(hi[k]) if what & RANGE else -math.inf) for k in range(n)]
    for k in np.flatnonzero(~finite):  # a nan or an inf in it (or an overflow): count
        out[k] = _scan_range(buf[starts[k]:starts[k] + sizes[k]], 0, int(sizes[k]),
                             np.empty(int(sizes[k])), what)
        out[k].size = int(sizes[k])
    return out


def _pooled(run, flat: np.ndarray, *args: Any) -> None:
    """``run`` over ``flat`` in chunk-aligned ranges, one per thread for a large array."""
    n = flat.size
    if n < 2 * max(PARALLEL_MIN, pool.MIN_ELEMENTS_PER_THREAD):
        with np.errstate(all="ignore"):
            run(n, flat, args, np.empty(min(n, CHUNK)), CHUNK, 0, n)
        return
    pool.run(run, n, [flat], args, lambda worker: np.empty(CHUNK), CHUNK)


def _scan_range(a: np.ndarray, start: int, stop: int, scratch: np.ndarray,
                what: int) -> _Scan:
    """:func:`_scan` of ``a[start:stop]``. Each chunk is read by as few ufuncs as it can
    be: the squares are widened as they are made, and a finite sum of squares (or finite
    min and max) vouches that the chunk holds no nan or inf, so only a chunk that fails
    is looked at element by element."""
    out = _Scan()
    native = a.dtype in _NATIVE
    for first in range(start, stop, CHUNK):
        last = min(first + CHUNK, stop)
        x = a[first:last]
        c = scratch[: last - first]
        if not native:
            np.copyto(c, x, casting="unsafe")
            x = c
        finite = True
        if what & RANGE:
            lo, hi = float(x.min()), float(x.max())  # nan if a nan is there
            finite = math.isfinite(lo) and math.isfinite(hi)
        if what & SUM and finite:
            out.total += float(np.add.reduce(x, dtype=np.float64))
        if what & NORM and finite:
            if x is not c:
                np.copyto(c, x)
            np.multiply(c, c, out=c)
            sumsq = float(np.add.reduce(c))
            # Squares of finite float32 values cannot overflow a float64 sum; float64
            # values above 1e154 can, and are then checked (and the norm is inf).
            finite = math.isfinite(sumsq)
            out.sumsq += sumsq
        if not finite:  # a nan or an inf in the chunk: count them
            np.copyto(c, a[first:last], casting="unsafe")  # (c may hold the squares)
            out.nan += int(np.count_nonzero(np.isnan(c)))
            out.posinf += int(np.count_nonzero(c == math.inf))
            out.neginf += int(np.count_nonzero(c == -math.inf))
            if what & RANGE:
                kept = c[np.isfinite(c)]
                lo, hi = (float(kept.min()), float(kept.max())) if kept.size \
                    else (math.inf, -math.inf)
        if what & RANGE:
            out.lo, out.hi = min(out.lo, lo), max(out.hi, hi)
    return out


def _scan_device(x: Any) -> _Scan:
    """:func:`_scan` of a CuPy array, on its GPU (a float64 copy there), reading back
    seven numbers at once. (Written against the array module of ``x``: NumPy's too.)"""
    xp = arrays.module(x)
    with arrays.on_device(x):
        c = x.reshape(-1).astype(np.float64)
        fin = c[xp.isfinite(c)]
        empty = fin.size == 0
        values = [xp.sum(fin * fin), xp.sum(fin),
                  math.inf if empty else xp.min(fin), -math.inf if empty else xp.max(fin),
                  xp.sum(xp.isnan(c)), xp.sum(c == math.inf), xp.sum(c == -math.inf)]
        s = arrays.to_numpy(xp.stack([xp.asarray(v, dtype=np.float64) for v in values]))
    return _Scan(int(c.size), float(s[0]), float(s[1]), float(s[2]), float(s[3]),
                 int(s[4]), int(s[5]), int(s[6]))


def _edges(scan: _Scan) -> np.ndarray | None:
    """The histogram's edges for a scan's finite range, as np.histogram makes them."""
    if scan.lo > scan.hi:  # no finite value
        return None
    lo, hi = scan.lo, scan.hi
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, BINS + 1)


def _histogram(x: Any, scan: _Scan, lo: float, hi: float) -> np.ndarray:
    """Counts of ``x``'s finite values (``scan`` is its :func:`_scan`) in BINS bins from
    ``lo`` to ``hi``: chunk by chunk over the thread pool, or on the GPU."""
    if arrays.is_cupy(x):
        return _histogram_device(x, lo, hi)
    parts: list[np.ndarray] = []
    check = scan.nonfinite > 0

    def run(n, a, args, scratch, chunk, start, stop) -> None:
        parts.append(_histogram_range(a, start, stop, scratch, lo, hi, check))

    _pooled(run, _flat(np.asarray(x)))
    return sum(parts)  # integers: the threads' order does not matter


def _histogram_many(xs: list[Any], scans: list[_Scan],
                    edges: np.ndarray | None) -> np.ndarray:
    """:func:`_histogram` of each of ``xs`` in the bins ``edges`` (None: no finite value
    to bin): one row of counts per array. Small arrays are binned in batches, as
    :func:`_scan_many` reduces them."""
    counts = np.zeros((len(xs), BINS), np.int64)
    if edges is None:
        return counts
    lo, hi = float(edges[0]), float(edges[-1])
    small = []
    for i, (x, scan) in enumerate(zip(xs, scans, strict=True)):
        if scan.size == scan.nonfinite:  # nothing to bin
            continue
        if scan.size >= SMALL or arrays.is_cupy(x):
            counts[i] = _histogram(x, scan, lo, hi)
        else:
            small.append(i)
    for batch in _batches(xs, small):
        buf, starts, sizes = _gather([xs[i] for i in batch])
        segment = np.repeat(np.arange(len(batch)), sizes)
        if any(scans[i].nonfinite for i in batch):
            keep = np.isfinite(buf)
            buf, segment = buf[keep], segment[keep]
        k = _bins(buf, lo, hi)
        k += segment * BINS
        counts[batch] = np.bincount(k, minlength=len(batch) * BINS).reshape(len(batch), BINS)
    return counts


def _bins(c: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """The bin of each value of ``c`` (float64, finite, within [lo, hi]; overwritten):
    floor((x - lo) * BINS / (hi - lo)), the max in the last bin."""
    np.subtract(c, lo, out=c)
    np.multiply(c, BINS / (hi - lo), out=c)
    np.minimum(c, BINS - 1, out=c)  # the max (and what rounds past it): the last bin
    if out is None:
        return c.astype(np.intp)
    np.copyto(out, c, casting="unsafe")
    return out


def _histogram_device(x: Any, lo: float, hi: float) -> np.ndarray:
    xp = arrays.module(x)
    with arrays.on_device(x):
        c = x.reshape(-1).astype(np.float64)
        counts = xp.histogram(c[xp.isfinite(c)], BINS, (lo, hi))[0]
        return arrays.to_numpy(counts).astype(np.int64)


def _histogram_range(a: np.ndarray, start: int, stop: int, scratch: np.ndarray, lo: float,
                     hi: float, check: bool) -> np.ndarray:
    """Bin counts of ``a[start:stop]``'s finite values (:func:`_bins`). np.histogram
    divides, then multiplies, then moves values within a rounding error of an edge to
    the edge's side: the counts can differ from its only for such values."""
    counts = np.zeros(BINS, np.int64)
    index = np.empty(min(CHUNK, stop - start), np.intp)
    for first in range(start, stop, CHUNK):
        last = min(first + CHUNK, stop)
        c = scratch[: last - first]
        np.copyto(c, a[first:last], casting="unsafe")
        if check:
            c = c[np.isfinite(c)]
        counts += np.bincount(_bins(c, lo, hi, index[: c.size]), minlength=BINS)
    return counts


# --- logging ---------------------------------------------------------------------------

class JSONLLogger:
    """Append one JSON line per :meth:`log` call (every ``every``-th call) to ``path``.

    Each line is a :meth:`Diagnostics.to_dict` with ``"time"`` (seconds since the epoch)
    and ``"step"`` (the given one, else the optimizer's step count). The file is opened
    for appending (a resumed run continues its log), its parent directories are made, and
    every line is flushed as it is written. Use it as a context manager, or call
    :meth:`close`. Read the lines back with :func:`read_jsonl`; draw them with
    ``optdsl plot-diagnostics``. JSON only, never pickle.
    """

    def __init__(self, path: str | Path, every: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        self.path = Path(path)
        self.every = every
        self.calls = 0
        self.written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close)

    def log(self, source: Any, step: int | None = None) -> dict[str, Any] | None:
        """Log an optimizer's last step (``opt.diagnostics()``) or a :class:`Diagnostics`;
        returns the record written, or None on a call that ``every`` skips."""
        if self._file.closed:
            raise DiagnosticsError(f"this logger of {self.path} is closed")
        self.calls += 1
        if (self.calls - 1) % self.every:
            return None
        diag = source if isinstance(source, Diagnostics) else require(source)
        record = diag.to_dict()
        record["time"] = time.time()
        if step is not None:
            record["step"] = int(step)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.written += 1
        return record

    def close(self) -> None:
        """Close the file (the context manager does it on exit)."""
        self._file.close()

    def __enter__(self) -> JSONLLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JSONLLogger({str(self.path)!r}, every={self.every})"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a diagnostics log, in order. Raises :class:`DiagnosticsError`
    naming the file and line of anything that is not a record; an unfinished last line
    (no newline: a run stopped while writing it) is left out."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DiagnosticsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DiagnosticsError(f"{path} is not a diagnostics log (not UTF-8 text)") from None
    return list(_records(path, text))


def _records(path: Path, text: str) -> Iterator[dict[str, Any]]:
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if n == len(lines):  # the last line, without its newline: unfinished
                return
            raise DiagnosticsError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or not {"step", "groups", "params"} <= set(record):
            raise DiagnosticsError(f"{path}:{n}: not a diagnostics record (a JSON object "
                                   "with 'step', 'groups' and 'params', as JSONLLogger "
                                   "writes)")
        yield record


# --- series for plots ------------------------------------------------------------------

def series(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The records as arrays over steps, per group: ``steps``, and for each group index
    ``grad_norm``, ``update_ratio``, ``lr`` and ``tracks[name][min|mean|max]`` (nan
    where a record lacks the group or the track), and its gradient ``histograms``
    (``(counts, edges)`` per record, None where absent)."""
    steps = np.array([float(r["step"]) for r in records])
    indices = sorted({g["group"] for r in records for g in r["groups"]})
    groups: dict[int, dict[str, Any]] = {}
    for gi in indices:
        rows = [next((g for g in r["groups"] if g["group"] == gi), None) for r in records]
        out: dict[str, Any] = {}
        for key in ("grad_norm", "param_norm", "update_norm", "update_ratio", "lr"):
            out[key] = np.array([_num(g.get(key)) if g else math.nan for g in rows])
        names = dict.fromkeys(n for g in rows if g for n in g.get("tracks", {}))
        out["tracks"] = {n: {k: np.array([_num(g["tracks"][n][k])
                                          if g and n in g.get("tracks", {}) else math.nan
                                          for g in rows])
                             for k in ("min", "mean", "max")} for n in names}
        out["histograms"] = [(g["grad_histogram"]["counts"], g["grad_histogram"]["edges"])
                             if g and g.get("grad_histogram") else None for g in rows]
        groups[gi] = out
    return {"steps": steps, "groups": groups,
            "optimizer": records[0].get("optimizer", "") if records else ""}


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def rebin(histograms: list, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Histograms with different edges on one grid (for a heat map over steps): each
    record's counts spread evenly within their bins and summed over the common bins
    spanning every record's range. Returns ``(counts (records x bins), edges)``; a
    record without finite values is a row of zeros."""
    ranges = [(e[0], e[-1]) for h in histograms if h and h[1] for e in (h[1],)]
    if not ranges:
        return np.zeros((len(histograms), bins)), np.linspace(-1, 1, bins + 1)
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    edges = np.linspace(lo, hi, bins + 1)
    out = np.zeros((len(histograms), bins))
    for i, h in enumerate(histograms):
        if not h or not h[1]:
            continue
        counts, src = np.asarray(h[0], float), np.asarray(h[1], float)
        cumulative = np.concatenate([[0.0], np.cumsum(counts)])
        out[i] = np.diff(np.interp(edges, src, cumulative))
    return out, edges
