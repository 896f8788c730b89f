"""Changing hypers in param_groups between steps: values apply at once, kernels are reused,
host-`if` flips compile once, and bad values raise clearly without stepping anything."""

from __future__ import annotations

import numpy as np
import pytest
from rt_util import (
    adam_reference,
    assert_bits_equal,
    assert_close,
    assert_state_dicts_equal,
    fresh_class,
    grad,
    make_arrays,
    params_from,
    set_grads,
    train,
)

import optdsl


def test_lr_change_applies_at_the_next_step_without_compiling():
    SGD = fresh_class("SGD")
    p = optdsl.Param(make_arrays()[0])
    opt = SGD([p], lr=0.1)
    train(opt, [p], 1, 2)
    n_kernels = len(SGD._spec.kernels)
    for step, lr in [(3, 0.5), (4, 0.0), (5, 2.0)]:
        opt.param_groups[0]["lr"] = lr
        before = p.data.copy()
        p.grad = grad(step, p.data)
        opt.step()
        assert_bits_equal(p.data, before - lr * p.grad, f"lr={lr}")
    assert len(SGD._spec.kernels) == n_kernels


def test_adam_hyper_changes_match_the_written_out_rule():
    Adam = fresh_class("Adam")
    x = make_arrays()[0]
    p = optdsl.Param(x.copy())
    opt = Adam([p], lr=1e-2)
    rp, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
    schedule = {
        1: {},
        2: {},
        3: {"lr": 0.1},
        4: {"betas": (0.5, 0.9)},
        5: {"eps": 1e-3, "weight_decay": 0.1},
        6: {"lr": 0.0},
    }
    hyper = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    counts = []
    for t, change in schedule.items():
        opt.param_groups[0].update(change)
        hyper.update(change)
        p.grad = grad(t, p.data)
        rp, m, v, _ = adam_reference(rp, grad(t, rp), m, v, t, **hyper)
        opt.step()
        assert_close(p.data, rp, f"step {t}")
        assert_close(opt.state[p]["exp_avg"], m, f"step {t}")
        counts.append(len(Adam._spec.kernels))
    # weight_decay != 0 is a host if: exactly one more kernel, at step 5; nothing else.
    assert counts == [1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "name, flag", [("Adam", "maximize"), ("SGD", "nesterov"), ("RMSprop", "centered")]
)
def test_host_if_flip_compiles_one_kernel_once(name, flag):
    cls = fresh_class(name)
    kwargs = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    a, b = params_from(make_arrays())
    opt = cls([a, b], **kwargs)
    train(opt, [a, b], 1, 3)  # SGD's first step is its own kernel: warm both paths
    base = len(cls._spec.kernels)
    opt.param_groups[0][flag] = True
    train(opt, [a, b], 4, 4)
    assert len(cls._spec.kernels) == base + 1
    opt.param_groups[0][flag] = False
    train(opt, [a, b], 5, 5)
    opt.param_groups[0][flag] = True
    train(opt, [a, b], 6, 7)
    assert len(cls._spec.kernels) == base + 1
    if name == "RMSprop":
        assert "grad_avg" in opt.state[a]


def test_maximize_flip_is_gradient_ascent():
    SGD = fresh_class("SGD")
    p = optdsl.Param(np.ones(4))
    opt = SGD([p], lr=0.25)
    p.grad = np.full(4, 2.0)
    opt.step()
    assert_bits_equal(p.data, np.full(4, 0.5))
    opt.param_groups[0]["maximize"] = True
    opt.step()
    assert_bits_equal(p.data, np.full(4, 1.0))


def test_amsgrad_turned_on_mid_run():
    Adam = fresh_class("Adam")
    arrays = make_arrays()
    a, b = params_from(arrays)
    opt = Adam([a, b], lr=1e-2)
    train(opt, [a, b], 1, 3)
    assert "max_exp_avg_sq" not in opt.state[a]
    n = len(Adam._spec.kernels)
    opt.param_groups[0]["amsgrad"] = True
    ref = []
    for i, p in enumerate((a, b)):
        st = opt.state[p]
        ref.append(
            adam_reference(
                p.data.copy(),
                grad(4, p.data, i),
                np.array(st["exp_avg"]),
                np.array(st["exp_avg_sq"]),
                4,
                lr=1e-2,
                vmax=np.zeros_like(p.data),
            )
        )
    train(opt, [a, b], 4, 4)
    assert len(Adam._spec.kernels) == n + 1
    for p, (rp, rm, _rv, rvmax) in zip((a, b), ref, strict=True):
        # Created at zero, then max(0, v): equal to v after the first amsgrad step.
        assert_close(opt.state[p]["max_exp_avg_sq"], rvmax)
        assert_bits_equal(opt.state[p]["max_exp_avg_sq"], opt.state[p]["exp_avg_sq"])
        assert_close(p.data, rp)
        assert_close(opt.state[p]["exp_avg"], rm)
    train(opt, [a, b], 5, 6)
    assert len(Adam._spec.kernels) == n + 1
    assert np.all(opt.state[a]["max_exp_avg_sq"] >= opt.state[a]["exp_avg_sq"])


