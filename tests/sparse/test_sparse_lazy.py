"""``lazy=True``: any ``.opt`` rule steps only the rows a RowSparse gradient names, with
the same compiled kernel; every other row of the param and of its state is left as it
was, and the param's step count still advances once per step."""

from __future__ import annotations

import numpy as np
import pytest
from sparse_util import dense, rows_for, sparse_grad, untouched

import optdsl
from optdsl import Param, RowSparse, optim

# Not in the stdlib: a state initialised from p (made, as in a dense step, from all of
# p), a host scalar of t, and a where().
PROBE = '''
optimizer LazyProbe
"""A test rule."""

hyper lr = 0.1
hyper beta = 0.9

state m = 0
state anchor = p * 2

update:
    m = beta * m + (1 - beta) * g
    p = p - lr / t * m + 0.01 * where(anchor > p, anchor - p, 0)
'''


def probe_reference(p, m, anchor, g, t, lr=0.1, beta=0.9):
    m = beta * m + (1 - beta) * g
    p = p - lr / t * m + 0.01 * np.where(anchor > p, anchor - p, 0)
    return p, m


def _coalesced(grad: RowSparse):
    rows, inverse = np.unique(np.asarray(grad.indices), return_inverse=True)
    summed = np.zeros((len(rows), *grad.values.shape[1:]), grad.values.dtype)
    np.add.at(summed, inverse.reshape(-1), grad.values)
    return rows, summed


