"""Every number of ``opt.diagnostics()`` against NumPy, from copies of the params and
gradients saved before a step and the params after it (tests/diagnostics/diag_util.py)."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest

import optdsl
from optdsl import Param, RowSparse
from optdsl.diagnostics import BINS, Diagnostics, _histogram_range
from optdsl.optim import SGD, Adam
from tests.diagnostics.diag_util import Snapshot, check_step


def _params(dtype=np.float32, shapes=((6, 5), (7,), (3, 3)), seed=0, names=True):
    rng = np.random.default_rng(seed)
    return [Param(rng.standard_normal(s).astype(dtype), name=f"w{i}" if names else None)
            for i, s in enumerate(shapes)]


def _grads(params, step, scale=1.0, inplace=False):
    for i, p in enumerate(params):
        g = (scale * np.random.default_rng(100 * step + i).standard_normal(p.data.shape)
             ).astype(p.data.dtype)
        if inplace:
            p.grad[...] = g
        else:
            p.grad = g


def _adam_effective_lr(opt, p, group=0):
    """Adam's track, from its state after the step, in float64."""
    h = opt.param_groups[group]
    b1, b2 = h["betas"]
    t = opt.state[p]["step"]
    v = opt.state[p]["exp_avg_sq"].astype(np.float64)
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + h["eps"]
    return h["lr"] / (1 - b1 ** t) / denom


def _adam_tracks(opt, params):
    """The kernel's own track, checked against Adam's formula first."""
    out = {}
    for p in params:
        got = opt.extra_output(p, "track:effective_lr")
        np.testing.assert_allclose(got, _adam_effective_lr(opt, p), rtol=2e-6)
        out[id(p)] = {"effective_lr": got}
    return out


def test_adam_with_a_track_every_number_over_steps():
    params = _params()
    opt = Adam(params, lr=0.05, betas=(0.8, 0.99), diagnostics=True)
    for step in range(1, 5):
        _grads(params, step)
        snap = Snapshot(opt, params)
        opt.step()
        check_step(opt, snap, _adam_tracks(opt, params))
        d = opt.diagnostics()
        assert d.step == step and not d.skipped and d.optimizer == "Adam"
        assert d.groups[0].hypers["betas"] == [0.8, 0.99] and d.groups[0].lr == 0.05
        assert d.param("w1") is d.params[1] and d.param(params[2]) is d.params[2]
        assert d.groups[0].update_norm > 0


def test_sgd_has_no_tracks_and_unnamed_params_get_their_place():
    params = _params(np.float64, names=False)
    opt = SGD(params, lr=0.1, momentum=0.9, diagnostics=True)
    for step in range(1, 4):
        _grads(params, step)
        snap = Snapshot(opt, params)
        opt.step()
        check_step(opt, snap)
    d = opt.diagnostics()
    assert [p.label for p in d.params] == ["group 0 param 0", "group 0 param 1",
                                           "group 0 param 2"]
    assert all(p.tracks == {} for p in d.params) and d.groups[0].tracks == {}
    assert "nesterov" in d.groups[0].hypers and d.groups[0].hypers["momentum"] == 0.9


def test_flattened_params_step_through_a_cached_plan():
    """Gradients written in place: after the first step, every step runs the group's plan
    (one kernel call), and the diagnostics see the same numbers."""
    params = _params()
    optdsl.flatten(params)
    opt = Adam(params, lr=0.01, diagnostics=True)
    for step in range(1, 5):
        _grads(params, step, inplace=True)
        snap = Snapshot(opt, params)
        opt.step()
        if step > 1:
            assert 0 in opt._plans
        check_step(opt, snap, _adam_tracks(opt, params))


def test_several_groups_with_their_own_lr_and_a_group_without_grads():
    params = _params(shapes=((4, 4), (5,), (3,), (2, 2)))
    opt = Adam([{"params": params[:2]}, {"params": params[2:3], "lr": 0.5},
                {"params": params[3:], "lr": 0.25}], lr=0.01, diagnostics=True)
    for step in range(1, 4):
        _grads(params, step)
        params[3].grad = None  # group 2 does not step
        snap = Snapshot(opt, params)
        opt.step()
        tracks = {}
        for gi, group in enumerate(opt.param_groups[:2]):
            for p in group["params"]:
                got = opt.extra_output(p, "track:effective_lr")
                np.testing.assert_allclose(got, _adam_effective_lr(opt, p, gi), rtol=2e-6)
                tracks[id(p)] = {"effective_lr": got}
        check_step(opt, snap, tracks)
    d = opt.diagnostics()
    assert [g.index for g in d.groups] == [0, 1] and [g.lr for g in d.groups] == [0.01, 0.5]
    assert d.group(1).params == 1 and [p.group for p in d.params] == [0, 0, 1]
    with pytest.raises(KeyError, match="param group 2 did not step"):
        d.group(2)