@pytest.mark.parametrize(
    "cls_name, key, value, error, message",
    [
        ("Adam", "lr", -1, optdsl.HyperError, r"Adam: invalid lr: -1\.0; expected in \[0, inf\)"),
        (
            "Adam",
            "betas",
            0.5,
            optdsl.HyperTypeError,
            r"Adam: betas must be a tuple of 2 numbers, got 0\.5",
        ),
        (
            "Adam",
            "betas",
            (0.9, 1.0),
            optdsl.HyperError,
            r"invalid betas\[1\]: 1\.0; expected in \[0, 1\)",
        ),
        ("Adam", "eps", float("nan"), optdsl.HyperError, "invalid eps: nan"),
        ("Adam", "amsgrad", "yes", optdsl.HyperTypeError, "amsgrad must be True or False"),
        (
            "SGD",
            "nesterov",
            True,
            optdsl.HyperError,
            "SGD: Nesterov momentum requires a momentum and zero dampening",
        ),
        ("SGD", "dampening", float("nan"), optdsl.HyperError, "invalid dampening: nan"),
    ],
)
def test_invalid_value_in_param_groups_raises_at_the_next_step(
    cls_name, key, value, error, message
):
    cls = getattr(optdsl.optim, cls_name)
    arrays = make_arrays()
    params = params_from(arrays)
    # Two groups: the bad value is in the second, so a partial step would show in the first.
    opt = cls([{"params": params[:1]}, {"params": params[1:]}], lr=0.01)
    train(opt, params, 1, 2)
    before = opt.state_dict()
    data = [p.data.copy() for p in params]
    opt.param_groups[1][key] = value
    set_grads(params, 3)
    with pytest.raises(error, match=message):
        opt.step()
    with pytest.raises(error, match=message):  # still bad, still raising
        opt.step()
    for p, d in zip(params, data, strict=True):
        assert_bits_equal(p.data, d, "a param moved although step() raised")
    sd = opt.state_dict()
    sd["param_groups"][1][key] = before["param_groups"][1][key]
    assert_state_dicts_equal(sd, before)
    # Put the old value back: stepping resumes as if nothing happened.
    opt.param_groups[1][key] = before["param_groups"][1][key]
    opt.step()
    twin = params_from(arrays)
    opt_twin = cls([{"params": twin[:1]}, {"params": twin[1:]}], lr=0.01)
    train(opt_twin, twin, 1, 3)
    for p, q in zip(params, twin, strict=True):
        assert_bits_equal(p.data, q.data)


def test_a_list_edited_in_place_is_revalidated():
    Adam = optdsl.optim.Adam
    p = optdsl.Param(make_arrays()[0])
    opt = Adam([p])
    opt.param_groups[0]["betas"] = [0.9, 0.99]
    train(opt, [p], 1, 1)
    opt.param_groups[0]["betas"][1] = 1.5
    with pytest.raises(optdsl.HyperError, match=r"invalid betas\[1\]: 1\.5"):
        train(opt, [p], 2, 2)


def test_a_deleted_group_key_falls_back_to_the_default():
    SGD = optdsl.optim.SGD
    p = optdsl.Param(np.ones(3))
    opt = SGD([p], lr=0.5)
    del opt.param_groups[0]["lr"]
    p.grad = np.ones(3)
    opt.step()
    assert_bits_equal(p.data, np.full(3, 0.5))


def test_an_array_put_in_a_group_gets_a_clear_error():
    p = optdsl.Param(make_arrays()[0])
    opt = optdsl.optim.Adam([p])
    train(opt, [p], 1, 1)
    opt.param_groups[0]["betas"] = np.array([0.9, 0.99])
    with pytest.raises(optdsl.HyperTypeError, match="betas must be a tuple of 2 numbers"):
        train(opt, [p], 2, 2)
