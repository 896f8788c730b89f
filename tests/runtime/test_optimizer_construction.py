"""Errors at construction: the exception types torch users catch, and the exact messages."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl import Param
from optdsl.optim import SGD, Adagrad, Adam, RMSprop

REQUIRED_SPEC = '''optimizer Scaled
"""A required hyper k, an int hyper n and a bounded one."""

hyper k
hyper n: int = 2 in [1, 10]
hyper lr = 0.1 in (0, 1]

update:
    p = p - lr * k * n * g
'''


def params():
    return [Param(np.ones(3))]


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (Adam, {"betas1": 0.9}, r"Adam: unknown keyword 'betas1'; did you mean 'betas'\?"),
        (Adam, {"lrr": 0.1}, r"unknown keyword 'lrr'; did you mean 'lr'\?"),
        (SGD, {"nesterow": True}, r"unknown keyword 'nesterow'; did you mean 'nesterov'\?"),
        (RMSprop, {"xyzzy": 1}, r"unknown keyword 'xyzzy' \(accepted: lr, alpha, eps"),
    ],
)
def test_unknown_keyword(cls, kwargs, message):
    with pytest.raises(TypeError, match=message) as info:
        cls(params(), **kwargs)
    assert isinstance(info.value, optdsl.HyperTypeError)


def test_missing_required_hyper():
    Scaled = optdsl.compile(REQUIRED_SPEC)
    with pytest.raises(optdsl.HyperTypeError, match="Scaled: missing required keyword 'k'"):
        Scaled(params())
    p = Param(np.ones(3))
    opt = Scaled([p], k=0.5)
    p.grad = np.ones(3)
    opt.step()
    assert np.array_equal(p.data, np.full(3, 0.9))
    # A group may set it; but a group that leaves it to the defaults inherits the
    # constructor's value, so only the constructor can be missing it.
    assert opt.param_groups[0]["k"] == 0.5


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"k": 1, "n": 2.5}, optdsl.HyperTypeError, r"n must be a whole number, got 2\.5"),
        ({"k": 1, "n": float("inf")}, optdsl.HyperTypeError, "n must be a whole number, got inf"),
        ({"k": 1, "n": float("nan")}, optdsl.HyperTypeError, "n must be a whole number, got nan"),
        ({"k": 1, "n": 11}, optdsl.HyperError, r"invalid n: 11; expected in \[1, 10\]"),
        ({"k": 1, "lr": 0}, optdsl.HyperError, r"invalid lr: 0\.0; expected in \(0, 1\]"),
        ({"k": "1"}, optdsl.HyperTypeError, "k must be a number, got '1'"),
        ({"k": True}, optdsl.HyperTypeError, "k must be a number, got True"),
        ({"k": 10**400}, optdsl.HyperError, "invalid k: 1000.*; too large"),
    ],
)
def test_custom_spec_types_and_ranges(kwargs, error, message):
    Scaled = optdsl.compile(REQUIRED_SPEC)
    with pytest.raises(error, match=message):
        Scaled(params(), **kwargs)


def test_int_hyper_is_stored_as_int():
    Scaled = optdsl.compile(REQUIRED_SPEC)
    opt = Scaled(params(), k=1, n=np.int64(3))
    assert opt.param_groups[0]["n"] == 3 and type(opt.param_groups[0]["n"]) is int
    opt = Scaled(params(), k=1, n=4.0)
    assert type(opt.param_groups[0]["n"]) is int


@pytest.mark.parametrize(
    "cls, kwargs, error, message",
    [
        (Adam, {"lr": "0.1"}, TypeError, "Adam: lr must be a number, got '0.1'"),
        (Adam, {"lr": None}, TypeError, "lr must be a number, got None"),
        (Adam, {"amsgrad": 1}, TypeError, "amsgrad must be True or False, got 1"),
        (Adam, {"betas": (0.9,)}, TypeError, r"betas must be a tuple of 2 numbers, got \(0\.9,\)"),
        (Adam, {"betas": 0.9}, TypeError, r"betas must be a tuple of 2 numbers, got 0\.9"),
        (Adam, {"lr": -1e-3}, ValueError, r"Adam: invalid lr: -0\.001; expected in \[0, inf\)"),
        (
            Adam,
            {"betas": (0.9, 1.0)},
            ValueError,
            r"invalid betas\[1\]: 1\.0; expected in \[0, 1\)",
        ),
        (Adam, {"eps": -1.0}, ValueError, r"invalid eps: -1\.0"),
        (Adam, {"lr": float("nan")}, ValueError, "invalid lr: nan"),
        (
            Adagrad,
            {"initial_accumulator_value": -0.5},
            ValueError,
            "invalid initial_accumulator_value: -0.5",
        ),
        (SGD, {"momentum": -0.1}, ValueError, r"invalid momentum: -0\.1"),
    ],
)
def test_wrong_type_or_out_of_range(cls, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        cls(params(), **kwargs)
    assert isinstance(info.value, optdsl.HyperError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nesterov": True},
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
    ],
)
def test_require_failing(kwargs):
    with pytest.raises(
        ValueError, match="^SGD: Nesterov momentum requires a momentum and zero dampening$"
    ):
        SGD(params(), lr=0.1, **kwargs)


def test_require_holding():
    opt = SGD(params(), lr=0.1, momentum=0.9, nesterov=True)
    assert opt.param_groups[0]["nesterov"] is True


def test_numpy_scalars_are_accepted():
    opt = Adam(params(), lr=np.float32(0.5), betas=(np.float64(0.8), 0.9), amsgrad=np.bool_(True))
    group = opt.param_groups[0]
    assert group["lr"] == 0.5 and type(group["lr"]) is float
    assert group["betas"] == (0.8, 0.9) and group["amsgrad"] is True


def test_unknown_backend_fails_at_construction():
    p = Param(np.ones(3), grad=np.ones(3))
    with pytest.raises(optdsl.OptdslError, match="unknown backend 'nope'; known: numpy"):
        Adam([p], backend="nope")
    Adam([p], backend="numpy").step()