def test_float16_params_with_master_weights_report_the_master_update():
    params = _params(np.float16)
    opt = Adam(params, lr=1e-3, master_weights=True, diagnostics=True)
    for step in range(1, 4):
        _grads(params, step)
        snap = Snapshot(opt, params)
        opt.step()
        tracks = {id(p): {"effective_lr": opt.extra_output(p, "track:effective_lr")}
                  for p in params}
        check_step(opt, snap, tracks)
        d = opt.diagnostics()
        assert d.params[0].dtype == "float16"
        for p, stats in zip(params, d.params, strict=True):
            # The update is the fp32 master's: with lr=1e-3 most of it is below float16's
            # spacing, so the float16 param's own change is another (coarser) number.
            master_update = snap.update(p)
            assert master_update.dtype == np.float32
            fp16_change = p.data.astype(np.float64) - snap.before[id(p)]
            assert stats.update_norm != pytest.approx(np.linalg.norm(fp16_change), rel=1e-3)


def test_a_skipped_step_reports_its_gradients_and_no_update():
    params = _params()
    opt = Adam(params, lr=0.1, skip_nonfinite=True, diagnostics=True)
    _grads(params, 1)
    opt.step()
    _grads(params, 2)
    params[1].grad[2] = np.nan
    params[2].grad[0, 0] = np.inf
    params[2].grad[1, 1] = -np.inf
    snap = Snapshot(opt, params)
    stale = opt.extra_output(params[0], "diag:update").copy()
    assert np.any(stale != 0)  # last step's update is still in the buffer
    opt.step()
    assert opt.last_step_skipped
    check_step(opt, snap, skipped=True)
    d = opt.diagnostics()
    assert d.skipped and d.step == 1 and d.skipped_steps == 1
    assert math.isnan(d.groups[0].grad_norm) and math.isinf(d.params[2].grad_norm)
    assert d.params[1].nonfinite == {"grad": 1, "param": 0, "update": 0}
    hist = d.params[2].grad_histogram
    assert (hist.nan, hist.posinf, hist.neginf) == (0, 1, 1)
    assert sum(hist.counts) == params[2].data.size - 2
    assert d.groups[0].grad_histogram.nan == 1 and d.groups[0].update_norm == 0.0
    assert all(p.tracks == {} for p in d.params)


def test_non_finite_values_in_a_step_taken():
    params = _params(np.float64, shapes=((4,), (3,)))
    opt = SGD(params, lr=0.1, diagnostics=True)
    _grads(params, 1)
    params[0].grad[1] = np.inf
    snap = Snapshot(opt, params)
    opt.step()
    check_step(opt, snap)
    d = opt.diagnostics()
    assert d.params[0].nonfinite == {"grad": 1, "param": 1, "update": 1}
    assert math.isinf(d.params[0].update_norm) and math.isinf(d.params[0].param_norm)
    assert math.isnan(d.params[0].update_ratio)  # inf / inf
    assert d.groups[0].nonfinite == {"grad": 1, "param": 1, "update": 1}


def test_zero_params_and_zero_updates_give_safe_ratios():
    p = Param(np.zeros(3), name="z")
    opt = SGD([p], lr=0.1, diagnostics=True)
    p.grad = np.zeros(3)
    opt.step()
    assert opt.diagnostics().param("z").update_ratio == 0.0
    p.grad = np.ones(3)
    p.data[...] = 0.1  # after this step p is 0: update 0.1 / param 0
    opt.step()
    stats = opt.diagnostics().param("z")
    assert stats.param_norm == 0.0 and stats.update_ratio == math.inf


RULE = '''optimizer Boosted
"""SGD whose step doubles while boost is on, and that tracks what it did."""

hyper lr = 0.1
hyper boost = False

update:
    track base = lr * g
    if boost:
        step = 2 * lr * g
        track boosted = step
    else:
        step = lr * g
    if t >= 2:
        track late = abs(g) * t
    p = p - step
'''


