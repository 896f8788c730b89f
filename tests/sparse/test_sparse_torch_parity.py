"""Row-sparse gradients against torch 2.13's own sparse-gradient optimizers, on the same
(uncoalesced, duplicate-row) gradients, in float64 for many steps: SparseAdam (lazy by
nature), Adagrad and SGD (which step as on the dense equivalent); and Adagrad and SGD
against themselves on the equivalent dense gradients, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from sparse_util import NEVER, dense, sparse_grad, to_torch

from optdsl import Param, RowSparse, optim

torch = pytest.importorskip("torch")

# torch's own sparse Adagrad builds its tensors without opting in or out of the checks.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")

STEPS = 45
# Two groups; shapes with rows of scalars, of vectors and of matrices.
SHAPES = (((12, 3), (9,)), ((10, 3, 2),))


def _arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [[rng.uniform(-1.5, 1.5, size=s) for s in group] for group in SHAPES]


def _run_pair(ours_cls, theirs_cls, group_hypers, steps=STEPS, **defaults):
    """Step optdsl and torch on the same gradients; return both sides' params and opts."""
    init = _arrays()
    ours = [[Param(a.copy(), name=f"p{g}{k}") for k, a in enumerate(group)]
            for g, group in enumerate(init)]
    theirs = [[torch.nn.Parameter(torch.tensor(a)) for a in group] for group in init]
    opt = ours_cls([{"params": ps, **h} for ps, h in zip(ours, group_hypers, strict=True)],
                   **defaults)
    ref = theirs_cls([{"params": ps, **h} for ps, h in zip(theirs, group_hypers, strict=True)],
                     **defaults)
    flat_ours = [p for g in ours for p in g]
    flat_theirs = [p for g in theirs for p in g]
    for step in range(1, steps + 1):
        for k, (p, q) in enumerate(zip(flat_ours, flat_theirs, strict=True)):
            if step % 5 == k % 5:
                p.grad, q.grad = None, None  # sometimes a param has no gradient at all
                continue
            g = sparse_grad(step, p.data, k)
            q.grad = to_torch(g, p.data.shape)
            p.grad = g
        opt.step()
        ref.step()
    return opt, flat_ours, ref, flat_theirs


def _assert_close(opt, ours, ref, theirs, states):
    for k, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-9, atol=0,
                                   err_msg=f"param {k}")
        for name in states:
            theirs_ = ref.state[q][name]  # SGD's momentum buffer is sparse in torch
            theirs_ = theirs_.to_dense() if theirs_.is_sparse else theirs_
            np.testing.assert_allclose(opt.state[p][name], theirs_.numpy(),
                                       rtol=1e-9, atol=0, err_msg=f"param {k} {name}")
        if "step" in ref.state[q]:  # torch's SGD keeps none
            assert opt.state[p]["step"] == int(ref.state[q]["step"]), k


def test_sparse_adam_matches_torch_sparse_adam():
    groups = ({}, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True})
    opt, ours, ref, theirs = _run_pair(optim.SparseAdam, torch.optim.SparseAdam, groups,
                                       lr=0.01)
    _assert_close(opt, ours, ref, theirs, ("exp_avg", "exp_avg_sq"))
    # Lazy: rows no gradient named kept their values and zero moments.
    for p in ours:
        rows = [r for r in NEVER if r < p.data.shape[0]]
        assert rows
        np.testing.assert_array_equal(p.data[rows], _arrays_by_name(p)[rows])
        assert not opt.state[p]["exp_avg"][rows].any()
        assert not opt.state[p]["exp_avg_sq"][rows].any()


def _arrays_by_name(p):
    g, k = int(p.name[1]), int(p.name[2])
    return _arrays()[g][k]


def test_sparse_adam_is_lazy_unlike_adam():
    """A row named at step 1 but not at step 2: Adam (dense semantics) moves it at step 2
    by its moments, SparseAdam leaves it (and its moments) alone."""
    moved = {}
    for cls in (optim.Adam, optim.SparseAdam):
        p = Param(np.ones((3, 2)))
        opt = cls([p], lr=0.01)
        p.grad = RowSparse(np.array([0, 1]), np.ones((2, 2)))
        opt.step()
        before = p.data.copy(), opt.state[p]["exp_avg"].copy()
        p.grad = RowSparse(np.array([1]), np.ones((1, 2)))
        opt.step()
        moved[cls.__name__] = (not np.array_equal(p.data[0], before[0][0]),
                               not np.array_equal(opt.state[p]["exp_avg"][0], before[1][0]))
    assert moved == {"Adam": (True, True), "SparseAdam": (False, False)}


