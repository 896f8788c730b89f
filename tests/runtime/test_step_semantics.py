"""step() and zero_grad(): closures, skipped params, duck-typed params, dtypes, layouts."""

from __future__ import annotations

import numpy as np
import pytest
from rt_util import (
    assert_bits_equal,
    assert_state_dicts_equal,
    grad,
    make_arrays,
    params_from,
    set_grads,
    train,
)

import optdsl
from optdsl import Param
from optdsl.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop

ALL = [
    (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (Adam, {"lr": 1e-2, "amsgrad": True}),
    (AdamW, {"lr": 1e-2}),
    (RMSprop, {"lr": 1e-2, "centered": True, "momentum": 0.5}),
    (Adagrad, {"lr": 0.1, "lr_decay": 0.01}),
    (Adadelta, {"lr": 0.5}),
]
IDS = [c[0].__name__ for c in ALL]


def test_zero_grad_sets_to_none():
    a, b = params_from(make_arrays())
    opt = Adam([a, b])
    set_grads([a, b], 1)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_zero_grad_in_place_keeps_the_array():
    a, b = params_from(make_arrays())
    opt = Adam([a, b])
    set_grads([a, b], 1)
    ga = a.grad
    opt.zero_grad(set_to_none=False)
    assert a.grad is ga
    assert np.all(ga == 0)
    assert np.all(b.grad == 0)
    b.grad = None
    opt.zero_grad(set_to_none=False)  # a param without a grad stays without one
    assert b.grad is None


def test_step_calls_the_closure_once_and_returns_its_loss():
    a = Param(np.ones(3))
    opt = SGD([a], lr=0.5)
    calls = []

    def closure():
        calls.append(1)
        a.grad = np.full(3, 2.0)
        return 7.25

    assert opt.step(closure) == 7.25
    assert len(calls) == 1
    # The closure ran before the update: it set the gradient the step used.
    assert_bits_equal(a.data, np.zeros(3))
    a.grad = np.ones(3)
    assert opt.step() is None


@pytest.mark.parametrize("cls, kwargs", ALL, ids=IDS)
def test_params_without_grad_are_skipped_and_their_state_untouched(cls, kwargs):
    arrays = make_arrays()
    a, b = params_from(arrays)
    opt = cls([a, b], **kwargs)
    train(opt, [a, b], 1, 3)
    state_b = {k: (np.array(v, copy=True) if k != "step" else v) for k, v in opt.state[b].items()}
    data_b = b.data.copy()
    for step in range(4, 7):
        a.grad = grad(step, a.data, 0)
        b.grad = None
        opt.step()
    assert_bits_equal(b.data, data_b, "skipped param moved")
    assert opt.state[b]["step"] == 3
    assert set(opt.state[b]) == set(state_b)
    for k, v in state_b.items():
        if k != "step":
            assert_bits_equal(opt.state[b][k], v, f"state {k} of a skipped param")
    assert opt.state[a]["step"] == 6

    # b resumes at its own step count (t = 4), like a param of a fresh run that skipped
    # nothing: compare with an optimizer that only ever saw b's three earlier steps.
    ref = params_from(arrays)[1]
    opt_ref = cls([ref], **kwargs)
    for step in range(1, 4):
        ref.grad = grad(step, ref.data, 1)
        opt_ref.step()
    for p in (b, ref):
        p.grad = grad(4, p.data, 1)
    a.grad = None
    opt.step()
    opt_ref.step()
    assert_bits_equal(b.data, ref.data, "resumed param")


def test_a_param_that_never_had_a_grad_has_no_state():
    a, b = params_from(make_arrays())
    opt = Adam([a, b])
    a.grad = grad(1, a.data)
    opt.step()
    assert b not in opt.state
    assert list(opt.state_dict()["state"]) == [0]


class Weights:
    """Not an optdsl.Param: just .data and .grad (and something else)."""

    def __init__(self, data):
        self.data = data
        self.grad = None
        self.requires_grad = True


@pytest.mark.parametrize("cls, kwargs", ALL, ids=IDS)
def test_any_object_with_data_and_grad_is_a_param(cls, kwargs):
    arrays = make_arrays()
    custom = [Weights(a.copy()) for a in arrays]
    plain = params_from(arrays)
    opt_c, opt_p = cls(custom, **kwargs), cls(plain, **kwargs)
    train(opt_c, custom, 1, 4)
    train(opt_p, plain, 1, 4)
    for c, p in zip(custom, plain, strict=True):
        assert_bits_equal(c.data, p.data)
        assert not np.array_equal(c.data, arrays[0] if c is custom[0] else arrays[1])
    assert_state_dicts_equal(opt_c.state_dict(), opt_p.state_dict())


@pytest.mark.parametrize("cls, kwargs", ALL, ids=IDS)
def test_dtypes_are_kept_and_mixed_groups_match_solo_runs(cls, kwargs):
    a32, b32 = make_arrays(np.float32, seed=1)
    a64, b64 = make_arrays(np.float64, seed=2)
    mixed = [Param(a32.copy()), Param(a64.copy()), Param(b32.copy()), Param(b64.copy())]
    opt = cls(mixed, **kwargs)
    solos = [Param(x.copy()) for x in (a32, a64, b32, b64)]
    solo_opts = [cls([s], **kwargs) for s in solos]
    for step in range(1, 6):
        for i, (p, s) in enumerate(zip(mixed, solos, strict=True)):
            p.grad = grad(step, p.data, i)
            s.grad = grad(step, s.data, i)
        opt.step()
        for o in solo_opts:
            o.step()
    for p, s, dtype in zip(mixed, solos, ["float32", "float64"] * 2, strict=True):
        assert p.data.dtype == dtype
        for k, v in opt.state[p].items():
            if k != "step":
                assert v.dtype == dtype, k
        assert_bits_equal(p.data, s.data, f"{dtype} param in a mixed group")


@pytest.mark.parametrize("cls, kwargs", ALL, ids=IDS)
def test_non_contiguous_param_is_updated_in_place(cls, kwargs):
    base = make_arrays(shapes=((3, 5), (4, 6)))
    holders = [b.copy() for b in base]
    views = [holders[0].T, holders[1][:, ::2]]  # a transpose and a strided slice
    assert not any(v.flags.c_contiguous for v in views)
    strided = [Param(v) for v in views]
    plain = [Param(np.ascontiguousarray(v)) for v in views]
    opt_s, opt_p = cls(strided, **kwargs), cls(plain, **kwargs)
    train(opt_s, strided, 1, 4)
    train(opt_p, plain, 1, 4)
    for s, p, v, h, b in zip(strided, plain, views, holders, base, strict=True):
        assert s.data is v
        assert_bits_equal(np.ascontiguousarray(s.data), p.data)
        assert not np.array_equal(h, b)  # the user's array changed in place
    # The slice wrote only its own columns of the holder.
    assert_bits_equal(holders[1][:, 1::2], base[1][:, 1::2])


def test_transposed_view_and_strided_grad():
    w = np.arange(12, dtype=np.float64).reshape(3, 4) / 10 + 0.5
    p = Param(w.T)  # a view of w
    opt = SGD([p], lr=0.5)
    g_base = np.ones((3, 4)) * np.arange(1, 5)
    p.grad = g_base.T  # a strided gradient too
    opt.step()
    expected = (np.arange(12, dtype=np.float64).reshape(3, 4) / 10 + 0.5) - 0.5 * g_base
    assert_bits_equal(w, expected)  # the update went through the view into w


@pytest.mark.parametrize(
    "bad_grad, message",
    [
        (np.zeros(4), r"gradient shape \(4,\) does not match parameter shape \(5,\)"),
        (np.zeros(5, np.float32), "gradient dtype float32 does not match parameter dtype float64"),
    ],
)
def test_bad_grad_raises_before_anything_moves(bad_grad, message):
    a, b = params_from(make_arrays())
    opt = Adam([a, b], lr=0.1)
    train(opt, [a, b], 1, 2)
    before = opt.state_dict()
    data_a = a.data.copy()
    a.grad = grad(3, a.data)
    b.grad = bad_grad
    with pytest.raises(optdsl.OptdslError, match=message):
        opt.step()
    assert_bits_equal(a.data, data_a, "a stepped although the step raised")
    assert_state_dicts_equal(opt.state_dict(), before)


def test_state_is_a_defaultdict_as_in_torch():
    a, b = params_from(make_arrays())
    opt = Adam([a, b])
    entry = opt.state[a]  # looking before the first step gives {} (torch: defaultdict(dict))
    assert entry == {}
    assert opt.state_dict()["state"] == {}  # and looking adds nothing to a checkpoint
    set_grads([a, b], 1)
    opt.step()
    assert opt.state[a] is entry  # filled in place: a reference taken earlier sees it
    assert entry["step"] == 1 and set(entry) == {"step", "exp_avg", "exp_avg_sq"}


def test_param_appended_to_a_group_list_is_stepped():
    arrays = make_arrays(shapes=((4, 3), (5,), (2, 3)))
    a, b, c = params_from(arrays)
    opt = SGD([a, b], lr=0.1, momentum=0.9)
    ref_ab = params_from(arrays[:2])
    opt_ab = SGD(ref_ab, lr=0.1, momentum=0.9)
    ref_c = params_from(arrays[2:])
    opt_c = SGD(ref_c, lr=0.1, momentum=0.9)
    train(opt, [a, b], 1, 3)
    train(opt_ab, ref_ab, 1, 3)
    opt.param_groups[0]["params"].append(c)  # torch code does this; state comes lazily
    for step in range(4, 7):
        set_grads([a, b, c], step)
        opt.step()
        set_grads(ref_ab, step)
        opt_ab.step()
        c_ref = ref_c[0]
        c_ref.grad = grad(step, c_ref.data, 2)
        opt_c.step()
    for p, q in zip([a, b, c], [*ref_ab, ref_c[0]], strict=True):
        assert_bits_equal(p.data, q.data)
    assert opt.state[c]["step"] == 3 and opt.state[a]["step"] == 6
    bases = {id(opt.state[p]["momentum_buffer"].base) for p in (a, b, c)}
    assert len(bases) == 1  # c joined the group's flat buffer


def test_param_changing_dtype_keeps_its_state():
    a = Param(make_arrays()[0])
    opt = SGD([a], lr=0.1, momentum=0.9)
    train(opt, [a], 1, 2)
    buf = np.array(opt.state[a]["momentum_buffer"]).astype(np.float32)
    a.data = a.data.astype(np.float32)  # e.g. a cast to train in lower precision
    a.grad = grad(3, a.data)
    opt.step()
    assert opt.state[a]["step"] == 3
    assert opt.state[a]["momentum_buffer"].dtype == np.float32
    np.testing.assert_allclose(
        opt.state[a]["momentum_buffer"], np.float32(0.9) * buf + a.grad, rtol=1e-6
    )


def test_zero_dim_and_empty_params():
    a, b, c = Param(np.array(1.5)), Param(np.zeros((0, 3))), Param(np.ones(2))
    opt = SGD([a, b, c], lr=0.5, momentum=0.5)
    for _ in range(2):
        a.grad, b.grad, c.grad = np.array(1.0), np.zeros((0, 3)), np.ones(2)
        opt.step()
    assert a.data.shape == () and b.data.shape == (0, 3)
    # buf: 1, then 1.5; p: 1.5 - 0.5 - 0.75
    assert a.data == 0.25 and np.all(c.data == -0.25)
    assert opt.state[a]["momentum_buffer"].shape == ()
