"""Hyper settings of the stdlib optimizers that reach each of their branches and optional
states, with non-default numbers: the cases the backends' tests run against the NumPy
backend."""

from __future__ import annotations

from optdsl.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop

CASES = [
    (SGD, {}),
    (SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    (SGD, {"momentum": 0.5, "dampening": 0.1, "maximize": True}),
    (Adam, {}),
    (Adam, {"amsgrad": True, "weight_decay": 0.1, "betas": (0.8, 0.99)}),
    (Adam, {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True}),
    (AdamW, {}),
    (AdamW, {"amsgrad": True, "lr": 0.1, "eps": 1e-3, "maximize": True}),
    (AdamW, {"weight_decay": 0.0}),
    (RMSprop, {}),
    (RMSprop, {"centered": True, "momentum": 0.9}),
    (RMSprop, {"weight_decay": 0.1, "alpha": 0.9, "maximize": True}),
    (Adagrad, {}),
    (Adagrad, {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.1,
               "maximize": True}),
    (Adadelta, {}),
    (Adadelta, {"weight_decay": 0.1, "rho": 0.5, "maximize": True}),
]


def case_id(case) -> str:
    cls, hypers = case
    return cls.__name__ + "".join(f"-{k}" for k in hypers)
