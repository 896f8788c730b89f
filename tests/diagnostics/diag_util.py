"""The NumPy oracle of the diagnostics tests: what every number of
``optdsl.diagnostics.Diagnostics`` should be, computed from copies of the params, master
weights and gradients saved before a step and the params after it, independently of
optdsl's chunked reductions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optdsl.diagnostics import BINS
from optdsl.sparse import RowSparse


class Snapshot:
    """Copies of what a step reads and writes, for the params of ``params`` with a grad."""

    def __init__(self, opt, params: list):
        self.opt = opt
        self.params = [p for p in params if p.grad is not None]
        self.before = {id(p): np.array(p.data, copy=True) for p in self.params}
        self.master_before = {id(p): np.array(opt.state[p]["master"], copy=True)
                              for p in self.params if "master" in opt.state.get(p, {})}
        self.grads = {id(p): _grad_values(p.grad) for p in self.params}

    def update(self, p) -> np.ndarray:
        """new p - old p as the kernel computes it, in the param's compute dtype: of the
        fp32 master where there is one (taken from the param at its first step), else of
        the param as stored (a float16 param's rounded values, widened)."""
        st = self.opt.state[p]
        if "master" in st:
            old = self.master_before.get(id(p))
            if old is None:  # the first step made the master from the param
                old = self.before[id(p)].astype(np.float32)
            return st["master"] - old
        if p.data.dtype.itemsize < 4:  # float16, bfloat16: the stored values' change
            return p.data.astype(np.float32) - self.before[id(p)].astype(np.float32)
        return p.data - self.before[id(p)]


def _grad_values(grad: Any) -> np.ndarray:
    """A gradient's values as diagnostics see them (a RowSparse's coalesced rows)."""
    if isinstance(grad, RowSparse):
        return np.array(grad.coalesce().values, copy=True)
    return np.array(grad, copy=True)


def wide(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float64).reshape(-1)


def norm(xs: list[np.ndarray]) -> float:
    """The 2-norm of all of ``xs`` together, in float64 (nan if a nan, inf if an inf)."""
    if not xs:
        return 0.0
    x = np.concatenate([wide(a) for a in xs])
    with np.errstate(all="ignore"):
        return float(np.sqrt(np.sum(x * x)))


def nonfinite(xs: list[np.ndarray]) -> int:
    return int(sum(np.count_nonzero(~np.isfinite(wide(a))) for a in xs))


def ratio(update: float, param: float) -> float:
    if math.isnan(update) or math.isnan(param):
        return math.nan
    if update == 0:
        return 0.0
    return math.inf if param == 0 else update / param


def histogram(xs: list[np.ndarray], bins_of: list[np.ndarray]) -> dict[str, Any]:
    """np.histogram of the finite values of ``xs``, in BINS bins over the finite range of
    ``bins_of`` (the group's gradients), with the nans and infinities counted apart."""
    x = np.concatenate([wide(a) for a in xs]) if xs else np.zeros(0)
    every = np.concatenate([wide(a) for a in bins_of]) if bins_of else np.zeros(0)
    finite = every[np.isfinite(every)]
    counts_of = x[np.isfinite(x)]
    if finite.size == 0:
        counts, edges = [0] * BINS, None
    else:
        lo, hi = float(finite.min()), float(finite.max())
        counts, edges = np.histogram(counts_of, BINS, range=(lo, hi))
        counts, edges = counts.tolist(), edges.tolist()
    return {"counts": counts, "edges": edges, "nan": int(np.isnan(x).sum()),
            "posinf": int((x == np.inf).sum()), "neginf": int((x == -np.inf).sum())}


def track_stats(values: list[np.ndarray]) -> dict[str, Any]:
    x = np.concatenate([wide(a) for a in values])
    with np.errstate(all="ignore"):
        return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max()),
                "nonfinite": int(np.count_nonzero(~np.isfinite(x))), "size": int(x.size)}


def expected(snap: Snapshot, members: list, group_grads: list[np.ndarray],
             tracks: dict[str, list[np.ndarray]], skipped: bool = False) -> dict[str, Any]:
    """The fields of a param's (one member) or a group's stats."""
    grads = [snap.grads[id(p)] for p in members]
    params = [p.data for p in members]
    updates = [] if skipped else [snap.update(p) for p in members]
    gn, pn = norm(grads), norm(params)
    un = 0.0 if skipped else norm(updates)
    return {"size": int(sum(np.size(p.data) for p in members)), "grad_norm": gn,
            "param_norm": pn, "update_norm": un, "update_ratio": ratio(un, pn),
            "nonfinite": {"grad": nonfinite(grads), "param": nonfinite(params),
                          "update": 0 if skipped else nonfinite(updates)},
            "tracks": {k: track_stats(v) for k, v in tracks.items()},
            "grad_histogram": histogram(grads, group_grads)}


def assert_close(got: Any, want: Any, path: str = "", rtol: float = 1e-12) -> None:
    """Dicts, lists and numbers equal, floats to ``rtol`` (nan equals nan)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, got, want)
        for k in want:
            assert_close(got[k], want[k], f"{path}.{k}", rtol)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), (path, got, want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_close(a, b, f"{path}[{i}]", rtol)
    elif isinstance(want, float):
        assert isinstance(got, float), (path, got)
        if math.isnan(want):
            assert math.isnan(got), (path, got, want)
        else:
            assert got == want or abs(got - want) <= rtol * abs(want), (path, got, want)
    else:
        assert got == want and type(got) is type(want), (path, got, want)


def check_step(opt, snap: Snapshot, tracks_of: dict | None = None,
               skipped: bool = False) -> None:
    """Every number of ``opt.diagnostics()`` against the oracle. ``tracks_of``: param ->
    {track name: array of its values this step} (default: none)."""
    tracks_of = tracks_of or {}
    d = opt.diagnostics().to_dict()
    assert d["skipped"] is skipped
    stepped = snap.params
    want_params = []
    want_groups = []
    for gi, group in enumerate(opt.param_groups):
        members = [p for p in group["params"] if any(p is q for q in stepped)]
        if not members:
            continue
        group_grads = [snap.grads[id(p)] for p in members]
        merged: dict[str, list] = {}
        for p in members:
            for name, value in tracks_of.get(id(p), {}).items():
                merged.setdefault(name, []).append(value)
            index = next(i for i, q in enumerate(group["params"]) if q is p)
            want = expected(snap, [p], group_grads, {k: [v] for k, v in
                                                     tracks_of.get(id(p), {}).items()},
                            skipped)
            label = p.name if getattr(p, "name", None) else f"group {gi} param {index}"
            want_params.append({"label": label, "group": gi, "index": index,
                                "shape": list(np.shape(p.data)),
                                "dtype": str(p.data.dtype), **want})
        want = expected(snap, members, group_grads, merged, skipped)
        want_groups.append((gi, len(members), want))
    assert len(d["params"]) == len(want_params)
    for got, want in zip(d["params"], want_params, strict=True):
        assert_close(got, want, f"param {want['label']}")
    assert [g["group"] for g in d["groups"]] == [gi for gi, _, _ in want_groups]
    for got, (gi, n, want) in zip(d["groups"], want_groups, strict=True):
        body = {k: v for k, v in got.items() if k not in ("group", "params", "lr", "hypers")}
        assert got["params"] == n
        assert_close(body, want, f"group {gi}")
        lr = opt.param_groups[gi].get("lr", opt.defaults.get("lr"))
        assert got["lr"] == lr
