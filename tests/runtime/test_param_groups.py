"""Param groups: per-group overrides, add_param_group, and the errors torch.optim raises."""

from __future__ import annotations

import numpy as np
import pytest
from rt_util import assert_bits_equal, grad, make_arrays, params_from, set_grads, train

import optdsl
from optdsl import Param
from optdsl.optim import SGD, Adam, RMSprop

GROUP_CASES = [
    (Adam, {"lr": 1e-2}, {"lr": 0.1, "betas": (0.8, 0.95), "amsgrad": True}),
    (SGD, {"lr": 0.1, "momentum": 0.9}, {"momentum": 0.5, "dampening": 0.2, "weight_decay": 0.1}),
    (RMSprop, {"lr": 1e-2}, {"centered": True, "momentum": 0.3}),
]


@pytest.mark.parametrize(
    "cls, defaults, override", GROUP_CASES, ids=[c[0].__name__ for c in GROUP_CASES]
)
def test_group_overrides_match_separate_optimizers(cls, defaults, override):
    arrays = make_arrays()
    a, b = params_from(arrays)
    opt = cls([{"params": [a]}, {"params": [b], **override}], **defaults)
    assert opt.param_groups[0]["lr"] == defaults["lr"]
    for k, v in override.items():
        assert opt.param_groups[1][k] == v

    solo_a, solo_b = params_from(arrays)
    opt_a = cls([solo_a], **defaults)
    opt_b = cls([solo_b], **{**defaults, **override})
    for step in range(1, 8):
        set_grads([a, b], step)
        opt.step()
        set_grads([solo_a, solo_b], step)
        opt_a.step()
        opt_b.step()
        assert_bits_equal(a.data, solo_a.data, f"group 0, step {step}")
        assert_bits_equal(b.data, solo_b.data, f"group 1, step {step}")
    # The override really did something: group 1 differs from a run with the defaults.
    plain = params_from(arrays)[1]
    opt_plain = cls([plain], **defaults)
    for step in range(1, 8):
        plain.grad = grad(step, plain.data, 1)
        opt_plain.step()
    assert not np.array_equal(plain.data, b.data)


def test_add_param_group_later_steps_new_params_with_their_hypers():
    arrays = make_arrays()
    a, b = params_from(arrays)
    opt = Adam([a], lr=0.05, betas=(0.8, 0.9))
    train(opt, [a], 1, 3)
    opt.add_param_group({"params": [b], "lr": 0.2})
    group = opt.param_groups[1]
    # Missing keys come from the optimizer's defaults (the constructor's keywords), as in torch.
    assert group["lr"] == 0.2 and group["betas"] == (0.8, 0.9)

    ref_a, ref_b = params_from(arrays)
    opt_ref_a = Adam([ref_a], lr=0.05, betas=(0.8, 0.9))
    train(opt_ref_a, [ref_a], 1, 3)
    opt_ref_b = Adam([ref_b], lr=0.2, betas=(0.8, 0.9))
    for step in range(4, 9):
        set_grads([a, b], step)
        opt.step()
        set_grads([ref_a, ref_b], step)
        opt_ref_a.step()
        opt_ref_b.step()
    assert_bits_equal(a.data, ref_a.data, "old group")
    assert_bits_equal(b.data, ref_b.data, "added group")
    assert opt.state[a]["step"] == 8 and opt.state[b]["step"] == 5


def test_same_param_in_two_groups_is_a_value_error():
    a, b = params_from(make_arrays())
    with pytest.raises(ValueError, match="more than one parameter group"):
        Adam([{"params": [a, b]}, {"params": [a]}])
    opt = Adam([a])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [b, a]})
    assert len(opt.param_groups) == 1  # the failed add left nothing behind
    with pytest.raises(ValueError, match="same parameter twice"):
        Adam([a, a])


def test_empty_params_is_a_value_error():
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD(iter(()), lr=0.1)


