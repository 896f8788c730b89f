"""HypergradientLR in a training loop: it rescues a poor lr, keeps to the lr it finds in the
param groups, skips what it cannot use, saves and resumes, and detaches cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest

import optdsl
from optdsl.autotune import HypergradientLR
from optdsl.errors import StateDictError
from optdsl.optim import SGD, Adam
from optdsl.schedules import StepLR


class Regression:
    """Noisy least squares, 10 features of different scales: the best fixed SGD lr is about
    0.8, and 1.0 already diverges; Adam does best at lrs of about 0.1 to 1."""

    def __init__(self, n=200, d=10, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, d)) * np.linspace(0.3, 1.5, d)
        self.y = self.x @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
        self.d = d
        best = np.linalg.lstsq(self.x, self.y, rcond=None)[0]
        self.minimum = self.loss(best)

    def loss(self, w) -> float:
        r = self.x @ w - self.y
        return float(0.5 * np.mean(r * r))

    def grad(self, w):
        return self.x.T @ (self.x @ w - self.y) / len(self.y)

    def train(self, optimizer, lr, beta, steps=100):
        w = optdsl.Param(np.zeros(self.d))
        opt = optimizer([w], lr=lr, backend="numpy")
        if beta is not None:
            HypergradientLR(opt, beta=beta)
        with np.errstate(all="ignore"):  # the fixed lr too large diverges
            for _ in range(steps):
                w.grad = self.grad(w.data)
                opt.step()
            return self.loss(w.data) - self.minimum, opt.param_groups[0]["lr"]


@pytest.mark.parametrize(("optimizer", "lr", "beta"), [
    (SGD, 0.01, 0.1),    # 100x too small
    (SGD, 1.0, 0.03),    # too large: the fixed lr diverges
    (Adam, 1e-3, 1e-2),  # 100x too small
    (Adam, 10.0, 1e-2),  # 10x too large
], ids=["sgd-small", "sgd-large", "adam-small", "adam-large"])
def test_a_poor_lr_is_rescued(optimizer, lr, beta):
    problem = Regression()
    fixed, _ = problem.train(optimizer, lr, None)
    tuned, reached = problem.train(optimizer, lr, beta)
    assert tuned < 0.5 * fixed  # excess loss over the least-squares minimum
    assert (reached > 10 * lr) if lr < 0.1 else (reached < lr)


def _sgd(lr=0.1, **kwargs):
    p = optdsl.Param(np.zeros(3))
    return p, SGD([p], lr=lr, backend="numpy", **kwargs)


def test_an_lr_set_between_steps_is_where_the_next_update_starts():
    p, opt = _sgd()
    tuner = HypergradientLR(opt, beta=0.01)
    g1, g2, g3 = np.array([1.0, 2.0, 0.0]), np.array([1.0, 1.0, 1.0]), np.array([2.0, 0, 0])
    p.grad = g1
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.1  # h = 0 on the first step
    opt.param_groups[0]["lr"] = 0.5  # set by hand
    p.grad = g2
    opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 + 0.01 * g2 @ g1, rel=1e-15)
    sched = StepLR(opt, step_size=1, gamma=0.5)  # a schedule, from now on
    sched.step()
    halved = opt.param_groups[0]["lr"]
    assert halved == pytest.approx((0.5 + 0.01 * 3) / 2, rel=1e-15)
    p.grad = g3
    opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(halved + 0.01 * g3 @ g2, rel=1e-15)
    assert tuner.last_hypergradients == [pytest.approx(-(g3 @ g2))]


def test_the_lr_is_clipped_to_its_bounds():
    p, opt = _sgd(lr=0.1)
    HypergradientLR(opt, beta=1.0, lr_min=0.05, lr_max=0.2)
    for g in ([1.0, 1, 1], [1.0, 1, 1], [-1.0, -1, -1], [1.0, 1, 1]):
        p.grad = np.array(g)
        opt.step()
        assert 0.05 <= opt.param_groups[0]["lr"] <= 0.2
    assert opt.param_groups[0]["lr"] == 0.05  # up to 0.2, then down past 0.05


def test_a_non_finite_hypergradient_is_skipped_and_counted():
    p, opt = _sgd(skip_nonfinite=True)
    tuner = HypergradientLR(opt, beta=0.01)
    p.grad = np.ones(3)
    opt.step()
    p.grad = np.array([1.0, np.inf, 1.0])
    opt.step()
    assert opt.last_step_skipped and opt.param_groups[0]["lr"] == 0.1
    assert tuner.nonfinite_skips == 1 and tuner.last_hypergradients[0] == -np.inf
    json.dumps(tuner.state_dict(), allow_nan=False)  # still plain JSON
    p.grad = np.ones(3)
    opt.step()  # the step before was skipped: no derivative to use, h = 0
    assert opt.param_groups[0]["lr"] == 0.1 and tuner.last_hypergradients[0] == 0.0
    p.grad = np.full(3, 2.0)
    opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 + 0.01 * 6, rel=1e-15)
    assert tuner.nonfinite_skips == 1


def test_params_that_did_not_step_last_time_do_not_count():
    a, b = optdsl.Param(np.zeros(2)), optdsl.Param(np.zeros(2))
    opt = SGD([a, b], lr=0.1, backend="numpy")
    tuner = HypergradientLR(opt, beta=0.0)
    a.grad, b.grad = np.array([1.0, 2.0]), np.array([5.0, 5.0])
    opt.step()
    a.grad, b.grad = np.array([3.0, 1.0]), None
    opt.step()
    assert tuner.last_hypergradients[0] == -(3 + 2)
    a.grad, b.grad = np.array([1.0, 1.0]), np.array([1.0, 1.0])
    opt.step()  # b's derivative is from the first step: stale, not used
    assert tuner.last_hypergradients[0] == -(3 + 1)


def test_every_group_has_its_own_lr_including_one_added_later():
    a, b = optdsl.Param(np.zeros(2)), optdsl.Param(np.zeros(2))
    opt = SGD([a], lr=0.1, backend="numpy")
    tuner = HypergradientLR(opt, beta=0.01)
    opt.add_param_group({"params": [b], "lr": 0.3})
    for step in range(3):
        a.grad, b.grad = np.full(2, 1.0 + step), np.full(2, -2.0 - step)
        opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 + 0.01 * (4 + 12), rel=1e-14)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.3 + 0.01 * (12 + 24), rel=1e-14)
    assert len(tuner.last_hypergradients) == 2


def _run(steps, grads, opt, params):
    lrs = []
    for k in range(steps):
        for p, g in zip(params, grads(k), strict=True):
            p.grad = g
        opt.step()
        lrs.append([group["lr"] for group in opt.param_groups])
    return lrs


def _build(beta=0.02):
    params = [optdsl.Param(np.linspace(-1, 1, 6)), optdsl.Param(np.ones(3))]
    opt = Adam([{"params": params[:1], "lr": 0.05}, {"params": params[1:], "lr": 0.01}],
               backend="numpy")
    return params, opt, HypergradientLR(opt, beta=beta, lr_max=1.0)


def _grads(k):
    rng = np.random.default_rng(k)
    return [rng.standard_normal(6) + 0.5, rng.standard_normal(3) - 0.5]


def test_state_dict_round_trips_through_json_and_resume_starts_with_h_0():
    params, opt, tuner = _build()
    _run(6, _grads, opt, params)
    saved_opt = opt.state_dict()
    saved = json.loads(json.dumps(tuner.state_dict(), allow_nan=False))
    assert saved == {"format": 1, "hyper": "lr", "beta": 0.02, "lr_min": 0.0, "lr_max": 1.0,
                     "steps": 6, "nonfinite_skips": 0,
                     "last_hypergradients": tuner.last_hypergradients}
    # The uninterrupted run, which loads its own state in the middle (dropping the
    # derivatives, as a resume does), ...
    after = _run(6, lambda k: _grads(6 + k), opt, params)
    # ... and a resumed one: both the same, to the bit.
    params2, opt2, tuner2 = _build(beta=0.5)
    opt2.load_state_dict(saved_opt)
    tuner2.load_state_dict(saved)
    assert (tuner2.beta, tuner2.steps, tuner2.lr_max) == (0.02, 6, 1.0)
    resumed = _run(6, lambda k: _grads(6 + k), opt2, params2)
    assert resumed[0] == [group["lr"] for group in saved_opt["param_groups"]]  # h = 0
    assert resumed[1] != resumed[0]
    params3, opt3, tuner3 = _build()
    _run(6, _grads, opt3, params3)
    tuner3.load_state_dict(tuner3.state_dict())
    assert _run(6, lambda k: _grads(6 + k), opt3, params3) == resumed
    assert after[0] != resumed[0]  # (the uninterrupted run did use step 6's derivative)
    assert tuner2.state_dict()["steps"] == 12


@pytest.mark.parametrize(("change", "match"), [
    ({"hyper": "eps"}, "saved for hyper 'eps', this one tunes 'lr'"),
    ({"beta": -1.0}, "beta must be >= 0"),
    ({"steps": 1.5}, "steps must be a whole number"),
    ({"lr_min": 0.5, "lr_max": 0.1}, "lr_max=0.1 is below lr_min=0.5"),
    ({"last_hypergradients": "x"}, "last_hypergradients must be a list"),
    ({"format": 2}, "format 2 is not 1"),
    ({"extra": 1}, r"unknown \['extra'\]"),
])
def test_a_bad_state_dict_is_refused_and_nothing_changes(change, match):
    _, _, tuner = _build()
    good = tuner.state_dict()
    with pytest.raises(StateDictError, match=match):
        tuner.load_state_dict({**good, **change})
    assert tuner.state_dict() == good
    with pytest.raises(StateDictError, match=r"missing \['beta'\]"):
        tuner.load_state_dict({k: v for k, v in good.items() if k != "beta"})


def test_remove_stops_adapting_and_returns_to_the_plain_kernels():
    params, opt, tuner = _build()
    _run(3, _grads, opt, params)
    tuner.remove()
    tuner.remove()  # twice is harmless
    assert opt._extras() == () and not opt._step_pre_hooks and not opt._step_post_hooks
    lrs = [group["lr"] for group in opt.param_groups]
    stale = opt.extra_output(params[0], "dlr:lr")
    stale[...] = np.nan  # a kernel that wrote the derivative would overwrite this
    used = set()
    original = opt._spec.kernel

    def spy(backend, path, *extras):
        used.add(extras)
        return original(backend, path, *extras)

    opt._spec.kernel = spy
    try:
        after = _run(3, lambda k: _grads(3 + k), opt, params)
    finally:
        del opt._spec.kernel
    assert used == {()}
    assert after == [lrs] * 3
    assert np.isnan(opt.extra_output(params[0], "dlr:lr")).all()


def test_gradients_written_in_place_step_through_the_plan_the_same():
    """A loop that writes into the same gradient arrays lets the runtime reuse its step
    plan (one kernel call per run of params); the derivative must come through it too."""
    fresh_params, fresh, _ = _build()
    lrs_fresh = _run(8, _grads, fresh, fresh_params)
    params, opt, _ = _build()
    for p in params:
        p.grad = np.zeros_like(p.data)
    lrs = []
    for k in range(8):
        for p, g in zip(params, _grads(k), strict=True):
            p.grad[...] = g
        opt.step()
        lrs.append([group["lr"] for group in opt.param_groups])
    assert lrs == lrs_fresh
    for p, q in zip(params, fresh_params, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
