"""HypergradientLR against NumPy transcriptions of the paper's algorithms.

SGD-HD is Baydin et al. (2018)'s Algorithm 1 as printed,
alpha_t = alpha_{t-1} + beta * grad f(theta_{t-1}) . grad f(theta_{t-2}),
theta_t = theta_{t-1} - alpha_t * grad f(theta_{t-1}). Adam-HD is transcribed from
stdlib/adam.opt with its derivative by lr worked out by hand. Both run in float64 on a
least-squares problem with two param groups at different lrs.
"""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl.autotune import HypergradientLR
from optdsl.optim import SGD, Adam

SHAPES = ((4, 3), (5,), (2, 2))
GROUPS = ((0,), (1, 2))  # param indices of each group


class LeastSquares:
    """f(w) = |sum_k A_k w_k - b|^2 / (2 n), over params of SHAPES."""

    def __init__(self, seed: int = 0, n: int = 40):
        rng = np.random.default_rng(seed)
        self.mats = [rng.standard_normal((n, int(np.prod(s)))) / np.sqrt(n) for s in SHAPES]
        self.b = rng.standard_normal(n)
        self.n = n

    def residual(self, ws):
        return sum(m @ w.reshape(-1) for m, w in zip(self.mats, ws, strict=True)) - self.b

    def loss(self, ws) -> float:
        r = self.residual(ws)
        return float(r @ r / 2)

    def minimum(self) -> float:
        best = np.linalg.lstsq(np.hstack(self.mats), self.b, rcond=None)[0]
        r = np.hstack(self.mats) @ best - self.b
        return float(r @ r / 2)

    def grads(self, ws):
        r = self.residual(ws)
        return [(m.T @ r).reshape(w.shape) for m, w in zip(self.mats, ws, strict=True)]


