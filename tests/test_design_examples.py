"""DESIGN.md's normative examples compile and behave as written.

The files in tests/examples/ are copied verbatim from DESIGN.md's language section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl import Param

EXAMPLES = Path(__file__).parent / "examples"


def run(cls, p0, grads, **hypers):
    p = Param(p0.copy())
    opt = cls([p], **hypers)
    for g in grads:
        p.grad = g
        opt.step()
    return p.data, opt


def grads(n_steps, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n_steps)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hypers", [{}, {"amsgrad": True, "lr": 0.01},
                                    {"maximize": True, "weight_decay": 0.1}])
def test_design_adam_matches_the_textbook_formula(dtype, hypers):
    Adam = optdsl.compile(EXAMPLES / "design_adam.opt")
    p0 = np.linspace(-1, 1, 12, dtype=dtype).reshape(3, 4)
    gs = grads(30, p0.shape, dtype)
    ours, _ = run(Adam, p0, gs, **hypers)
    # The same algorithm transcribed in float64 NumPy.
    lr, (b1, b2), eps = hypers.get("lr", 1e-3), (0.9, 0.999), 1e-8
    wd, amsgrad = hypers.get("weight_decay", 0.0), hypers.get("amsgrad", False)
    p, m, v, vmax = p0.astype(np.float64), 0.0, 0.0, 0.0
    for t, g in enumerate(gs, 1):
        g = g.astype(np.float64)
        g = -g if hypers.get("maximize") else g
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax if amsgrad else v) / np.sqrt(1 - b2 ** t) + eps
        p = p - lr / (1 - b1 ** t) * m / denom
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(ours, p, rtol=rtol, atol=rtol * 1e-3)
    assert ours.dtype == dtype


def test_design_adam_equals_stdlib_adam_without_weight_decay():
    Design = optdsl.compile(EXAMPLES / "design_adam.opt")
    from optdsl.optim import Adam

    p0 = np.linspace(-1, 1, 50)
    gs = grads(40, p0.shape, np.float64, seed=3)
    ours, _ = run(Design, p0, gs, lr=0.01, amsgrad=True)
    theirs, _ = run(Adam, p0, gs, lr=0.01, amsgrad=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_design_lion_matches_the_paper(dtype):
    Lion = optdsl.compile(EXAMPLES / "design_lion.opt")
    p0 = np.linspace(-1, 1, 20, dtype=dtype)
    gs = grads(25, p0.shape, dtype, seed=1)
    ours, opt = run(Lion, p0, gs, lr=0.01, weight_decay=0.1)
    # Chen et al. (2023), Algorithm 2, in float64.
    lr, b1, b2, wd = 0.01, 0.9, 0.99, 0.1
    p, m = p0.astype(np.float64), np.zeros(20)
    for g in gs:
        g = g.astype(np.float64)
        update = np.sign(b1 * m + (1 - b1) * g)
        p = p * (1 - lr * wd) - lr * update
        m = b2 * m + (1 - b2) * g
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ours, p, rtol=tol, atol=tol)
    assert set(opt.state[next(iter(opt.state))]) == {"step", "exp_avg"}