@pytest.mark.parametrize("shape", [(10, 3, 2), (12,), (9, 4)])
def test_a_compiled_rule_steps_only_the_given_rows(shape):
    Rule = optdsl.compile(PROBE)
    start = np.random.default_rng(3).uniform(-1, 1, shape)
    p = Param(start.copy())
    opt = Rule([p], lazy=True)
    ref_p, ref_m, anchor = start.copy(), np.zeros(shape), start * 2
    ever = set()
    for step in range(1, 31):
        g = sparse_grad(step, p.data)
        rows, summed = _coalesced(g)
        ever |= set(rows.tolist())
        before = {"p": p.data.copy(), **{k: v.copy() for k, v in opt.state[p].items()
                                        if k != "step"}}
        p.grad = g
        opt.step()
        new_p, new_m = probe_reference(ref_p[rows], ref_m[rows], anchor[rows], summed, step)
        ref_p[rows], ref_m[rows] = new_p, new_m
        np.testing.assert_allclose(p.data, ref_p, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(opt.state[p]["m"], ref_m, rtol=1e-12, atol=1e-15)
        # The rows not named: exactly as they were (the state's too, after step 1).
        rest = untouched(shape[0], rows)
        np.testing.assert_array_equal(p.data[rest], before["p"][rest])
        for name in ("m", "anchor"):
            if name in before:
                np.testing.assert_array_equal(opt.state[p][name][rest], before[name][rest])
        assert opt.state[p]["step"] == step
    # anchor was made from all of p at the first step, and is never written.
    np.testing.assert_array_equal(opt.state[p]["anchor"], start * 2)
    assert ever != set(range(shape[0]))  # some rows never stepped...
    never = sorted(set(range(shape[0])) - ever)
    np.testing.assert_array_equal(p.data[never], start[never])  # ...and never moved


def adam_rows(p, m, v, g, t, lr, b1, b2, eps):
    """torch.optim.Adam's update, on some rows."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps
    return p - lr / (1 - b1 ** t) * (m / denom), m, v


def test_lazy_adam_matches_a_numpy_reference_on_the_named_rows():
    shape = (10, 3, 2)
    start = np.random.default_rng(5).uniform(-1, 1, shape)
    p = Param(start.copy(), name="emb")
    hypers = {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}
    opt = optim.Adam([p], lazy=True, **hypers)
    ref = [start.copy(), np.zeros(shape), np.zeros(shape)]
    for step in range(1, 41):
        g = sparse_grad(step, p.data)
        rows, summed = _coalesced(g)
        p.grad = g
        opt.step()
        out = adam_rows(*(r[rows] for r in ref), summed, step, hypers["lr"],
                        *hypers["betas"], hypers["eps"])
        for r, o in zip(ref, out, strict=True):
            r[rows] = o
    np.testing.assert_allclose(p.data, ref[0], rtol=1e-12)
    np.testing.assert_allclose(opt.state[p]["exp_avg"], ref[1], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(opt.state[p]["exp_avg_sq"], ref[2], rtol=1e-12, atol=1e-300)
    assert opt.state[p]["step"] == 40


def _run(opt_factory, grads_for, shape=(8, 3), steps=12, seed=0):
    start = np.random.default_rng(seed).uniform(-1, 1, shape)
    p = Param(start.copy())
    opt = opt_factory([p])
    for step in range(1, steps + 1):
        p.grad = grads_for(step, p)
        opt.step()
    return p, opt


def test_duplicates_are_summed_in_order_deterministically():
    """The same uncoalesced gradients give the same bits every run, and the same bits as
    the gradients summed beforehand (np.add.at, in the order given)."""
    def uncoalesced(step, p):
        return sparse_grad(step, p.data)

    def presummed(step, p):
        return RowSparse(*_coalesced(sparse_grad(step, p.data)))

    factory = lambda ps: optim.Adam(ps, lr=0.01, lazy=True)  # noqa: E731
    a, _ = _run(factory, uncoalesced)
    b, _ = _run(factory, uncoalesced)
    c, _ = _run(factory, presummed)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.data, c.data)


def test_lazy_with_dense_gradients_steps_densely():
    grads = lambda step, p: np.asarray(p.data) * 0.5 + step  # noqa: E731
    a, sa = _run(lambda ps: optim.Adam(ps, lr=0.01, lazy=True), grads)
    b, sb = _run(lambda ps: optim.Adam(ps, lr=0.01), grads)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(sa.state[a]["exp_avg_sq"], sb.state[b]["exp_avg_sq"])


def test_groups_choose_lazy_or_dense_and_params_of_one_group_mix_kinds():
    shape = (9, 2)
    init = [np.random.default_rng(k).uniform(-1, 1, shape) for k in range(3)]
    lazy, dense_sparse, dense_dense = (Param(a.copy()) for a in init)
    opt = optim.SGD([{"params": [lazy], "lazy": True},
                     {"params": [dense_sparse, dense_dense]}], lr=0.1, momentum=0.9)
    twin = Param(init[2].copy())  # dense_dense alone, in an optimizer of its own
    twin_opt = optim.SGD([twin], lr=0.1, momentum=0.9)
    steps = {}
    for step in range(1, 6):
        rows = [step % 9]
        steps[step] = rows
        lazy.grad = RowSparse(rows, np.ones((1, 2)))
        dense_sparse.grad = RowSparse(rows, np.ones((1, 2)))
        dense_dense.grad = np.full(shape, 0.5)
        twin.grad = np.full(shape, 0.5)
        opt.step()
        twin_opt.step()
    # Lazy: a row named once moves once, by lr; dense: its momentum keeps moving it.
    np.testing.assert_allclose(init[0][1] - lazy.data[1], 0.1)
    assert np.all(init[1][1] - dense_sparse.data[1] > 0.1 * (1 + 0.9 + 0.81))
    np.testing.assert_array_equal(dense_dense.data, twin.data)
    assert opt.state[lazy]["step"] == opt.state[dense_sparse]["step"] == 5


def test_switching_between_dense_and_sparse_gradients_keeps_state_right():
    """Dense steps (through a cached step plan), then RowSparse ones, then dense again:
    the same as every step on the dense equivalents."""
    def mixed(step, p):
        g = sparse_grad(step, p.data)
        return g if step in (3, 4, 7) else dense(g, p.data.shape)

    def all_dense(step, p):
        return dense(sparse_grad(step, p.data), p.data.shape)

    factory = lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True)  # noqa: E731
    a, sa = _run(factory, mixed)
    b, sb = _run(factory, all_dense)
    np.testing.assert_array_equal(a.data, b.data)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(sa.state[a][key], sb.state[b][key])


def test_lazy_steps_a_strided_param_in_place():
    base = np.random.default_rng(1).uniform(-1, 1, (8, 6))
    view = base[:, ::2]  # not contiguous
    p = Param(view)
    opt = optim.Adam([p], lr=0.1, lazy=True)
    p.grad = RowSparse([1, 5, 1], np.ones((3, 3)))
    opt.step()
    assert p.data is view
    changed = np.flatnonzero(np.any(base != np.random.default_rng(1).uniform(-1, 1, (8, 6)),
                                    axis=1))
    assert changed.tolist() == [1, 5]
    np.testing.assert_array_equal(base[:, 1::2], np.random.default_rng(1).uniform(
        -1, 1, (8, 6))[:, 1::2])


def test_lazy_float32_and_sparse_adam_in_float32():
    for cls, kw in ((optim.Adam, {"lazy": True}), (optim.SparseAdam, {})):
        p = Param(np.ones((6, 4), np.float32))
        opt = cls([p], lr=0.1, **kw)
        p.grad = RowSparse(np.array([4, 0], np.int32), np.ones((2, 4), np.float32))
        opt.step()
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data[[0, 4]], 0.9, rtol=1e-6)
        np.testing.assert_array_equal(p.data[[1, 2, 3, 5]], 1.0)


def test_rows_every_step_are_what_the_helper_says():
    """(The helpers above rely on it: duplicates every step, rows 2 and 7 never.)"""
    for step in range(1, 20):
        rows = rows_for(step, 10)
        assert len(rows) != len(set(rows.tolist())) and not {2, 7} & set(rows.tolist())