def test_raw_arrays_are_a_type_error():
    with pytest.raises(TypeError, match="single ndarray"):
        Adam(np.zeros(3))
    with pytest.raises(TypeError, match=r"ndarray is not a parameter.*optdsl\.Param"):
        Adam([np.zeros(3)])


def test_a_single_param_is_a_type_error_as_in_torch():
    with pytest.raises(TypeError, match="single Param"):
        Adam(Param(np.zeros(3)))


def test_group_without_params_is_a_type_error():
    a = Param(np.zeros(3))
    with pytest.raises(TypeError, match="needs a 'params' entry"):
        Adam([{"params": [a]}, {"lr": 0.1}])
    opt = Adam([a])
    with pytest.raises(TypeError, match="needs a 'params' entry"):
        opt.add_param_group({"lr": 0.1})
    with pytest.raises(TypeError, match="must be a dict"):
        opt.add_param_group([Param(np.zeros(2))])


def test_integer_params_are_a_type_error():
    with pytest.raises(TypeError, match="floating-point"):
        Adam([Param(np.zeros(3, np.int64))])


def test_extra_group_keys_are_kept():
    a, b = params_from(make_arrays())
    opt = Adam(
        [
            {"params": [a], "name": "encoder", "initial_lr": 0.01},
            {"params": [b], "lr": 0.1, "weight_decay_filter": None},
        ],
        lr=0.01,
    )
    assert opt.param_groups[0]["name"] == "encoder"
    assert opt.param_groups[0]["initial_lr"] == 0.01
    assert "weight_decay_filter" in opt.param_groups[1]
    set_grads([a, b], 1)
    opt.step()  # extra keys do not disturb stepping
    sd = opt.state_dict()
    assert sd["param_groups"][0]["name"] == "encoder"
    assert sd["param_groups"][0]["initial_lr"] == 0.01
    twin = Adam([{"params": [Param(a.data.copy())]}, {"params": [Param(b.data.copy())]}])
    twin.load_state_dict(sd)
    assert twin.param_groups[0]["name"] == "encoder"
    assert twin.param_groups[1]["lr"] == 0.1


@pytest.mark.parametrize(
    "key, expected", [("lrr", "lr"), ("beta", "betas"), ("amsgard", "amsgrad")]
)
def test_misspelt_group_key_suggests_the_hyper(key, expected):
    a = Param(np.zeros(3))
    with pytest.raises(
        optdsl.HyperTypeError, match=f"unknown param group key '{key}'; did you mean '{expected}'"
    ):
        Adam([{"params": [a], key: 0.1}])
    opt = Adam([a])
    with pytest.raises(optdsl.HyperTypeError, match=f"did you mean '{expected}'"):
        opt.add_param_group({"params": [Param(np.zeros(2))], key: 0.1})
    assert len(opt.param_groups) == 1


def test_bad_hyper_in_a_group_names_it():
    a = Param(np.zeros(3))
    with pytest.raises(optdsl.HyperError, match=r"invalid lr: -1\.0; expected in \[0, inf\)"):
        Adam([{"params": [a], "lr": -1}])
    with pytest.raises(optdsl.HyperError, match="Nesterov momentum requires"):
        SGD([{"params": [a], "nesterov": True}], lr=0.1)


def test_sets_of_params_are_a_type_error_as_in_torch():
    """A set has no order, and the order numbers params in the state_dict."""
    a, b = params_from(make_arrays())
    with pytest.raises(TypeError, match="not a set"):
        Adam({a, b})
    with pytest.raises(TypeError, match="not a set"):
        Adam([{"params": {a, b}}])
    opt = Adam([a])
    with pytest.raises(TypeError, match="not a set"):
        opt.add_param_group({"params": {b}})


def test_a_single_param_as_a_group_s_params():
    a, b = params_from(make_arrays())
    opt = SGD([{"params": a}, {"params": b, "lr": 0.5}], lr=0.1)
    assert opt.param_groups[0]["params"] == [a] and opt.param_groups[1]["params"] == [b]
