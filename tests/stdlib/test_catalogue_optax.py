"""Lion, AdaBelief, Yogi, Signum/signSGD, Adan and AdEMAMix against their NumPy references.

The references (``tests/stdlib/references.py``) are transcriptions of optax or of the
papers' algorithms, written from those and not from the ``.opt`` files. Here each optimizer
runs 48 float64 steps beside its reference under several hyper sets, chosen so that every
``if`` of every file is taken both ways, and parameters and state must agree to rtol 1e-10.
Then known answers that hold whatever the reference says: Lion and signSGD move every
element by exactly lr, AdaBelief's first step is sign(g) / b1, Adan's first step sees no
gradient change, AdEMAMix with alpha = 0 is Adam, the two forms of the beta3 scheduler agree.
"""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl import optim
from optdsl.api import state_bytes_per_param

sys.path.insert(0, str(Path(__file__).parent))
from references import REFERENCES, _ademamix_beta3  # noqa: E402

STEPS = 48
RTOL = 1e-10
# Entries that pass near zero carry a few ulps of the array's scale, which no rtol absorbs.
ATOL_REL = 1e-13
SHAPES = ((3, 4), (5,), ())

# name -> hyper sets, beyond the one in REFERENCES; together they take every branch.
HYPER_SETS = {
    "Lion": [{}, {"lr": 0.003, "betas": (0.95, 0.98)}],
    "AdaBelief": [{}, {"lr": 0.01, "nesterov": True}, {"lr": 0.01, "eps_root": 0.0,
                                                       "eps": 1e-8, "weight_decay": 0.1},
                  {"eps_root": 1e-3}],  # large enough to show that it is stored in s
    "Yogi": [{}, {"betas": (0.5, 0.9), "initial_accumulator_value": 0.0, "eps": 1e-6}],
    "Signum": [{}, {"momentum": 0.0}, {"momentum": 0.0, "weight_decay": 0.2, "lr": 0.05}],
    "Adan": [{}, {"no_prox": True, "weight_decay": 0.1, "lr": 0.02},
             {"no_prox": True, "betas": (0.7, 0.6, 0.9)}],
    "AdEMAMix": [{}, {"alpha_warmup": 10}, {"beta3_warmup": 25, "betas": (0.5, 0.9, 0.999)},
                 {"alpha": 0.0, "weight_decay": 0.1}],
}
CASES = [(name, hypers) for name, (hypers, _) in REFERENCES.items() if name in HYPER_SETS]
CASES += [(name, hypers) for name, sets in HYPER_SETS.items() for hypers in sets]


def _problem(seed: int = 0) -> tuple[list[np.ndarray], callable]:
    """Initial parameters of several shapes, and gradients that change sign and scale."""
    rng = np.random.default_rng(seed)
    inits = [rng.standard_normal(shape) for shape in SHAPES]

    def grad(p: np.ndarray, t: int, i: int) -> np.ndarray:
        noise = np.random.default_rng(1000 * t + i).standard_normal(p.shape)
        return np.asarray((p - 0.3) * (1 + np.sin(t)) + noise * 10.0 ** ((t % 5) - 2))

    return inits, grad


def _close(actual, expected, what: str) -> None:
    expected = np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL,
                               atol=ATOL_REL * scale, err_msg=what)


@pytest.mark.parametrize(("name", "hypers"), CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in h.items()) or 'defaults'}"
                              for n, h in CASES])
def test_matches_its_reference_for_many_steps(name, hypers):
    _, step_fn = REFERENCES[name]
    inits, grad = _problem()
    params = [optdsl.Param(x.copy()) for x in inits]
    opt = optim.load(name)(params, **hypers)
    resolved = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    ref_params = [{"p": x.copy()} for x in inits]
    ref_states: list[dict] = [{} for _ in inits]
    for t in range(1, STEPS + 1):
        for i, (param, ref) in enumerate(zip(params, ref_params, strict=True)):
            param.grad = grad(ref["p"], t, i)  # the reference's p: the same gradient for both
            step_fn(ref, ref_states[i], param.grad.copy(), t, resolved)
        opt.step()
        for i, (param, ref) in enumerate(zip(params, ref_params, strict=True)):
            _close(param.data, ref["p"], f"{name} p[{i}] at step {t}")
    for i, param in enumerate(params):
        state = {k: v for k, v in opt.state[param].items() if k != "step"}
        assert set(state) == set(ref_states[i]), name
        for key, value in state.items():
            _close(value, ref_states[i][key], f"{name} state {key}[{i}]")


