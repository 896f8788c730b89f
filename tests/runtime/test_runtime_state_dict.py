"""state_dict / load_state_dict: torch.optim's layout, bit-exact resume, and validation that
leaves the optimizer exactly as it was on any bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from rt_util import (
    assert_bits_equal,
    assert_state_dicts_equal,
    make_arrays,
    set_grads,
    train,
)

import optdsl
from optdsl import Param
from optdsl.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop

# Every stdlib optimizer with non-default options, and a second group that differs again.
CONFIGS = [
    (
        SGD,
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
        {"nesterov": True, "dampening": 0.0, "maximize": True},
    ),
    (
        Adam,
        {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 1e-2, "amsgrad": True},
        {"lr": 3e-2, "decoupled_weight_decay": True, "amsgrad": False},
    ),
    (AdamW, {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}, {"maximize": True}),
    (
        RMSprop,
        {"lr": 1e-2, "alpha": 0.9, "centered": True, "momentum": 0.5, "weight_decay": 1e-3},
        {"centered": False, "momentum": 0.0},
    ),
    (
        Adagrad,
        {"lr": 0.1, "lr_decay": 1e-2, "initial_accumulator_value": 0.1, "weight_decay": 1e-2},
        {"eps": 1e-6},
    ),
    (Adadelta, {"lr": 0.5, "rho": 0.95, "weight_decay": 1e-2}, {"maximize": True, "eps": 1e-4}),
]
IDS = [c[0].__name__ for c in CONFIGS]


def _params():
    """Two groups of float64 and float32 params, so layouts span groups and dtypes."""
    a, b = make_arrays(np.float64, seed=3)
    c, d = make_arrays(np.float32, shapes=((2, 2), (3,)), seed=4)
    return [Param(x) for x in (a, c, b, d)]


def _groups(params, override):
    return [{"params": params[:2]}, {"params": params[2:], **override}]


@pytest.mark.parametrize("cls, defaults, override", CONFIGS, ids=IDS)
def test_resume_is_bit_identical(cls, defaults, override):
    params = _params()
    opt = cls(_groups(params, override), **defaults)
    train(opt, params, 1, 8)

    params2 = _params()
    opt2 = cls(_groups(params2, override), **defaults)
    train(opt2, params2, 1, 4)
    sd = opt2.state_dict()
    # Resume on copies of the params, in an optimizer built with *default* hypers and no
    # overrides: load_state_dict must restore every group's hypers.
    resumed = [Param(p.data.copy()) for p in params2]
    del opt2, params2
    opt3 = cls([{"params": resumed[:2]}, {"params": resumed[2:]}])
    opt3.load_state_dict(sd)
    for group, saved in zip(opt3.param_groups, sd["param_groups"], strict=True):
        assert {k: v for k, v in group.items() if k != "params"} == {
            k: v for k, v in saved.items() if k != "params"
        }
    train(opt3, resumed, 5, 8)

    for p, q in zip(params, resumed, strict=True):
        assert_bits_equal(q.data, p.data, "resumed trajectory")
    assert_state_dicts_equal(opt3.state_dict(), opt.state_dict())


def test_layout_is_torch_optims():
    params = _params()
    opt = Adam([{"params": params[:2], "name": "x"}, {"params": params[2:], "lr": 0.1}])
    params[1].grad = None
    set_grads([params[0]], 1)
    for i in (2, 3):
        params[i].grad = np.ones_like(params[i].data)
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert sorted(sd["state"]) == [0, 2, 3]  # param 1 never stepped: no state, as in torch
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][0]["step"] == 1 and type(sd["state"][0]["step"]) is int
    assert sd["param_groups"][0]["name"] == "x"
    assert sd["param_groups"][1]["lr"] == 0.1
    assert set(sd["param_groups"][0]) == {"params", "name", *Adam._spec.hypers}
    assert sd["state"][3]["exp_avg"].dtype == np.float32
    assert sd["state"][0]["exp_avg"].shape == params[0].data.shape


def test_state_dict_arrays_are_copies():
    params = _params()
    opt = Adam(params)
    train(opt, params, 1, 2)
    sd = opt.state_dict()
    saved = np.array(sd["state"][0]["exp_avg"])
    assert not np.shares_memory(sd["state"][0]["exp_avg"], opt.state[params[0]]["exp_avg"])
    sd["state"][0]["exp_avg"][...] = 99.0  # editing the dict does not touch the optimizer
    assert not np.any(opt.state[params[0]]["exp_avg"] == 99.0)
    train(opt, params, 3, 3)  # stepping does not touch the dict
    sd2 = opt.state_dict()
    assert sd["state"][0]["step"] == 2
    assert not np.array_equal(sd2["state"][0]["exp_avg"], saved)


def test_loaded_arrays_are_copies():
    params = _params()
    opt = Adam(params)
    train(opt, params, 1, 2)
    sd = opt.state_dict()
    expected = copy.deepcopy(sd)
    twin = [Param(p.data.copy()) for p in params]
    opt2 = Adam(twin)
    opt2.load_state_dict(sd)
    sd["state"][0]["exp_avg"][...] = 5.0
    assert_state_dicts_equal(opt2.state_dict(), expected)
    train(opt2, twin, 3, 3)
    assert not np.any(sd["state"][1]["exp_avg"] != expected["state"][1]["exp_avg"])


def test_loading_clears_state_for_params_absent_from_the_dict():
    params = _params()
    opt = Adam(params)
    sd_empty = opt.state_dict()
    train(opt, params, 1, 2)
    opt.load_state_dict(sd_empty)
    assert opt.state_dict()["state"] == {}
    for p in params:
        p.grad = np.ones_like(p.data)
    opt.step()
    assert opt.state[params[0]]["step"] == 1


def test_loaded_state_shares_one_buffer():
    params = _params()
    opt = Adam(params)
    train(opt, params, 1, 2)
    opt2 = Adam([Param(p.data.copy()) for p in params])
    opt2.load_state_dict(opt.state_dict())
    ps = opt2.param_groups[0]["params"]
    assert opt2.state[ps[0]]["exp_avg"].base is opt2.state[ps[2]]["exp_avg"].base
    assert opt2.state[ps[1]]["exp_avg"].base is opt2.state[ps[3]]["exp_avg"].base
    assert opt2.state[ps[1]]["exp_avg"].dtype == np.float32


# --- validation ---------------------------------------------------------------------------


def _bad(sd, edit):
    sd = copy.deepcopy(sd)
    edit(sd)
    return sd


def _set(path, value):
    def edit(sd):
        target = sd
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value

    return edit


def _delete(path):
    def edit(sd):
        target = sd
        for k in path[:-1]:
            target = target[k]
        del target[path[-1]]

    return edit


BAD = [
    (
        "one group",
        lambda sd: sd["param_groups"].pop(),
        "the state_dict has 1 param groups, the optimizer has 2",
    ),
    (
        "three groups",
        lambda sd: sd["param_groups"].append({"params": []}),
        "the state_dict has 3 param groups, the optimizer has 2",
    ),
    (
        "params short",
        lambda sd: sd["param_groups"][1]["params"].pop(),
        "param group 1 has 1 params in the state_dict but 2 here",
    ),
    (
        "params not a list",
        _set(["param_groups", 0, "params"], 7),
        "param group 0: 'params' must be a list of param ids",
    ),
    (
        "repeated id",
        _set(["param_groups", 1, "params"], [0, 3]),
        "bad or repeated param id 0 in group 1",
    ),
    ("string id", _set(["param_groups", 0, "params"], ["0", 1]), "bad or repeated param id '0'"),
    (
        "shape",
        _set(["state", 3, "exp_avg"], np.zeros(4, np.float32)),
        r"state of param 3: 'exp_avg' has shape \(4,\), the parameter has \(3,\)",
    ),
    (
        "unknown state",
        lambda sd: sd["state"][2].update(exp_avgg=np.zeros((4, 3))),
        "state of param 2: unknown state 'exp_avgg'; did you mean 'exp_avg'\\?",
    ),
    (
        "string state",
        _set(["state", 0, "exp_avg"], np.full((4, 3), "x")),
        "'exp_avg' has dtype <U1, expected floats",
    ),
    ("negative step", _set(["state", 3, "step"], -1), "'step' must be a whole number >= 0"),
    ("fractional step", _set(["state", 3, "step"], 2.5), "'step' must be a whole number >= 0"),
    ("nan step", _set(["state", 3, "step"], float("nan")), "'step' must be a whole number"),
    ("string step", _set(["state", 3, "step"], "3"), "'step' must be a number, got '3'"),
    ("word step", _set(["state", 3, "step"], "three"), "'step' must be a number"),
    ("bool step", _set(["state", 3, "step"], True), "'step' must be a number, got True"),
    ("list step", _set(["state", 3, "step"], [1, 2]), "'step' must be a number"),
    ("1-element step", _set(["state", 3, "step"], [3]), "'step' must be a number"),
    ("entry not a dict", _set(["state", 3], [1, 2]), "state of param 3 must be a dict"),
    ("no state", _delete(["state"]), "expected a dict with 'state' and 'param_groups'"),
    ("no groups", _delete(["param_groups"]), "expected a dict with 'state' and 'param_groups'"),
    (
        "group without params",
        _delete(["param_groups", 1, "params"]),
        "param group 1 has no 'params'",
    ),
    ("groups not a list", _set(["param_groups"], {"params": [0]}), "'param_groups' must be a list"),
    (
        "unlisted id",
        lambda sd: sd["state"].update({9: sd["state"][0]}),
        "state for param id 9, which no param group lists",
    ),
    (
        "bad lr",
        _set(["param_groups", 1, "lr"], -1.0),
        r"param group 1: Adam: invalid lr: -1\.0; expected in \[0, inf\)",
    ),
    (
        "bad betas",
        _set(["param_groups", 0, "betas"], "0.9"),
        "param group 0: Adam: betas must be a tuple of 2 numbers",
    ),
    ("nan eps", _set(["param_groups", 1, "eps"], float("nan")), "param group 1: .*invalid eps"),
]


@pytest.mark.parametrize("edit, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_state_dict_is_rejected_and_changes_nothing(edit, message):
    params, twin = _params(), _params()
    opt = Adam(_groups(params, {"lr": 0.05}), amsgrad=True)
    opt_twin = Adam(_groups(twin, {"lr": 0.05}), amsgrad=True)
    train(opt, params, 1, 3)
    train(opt_twin, twin, 1, 3)
    good = opt.state_dict()
    # A valid source with different values, so a partial load would be visible.
    other_params = _params()
    other = Adam(_groups(other_params, {"lr": 0.01}), betas=(0.5, 0.6), amsgrad=True)
    train(other, other_params, 1, 5)
    bad = _bad(other.state_dict(), edit)

    with pytest.raises(optdsl.StateDictError, match=message):
        opt.load_state_dict(bad)
    assert_state_dicts_equal(opt.state_dict(), good)
    train(opt, params, 4, 5)
    train(opt_twin, twin, 4, 5)
    for p, q in zip(params, twin, strict=True):
        assert_bits_equal(p.data, q.data, "the step after a rejected load")
    assert_state_dicts_equal(opt.state_dict(), opt_twin.state_dict())


def test_state_dict_error_is_a_value_error():
    opt = Adam(_params())
    with pytest.raises(ValueError):
        opt.load_state_dict({"state": {}})


def test_missing_step_with_state_counts_as_stepped():
    """A dict without 'step' (torch.optim.SGD keeps none) must not replay the first step,
    which for SGD would overwrite the loaded momentum buffer with the gradient."""
    params, twin = _params(), _params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt_twin = SGD(twin, lr=0.1, momentum=0.9)
    train(opt, params, 1, 3)
    train(opt_twin, twin, 1, 3)
    sd = opt.state_dict()
    for entry in sd["state"].values():
        del entry["step"]
    opt_twin.load_state_dict(sd)
    assert opt_twin.state[twin[0]]["step"] >= 1
    train(opt, params, 4, 6)
    train(opt_twin, twin, 4, 6)
    for p, q in zip(params, twin, strict=True):
        assert_bits_equal(q.data, p.data)


def test_missing_step_without_state_is_zero():
    params = _params()
    opt = Adam(params)
    sd = {"state": {0: {}}, "param_groups": opt.state_dict()["param_groups"]}
    opt.load_state_dict(sd)
    assert opt.state_dict()["state"][0] == {"step": 0}
    train(opt, params, 1, 1)
    assert opt.state[params[0]]["step"] == 1


def test_none_state_entries_are_absent_states():
    params = _params()
    opt = SGD(params, lr=0.1)
    sd = opt.state_dict()
    sd["state"] = {0: {"momentum_buffer": None}}
    opt.load_state_dict(sd)
    assert "momentum_buffer" not in opt.state[params[0]]
    train(opt, params, 1, 1)


def test_integer_like_values_are_accepted():
    params, twin = _params(), _params()
    opt = Adam(params)
    train(opt, params, 1, 2)
    sd = opt.state_dict()
    for entry in sd["state"].values():
        entry["step"] = np.float32(entry["step"])  # torch keeps step as a float tensor
    sd["state"] = {np.int64(k): v for k, v in sd["state"].items()}
    opt2 = Adam(twin)
    opt2.load_state_dict(sd)
    assert opt2.state[twin[0]]["step"] == 2 and type(opt2.state[twin[0]]["step"]) is int