def test_a_track_inside_an_if_is_reported_only_for_steps_whose_path_wrote_it():
    Rule = optdsl.compile(RULE)
    a, b = _params(shapes=((3, 4), (5,)))
    opt = Rule([a, b], lr=0.1, boost=True, diagnostics=True)
    # Step 1: only a has a gradient; it takes the boosted path at t = 1.
    _grads([a], 1)
    snap = Snapshot(opt, [a, b])
    opt.step()
    tracks = {id(a): {"base": 0.1 * snap.grads[id(a)], "boosted": 0.2 * snap.grads[id(a)]}}
    for name, want in tracks[id(a)].items():
        np.testing.assert_allclose(opt.extra_output(a, f"track:{name}"), want, rtol=1e-6)
    check_step(opt, snap, {id(a): {n: opt.extra_output(a, f"track:{n}")
                                   for n in tracks[id(a)]}})
    # Step 2: boost off. a is at t = 2 (it tracks late), b at t = 1 (it does not);
    # a's buffer of 'boosted' still holds step 1's values, which are not reported.
    opt.param_groups[0]["boost"] = False
    _grads([a, b], 2)
    snap = Snapshot(opt, [a, b])
    opt.step()
    assert opt.extra_output(a, "track:boosted") is not None
    got = {id(p): {n: opt.extra_output(p, f"track:{n}") for n in names}
           for p, names in ((a, ("base", "late")), (b, ("base",)))}
    np.testing.assert_allclose(got[id(a)]["late"], 2 * np.abs(snap.grads[id(a)]), rtol=1e-6)
    check_step(opt, snap, got)
    d = opt.diagnostics()
    assert set(d.param(a).tracks) == {"base", "late"} and set(d.param(b).tracks) == {"base"}
    assert d.groups[0].tracks["late"].size == a.data.size
    # Step 3: both at t >= 2, boost on again: every track, for both.
    opt.param_groups[0]["boost"] = True
    _grads([a, b], 3)
    snap = Snapshot(opt, [a, b])
    opt.step()
    names = ("base", "boosted", "late")
    check_step(opt, snap, {id(p): {n: opt.extra_output(p, f"track:{n}") for n in names}
                           for p in (a, b)})


def test_groups_at_the_same_step_on_different_paths_report_their_own_tracks():
    """Two groups, one boosted: the same step count, two kernels (the hypers choose)."""
    Rule = optdsl.compile(RULE)
    a, b = _params(shapes=((4,), (3,)))
    opt = Rule([{"params": [a], "boost": True}, {"params": [b]}], diagnostics=True)
    for step in (1, 2):
        _grads([a, b], step)
        opt.step()  # b's buffer of 'boosted' is never made; a's is written every step
    d = opt.diagnostics()
    assert set(d.param(a).tracks) == {"base", "boosted", "late"}
    assert set(d.param(b).tracks) == {"base", "late"} and "boosted" not in d.group(1).tracks
    opt.param_groups[0]["boost"] = False
    opt.param_groups[1]["boost"] = True
    _grads([a, b], 3)
    snap = Snapshot(opt, [a, b])
    opt.step()
    got = {id(p): {n: opt.extra_output(p, f"track:{n}") for n in names}
           for p, names in ((a, ("base", "late")), (b, ("base", "boosted", "late")))}
    check_step(opt, snap, got)


def test_row_sparse_gradients_densified_and_lazy():
    for lazy in (False, True):
        emb = Param(np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32),
                    name="emb")
        dense = Param(np.ones(4, np.float32), name="dense")
        opt = Adam([emb, dense], lr=0.1, lazy=lazy, diagnostics=True)
        for step in range(1, 3):
            rows = np.array([5, 1, 5]) if step == 1 else np.array([0, 6])
            values = np.random.default_rng(step).standard_normal((len(rows), 3))
            emb.grad = RowSparse(rows, values.astype(np.float32))
            dense.grad = np.full(4, 0.5 * step, np.float32)
            snap = Snapshot(opt, [emb, dense])
            opt.step()
            unique = np.unique(rows)
            eff = opt.extra_output(emb, "track:effective_lr")
            # Lazily, only the named rows stepped: their tracks are the ones reported.
            tracks = {id(emb): {"effective_lr": eff[unique] if lazy else eff},
                      id(dense): {"effective_lr": opt.extra_output(dense,
                                                                   "track:effective_lr")}}
            check_step(opt, snap, tracks)
            d = opt.diagnostics()
            assert d.param("emb").size == 24
            assert sum(d.param("emb").grad_histogram.counts) == len(unique) * 3