def initial(seed: int = 1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def run_optdsl(optimizer, lrs, beta, steps, problem, **hypers):
    """The params and each group's lr after every step, with a HypergradientLR."""
    params = [optdsl.Param(w.copy()) for w in initial()]
    groups = [{"params": [params[k] for k in ks], "lr": lr}
              for ks, lr in zip(GROUPS, lrs, strict=True)]
    opt = optimizer(groups, backend="numpy", **hypers)
    tuner = HypergradientLR(opt, beta=beta)
    history = []
    for _ in range(steps):
        for p, g in zip(params, problem.grads([p.data for p in params]), strict=True):
            p.grad = g
        opt.step()
        history.append(([p.data.copy() for p in params],
                        [group["lr"] for group in opt.param_groups]))
    return history, tuner


def sgd_hd_reference(lrs, beta, steps, problem):
    """Baydin et al.'s SGD-HD, per param group (each group's dot product over its params)."""
    ws = initial()
    alphas = list(lrs)
    previous = None
    history = []
    for _ in range(steps):
        gs = problem.grads(ws)
        if previous is not None:
            for gi, ks in enumerate(GROUPS):
                alphas[gi] = alphas[gi] + beta * sum(np.dot(gs[k].ravel(),
                                                            previous[k].ravel()) for k in ks)
        for gi, ks in enumerate(GROUPS):
            for k in ks:
                ws[k] = ws[k] - alphas[gi] * gs[k]
        previous = gs
        history.append(([w.copy() for w in ws], list(alphas)))
    return history


def adam_hd_reference(lrs, beta, steps, problem, betas=(0.9, 0.999), eps=1e-8,
                      weight_decay=0.0, decoupled=False, amsgrad=False):
    """Adam as stdlib/adam.opt writes it (torch.optim.Adam), with each group's lr tuned by
    h = sum <g_t, dp_{t-1}/dlr>. From the spec,
        p_t = p' - lr / (1 - b1^t) * (m_t / denom_t),   p' = p * (1 - lr * wd) if decoupled
    so dp_t/dlr = -(m_t / denom_t) / (1 - b1^t), minus wd * p_{t-1} if decoupled. The
    gradient in h is the one given, without the weight decay the rule adds to it."""
    b1, b2 = betas
    ws = initial()
    m = [np.zeros_like(w) for w in ws]
    v = [np.zeros_like(w) for w in ws]
    vmax = [np.zeros_like(w) for w in ws]
    alphas = list(lrs)
    derivative = None
    history = []
    for t in range(1, steps + 1):
        gs = problem.grads(ws)
        if derivative is not None:
            for gi, ks in enumerate(GROUPS):
                h = sum(np.dot(gs[k].ravel(), derivative[k].ravel()) for k in ks)
                alphas[gi] = max(alphas[gi] - beta * h, 0.0)
        derivative = []
        for gi, ks in enumerate(GROUPS):
            lr = alphas[gi]
            for k in ks:
                p, g = ws[k], gs[k]
                dwd = 0.0
                if weight_decay != 0:
                    if decoupled:
                        dwd = -weight_decay * p
                        p = p * (1 - lr * weight_decay)
                    else:
                        g = g + weight_decay * p
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                vv = v[k]
                if amsgrad:
                    vmax[k] = np.maximum(vmax[k], v[k])
                    vv = vmax[k]
                denom = np.sqrt(vv) / np.sqrt(1 - b2**t) + eps
                direction = m[k] / denom
                ws[k] = p - lr / (1 - b1**t) * direction
                derivative.append(dwd - direction / (1 - b1**t))
        history.append(([w.copy() for w in ws], list(alphas)))
    return history


def assert_same(got, want, rtol):
    assert len(got) == len(want)
    for step, ((ws, lrs), (ref_ws, ref_lrs)) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(lrs, ref_lrs, rtol=rtol, atol=0, err_msg=f"step {step}")
        for w, ref in zip(ws, ref_ws, strict=True):
            np.testing.assert_allclose(w, ref, rtol=rtol, atol=rtol * np.abs(ref).max(),
                                       err_msg=f"step {step}")


def test_sgd_matches_baydins_sgd_hd():
    problem = LeastSquares()
    lrs, beta, steps = (0.05, 0.01), 0.02, 40
    got, tuner = run_optdsl(SGD, lrs, beta, steps, problem)
    want = sgd_hd_reference(lrs, beta, steps, problem)
    assert_same(got, want, rtol=1e-12)
    # Not a vacuous match: both lrs moved a lot, each its own way, and stayed positive.
    final = got[-1][1]
    assert final[0] > 2 * lrs[0] and final[1] > 2 * lrs[1]
    assert abs(final[0] / lrs[0] - final[1] / lrs[1]) > 0.1
    assert all(lr > 0 for _, lrs_t in got for lr in lrs_t)
    assert tuner.steps == steps and tuner.nonfinite_skips == 0
    # The tuned run gets far closer to the minimum than the fixed lrs do.
    fixed = sgd_hd_reference(lrs, 0.0, steps, problem)
    best = problem.minimum()
    assert problem.loss(got[-1][0]) - best < 0.01 * (problem.loss(fixed[-1][0]) - best)


@pytest.mark.parametrize("hypers", [
    {"weight_decay": 0.05},
    {"weight_decay": 0.05, "decoupled_weight_decay": True},
    {"amsgrad": True, "betas": (0.8, 0.99), "eps": 1e-3},
    {},
], ids=["l2", "decoupled", "amsgrad", "plain"])
def test_adam_matches_adam_hd_transcribed_from_the_spec(hypers):
    problem = LeastSquares(seed=3)
    lrs, beta, steps = (0.01, 0.002), 1e-3, 40
    got, _ = run_optdsl(Adam, lrs, beta, steps, problem, **hypers)
    want = adam_hd_reference(lrs, beta, steps, problem,
                             betas=hypers.get("betas", (0.9, 0.999)),
                             eps=hypers.get("eps", 1e-8),
                             weight_decay=hypers.get("weight_decay", 0.0),
                             decoupled=hypers.get("decoupled_weight_decay", False),
                             amsgrad=hypers.get("amsgrad", False))
    assert_same(got, want, rtol=1e-10)
    final = got[-1][1]
    assert abs(final[0] - lrs[0]) > 0.2 * lrs[0] and abs(final[1] - lrs[1]) > 0.2 * lrs[1]


def test_maximize_tunes_as_minimizing_the_negated_objective():
    """SGD(maximize=True) on -f steps exactly as SGD on f; so must its lr."""
    problem = LeastSquares(seed=5)
    ascend = LeastSquares(seed=5)
    ascend.grads = lambda ws: [-g for g in problem.grads(ws)]
    lrs, beta, steps = (0.05, 0.01), 0.02, 20
    down, _ = run_optdsl(SGD, lrs, beta, steps, problem)
    up, _ = run_optdsl(SGD, lrs, beta, steps, ascend, maximize=True)
    assert_same(up, down, rtol=1e-12)
    assert down[-1][1][0] > 1.5 * lrs[0]


def test_the_hypergradient_of_float32_params_is_accumulated_in_float64():
    rng = np.random.default_rng(0)
    p = optdsl.Param(rng.standard_normal(200_000).astype(np.float32))
    opt = SGD([p], lr=1e-3, backend="numpy")
    tuner = HypergradientLR(opt, beta=0.0)
    g1 = rng.standard_normal(p.data.size).astype(np.float32) + 1
    g2 = rng.standard_normal(p.data.size).astype(np.float32) + 1
    p.grad = g1
    opt.step()
    d = opt.extra_output(p, "dlr:lr").copy()
    p.grad = g2
    opt.step()
    want = np.dot(g2.astype(np.float64), d.astype(np.float64))
    assert d.dtype == np.float32
    assert tuner.last_hypergradients[0] == pytest.approx(want, rel=1e-13)