@pytest.mark.parametrize("hypers, defaults", [
    ({"lr": 0.1}, {}),
    # torch fills the accumulator at construction from the constructor's value, whatever
    # a group says: give it there.
    ({"lr": 0.1, "lr_decay": 0.01, "eps": 1e-8}, {"initial_accumulator_value": 0.1}),
    ({"lr": 0.05, "maximize": True}, {}),
], ids=["plain", "decay_init", "maximize"])
def test_adagrad_matches_torch_with_sparse_grads(hypers, defaults):
    groups = (hypers, {**hypers, "lr": hypers["lr"] / 2})
    opt, ours, ref, theirs = _run_pair(optim.Adagrad, torch.optim.Adagrad, groups, **defaults)
    _assert_close(opt, ours, ref, theirs, ("sum",))


SGD_HYPERS = [
    {"lr": 0.05},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
    {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True},
]
SGD_IDS = ["plain", "momentum", "dampening", "nesterov_maximize"]


@pytest.mark.parametrize("hypers", SGD_HYPERS, ids=SGD_IDS)
def test_sgd_matches_torch_with_sparse_grads(hypers):
    groups = (hypers, {**hypers, "lr": hypers["lr"] / 2})
    opt, ours, ref, theirs = _run_pair(optim.SGD, torch.optim.SGD, groups)
    _assert_close(opt, ours, ref, theirs, ("momentum_buffer",) if "momentum" in hypers else ())


def _dense_pair(cls, hypers, steps=30, **kw):
    """The same optimizer stepped on RowSparse gradients and on their dense equivalents."""
    init = [a for group in _arrays(1) for a in group]
    sparse = [Param(a.copy()) for a in init]
    dense_ = [Param(a.copy()) for a in init]
    a, b = cls(sparse, **hypers, **kw), cls(dense_, **hypers, **kw)
    for step in range(1, steps + 1):
        for k, (p, q) in enumerate(zip(sparse, dense_, strict=True)):
            g = sparse_grad(step, p.data, k)
            q.grad = dense(g, p.data.shape)
            p.grad = g
        a.step()
        b.step()
    return a, sparse, b, dense_


@pytest.mark.parametrize("name, hypers", [
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("Adagrad", {"lr": 0.1, "weight_decay": 0.1}),  # torch refuses this one with sparse grads
    *[("SGD", h) for h in SGD_HYPERS],
    ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Adadelta", {"lr": 0.5}),
])
def test_default_steps_equal_the_dense_equivalent_bit_for_bit(name, hypers):
    a, sparse, b, dense_ = _dense_pair(optim.load(name), hypers)
    for p, q in zip(sparse, dense_, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
        assert a.state[p].keys() == b.state[q].keys()
        for key, value in b.state[q].items():
            np.testing.assert_array_equal(a.state[p][key], value, err_msg=key)


def test_a_param_without_rows_in_its_gradient_still_counts_the_step():
    """An empty RowSparse is a zero gradient: Adagrad (dense semantics) and SparseAdam
    (lazy) both count the step, as torch's do, and SparseAdam changes nothing else."""
    for cls in (optim.Adagrad, optim.SparseAdam):
        p = Param(np.ones((4, 2)))
        opt = cls([p])
        p.grad = RowSparse(np.zeros(0, np.int64), np.zeros((0, 2)))
        opt.step()
        assert opt.state[p]["step"] == 1
        np.testing.assert_array_equal(p.data, np.ones((4, 2)))
    q = torch.nn.Parameter(torch.ones(4, 2, dtype=torch.float64))
    ref = torch.optim.SparseAdam([q])
    q.grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long),
                                     torch.zeros(0, 2, dtype=torch.float64), (4, 2))
    ref.step()
    assert ref.state[q]["step"] == 1