def _run(cls, p0: np.ndarray, grads, **hypers) -> list[np.ndarray]:
    """The parameter after each step."""
    w = optdsl.Param(p0.copy())
    opt = cls([w], **hypers)
    out = []
    for g in grads:
        w.grad = g
        opt.step()
        out.append(w.data.copy())
    return out


def _grads(n: int, shape=(4, 5), seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3) for _ in range(n)]


def test_lion_moves_every_element_by_exactly_lr():
    lr = 2.0 ** -7  # with a dyadic p every step is exact, so |change| == lr to the bit
    p0 = np.arange(-10, 10, dtype=np.float64).reshape(4, 5) / 8
    path = [p0, *_run(optim.Lion, p0, _grads(40), lr=lr)]
    for before, after in pairwise(path):
        assert np.all(np.abs(after - before) == lr)


def test_lion_decays_weights_decoupled_and_scaled_by_lr():
    p0 = np.full((2, 2), 2.0)
    g = np.array([[1.0, -1.0], [3.0, -0.5]])
    (p1,) = _run(optim.Lion, p0, [g], lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(p1, p0 - 0.1 * (np.sign(g) + 0.5 * p0), rtol=1e-15)


def test_signsgd_is_signum_without_momentum_and_keeps_no_state():
    lr = 2.0 ** -6
    p0 = np.arange(20, dtype=np.float64).reshape(4, 5) / 4
    grads = _grads(10)
    grads[0][0, 0] = 0.0  # sign(0) is 0: that element stays
    path = [p0, *_run(optim.Signum, p0, grads, lr=lr, momentum=0.0)]
    for (before, after), g in zip(pairwise(path), grads, strict=True):
        np.testing.assert_array_equal(after - before, -lr * np.sign(g))
    spec = optim.Signum._spec
    assert state_bytes_per_param(spec, momentum=0.0) == 0
    assert state_bytes_per_param(spec) == 4
    w = optdsl.Param(p0.copy(), grad=grads[1])
    opt = optim.Signum([w], momentum=0.0)
    opt.step()
    assert set(opt.state[w]) == {"step"}


def test_signum_steps_by_the_sign_of_its_momentum():
    p0 = np.zeros(3)
    grads = [np.array([1.0, -1.0, 1.0]), np.array([-3.0, 0.5, -0.1])]
    # m1 = 0.1 g1; m2 = 0.09 g1 + 0.1 g2 = (-0.21, -0.04, 0.08)
    p1, p2 = _run(optim.Signum, p0, grads, lr=1.0, momentum=0.9)
    np.testing.assert_array_equal(p1, [-1.0, 1.0, -1.0])
    np.testing.assert_array_equal(p2 - p1, [1.0, 1.0, -1.0])


def test_adabelief_first_step_is_sign_over_b1():
    # m = (1 - b1) g, s = (1 - b2) (b1 g)^2: bias-corrected, m / sqrt(s) = sign(g) / b1
    g = np.array([2.0, -0.25, 1e-3])
    (p1,) = _run(optim.AdaBelief, np.zeros(3), [g], lr=1.0, betas=(0.5, 0.9), eps=0.0,
                 eps_root=0.0)
    np.testing.assert_allclose(p1, -np.sign(g) / 0.5, rtol=1e-14)


def test_yogi_second_moment_moves_additively_towards_g_squared():
    # v starts at 1e-6 < g^2, so it grows by (1 - b2) g^2, not by (1 - b2) (g^2 - v) as Adam's
    w = optdsl.Param(np.zeros(2), grad=np.array([3.0, -2.0]))
    opt = optim.Yogi([w], betas=(0.9, 0.5))
    opt.step()
    np.testing.assert_allclose(opt.state[w]["exp_avg_sq"], 1e-6 + 0.5 * np.array([9.0, 4.0]),
                               rtol=1e-15)
    np.testing.assert_allclose(opt.state[w]["exp_avg"], 0.9e-6 + 0.1 * np.array([3.0, -2.0]),
                               rtol=1e-15)


def test_adan_sees_no_gradient_change_at_its_first_step():
    g = np.array([4.0, -0.5, 2e-3])
    w = optdsl.Param(np.zeros(3), grad=g)
    opt = optim.Adan([w], lr=1.0, eps=0.0)
    opt.step()
    np.testing.assert_allclose(w.data, -np.sign(g), rtol=1e-14)  # m_hat / sqrt(n_hat)
    assert np.all(opt.state[w]["exp_avg_diff"] == 0)
    np.testing.assert_array_equal(opt.state[w]["prev_grad"], g)


def test_adan_proximal_weight_decay_divides():
    g = np.array([1.0, -1.0])
    p0 = np.array([2.0, 3.0])
    (prox,) = _run(optim.Adan, p0, [g], lr=0.1, eps=0.0, weight_decay=0.5)
    (decoupled,) = _run(optim.Adan, p0, [g], lr=0.1, eps=0.0, weight_decay=0.5, no_prox=True)
    np.testing.assert_allclose(prox, (p0 - 0.1 * np.sign(g)) / 1.05, rtol=1e-15)
    np.testing.assert_allclose(decoupled, p0 * 0.95 - 0.1 * np.sign(g), rtol=1e-15)


def test_ademamix_without_its_slow_ema_is_adam():
    p0 = np.random.default_rng(3).standard_normal((4, 5))
    grads = _grads(40)
    ours = _run(optim.AdEMAMix, p0, grads, lr=0.01, betas=(0.8, 0.95, 0.999), alpha=0.0)
    adam = _run(optim.Adam, p0, grads, lr=0.01, betas=(0.8, 0.95))
    np.testing.assert_allclose(ours, adam, rtol=1e-12, atol=1e-15)


def test_ademamix_beta3_scheduler_closed_form_is_the_half_life_warmup():
    b1, b3, warmup = 0.9, 0.9999, 100
    for t in (0, 1, 7, 50, 99, 100, 101, 1000):
        a = t / warmup
        closed = min(np.exp(np.log(b1) * np.log(b3) / ((1 - a) * np.log(b3) + a * np.log(b1))),
                     b3)
        assert closed == pytest.approx(_ademamix_beta3(t, b1, b3, warmup), rel=1e-12)
    assert _ademamix_beta3(0, b1, b3, warmup) == pytest.approx(b1, rel=1e-12)
    assert _ademamix_beta3(warmup, b1, b3, warmup) == pytest.approx(b3, rel=1e-12)


def test_ademamix_beta3_warmup_needs_positive_betas():
    with pytest.raises(optdsl.HyperError, match="b1 > 0 and b3 > 0"):
        optim.AdEMAMix([optdsl.Param(np.zeros(2))], beta3_warmup=10, betas=(0.0, 0.9, 0.99))
    optim.AdEMAMix([optdsl.Param(np.zeros(2))], betas=(0.0, 0.9, 0.99))  # no warm-up: fine


@pytest.mark.parametrize(("name", "nbytes"), [("Lion", 4), ("AdaBelief", 8), ("Yogi", 8),
                                              ("Signum", 4), ("Adan", 16), ("AdEMAMix", 12)])
def test_state_bytes_per_fp32_parameter(name, nbytes):
    assert state_bytes_per_param(optim.load(name)._spec) == nbytes


@pytest.mark.parametrize("name", list(HYPER_SETS))
def test_docstring_cites_the_paper_and_says_what_it_follows(name):
    doc = optim.load(name)._spec.spec.doc
    first = doc.split("\n", 1)[0]
    assert first.startswith(f"{name} (") or first.startswith("Signum and signSGD (")
    assert any(year in first for year in ("2018", "2020", "2022", "2023", "2024"))
    assert "as optax." in doc or "following the paper" in doc