def test_a_lazy_step_on_no_rows_has_no_update_and_no_tracks():
    emb = Param(np.ones((4, 2), np.float32), name="emb")
    opt = Adam([emb], lr=0.1, lazy=True, diagnostics=True)
    emb.grad = RowSparse([1], np.ones((1, 2), np.float32))
    opt.step()
    emb.grad = RowSparse(np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    opt.step()
    stats = opt.diagnostics().param("emb")
    assert stats.update_norm == 0.0 and stats.tracks == {} and stats.grad_norm == 0.0
    assert stats.grad_histogram.edges is None and sum(stats.grad_histogram.counts) == 0


@pytest.mark.parametrize("small", [0, 6000, 10**9], ids=["chunked", "both", "batched"])
def test_large_params_are_reduced_over_the_thread_pool_in_chunks(monkeypatch, small):
    """Big enough for several chunks and threads: the same numbers as NumPy's, whether
    an array is reduced chunk by chunk on its own or with others in a batch."""
    monkeypatch.setattr("optdsl.diagnostics.CHUNK", 1000)
    monkeypatch.setattr("optdsl.diagnostics.SMALL", small)
    monkeypatch.setattr("optdsl.diagnostics.PARALLEL_MIN", 2000)
    monkeypatch.setattr("optdsl.backend.pool.MIN_ELEMENTS_PER_THREAD", 2000)
    monkeypatch.setattr("optdsl.backend.pool._threads", 3)
    params = _params(shapes=((101, 97), (5003,), (7,), (300,)))
    opt = Adam(params, lr=0.01, diagnostics=True)
    for step in (1, 2, 3):
        _grads(params, step)
        params[0].grad[50, 3] = np.nan  # a chunk with a nan: counted, left out of the bins
        params[2].grad[1] = -np.inf if step == 2 else 0.5
        snap = Snapshot(opt, params)
        opt.step()
        check_step(opt, snap, _adam_tracks(opt, params))


@pytest.mark.parametrize("master", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_narrow_params_are_reduced_in_float64(master, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    params = _params(dtype, shapes=((5, 4),))
    opt = SGD(params, lr=0.5, momentum=0.9, master_weights=master, diagnostics=True)
    for step in (1, 2):
        _grads(params, step)
        snap = Snapshot(opt, params)
        opt.step()
        check_step(opt, snap)


def test_histogram_bins_match_numpy_on_edges_and_constant_values():
    x = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.0] * 3)
    got = _histogram_range(x, 0, x.size, np.empty(x.size), -1.0, 1.0, False)
    np.testing.assert_array_equal(got, np.histogram(x, BINS, range=(-1.0, 1.0))[0])
    p = Param(np.zeros(5), name="c")
    opt = SGD([p], lr=0.1, diagnostics=True)
    p.grad = np.full(5, 3.0)
    opt.step()
    hist = opt.diagnostics().param("c").grad_histogram
    want_counts, want_edges = np.histogram(p.grad, BINS)  # NumPy's range for one value
    assert hist.counts == tuple(want_counts) and hist.edges == tuple(want_edges)


def test_to_dict_is_plain_json_types():
    params = _params()
    opt = Adam(params, diagnostics=True)
    _grads(params, 1)
    opt.step()
    d = opt.diagnostics()
    assert isinstance(d, Diagnostics)

    def walk(x):
        if isinstance(x, dict):
            assert all(type(k) is str for k in x)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (str, int, float, bool), (x, type(x))

    walk(d.to_dict())
    assert "w0" in d.table() and "group 0 (lr 0.001)" in d.table()


def test_the_gpu_reductions_agree_with_the_host_ones():
    """The CuPy path (whole-array reductions on the GPU, one read-back) is written against
    the array module; run with NumPy arrays it must give the host path's numbers."""
    from optdsl import diagnostics as D

    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000).astype(np.float32)
    x[[3, 70, 900]] = [np.nan, np.inf, -np.inf]
    for values in (x, x[np.isfinite(x)], np.array([np.nan], np.float32),
                   np.zeros(0, np.float32)):
        host, device = D._scan(values, D.NORM | D.RANGE | D.SUM), D._scan_device(values)
        assert (device.size, device.nan, device.posinf, device.neginf) == (
            host.size, host.nan, host.posinf, host.neginf)
        if host.size > host.nonfinite:
            assert (device.lo, device.hi) == (host.lo, host.hi)
            assert device.norm() == pytest.approx(host.norm(), rel=1e-12, nan_ok=True)
            if not host.nonfinite:
                assert astuple(device.track()) == pytest.approx(astuple(host.track()),
                                                                rel=1e-12)
    edges = D._edges(D._scan(x, D.RANGE))
    host = D._histogram(x, D._scan(x, D.NORM | D.RANGE), edges[0], edges[-1])
    np.testing.assert_array_equal(D._histogram_device(x, edges[0], edges[-1]), host)
    np.testing.assert_array_equal(host, np.histogram(x[np.isfinite(x)], BINS,
                                                     (edges[0], edges[-1]))[0])
