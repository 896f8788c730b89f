"""Hyper settings of the stdlib optimizers that reach each of their branches and optional
states, with non-default numbers: the cases the backends' tests run against the NumPy
backend."""

from __future__ import annotations

from optdsl.optim import (
    ASGD,
    LAMB,
    LARS,
    SGD,
    AdaBelief,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Adan,
    AdEMAMix,
    Lion,
    NAdam,
    NovoGrad,
    RAdam,
    RMSprop,
    Rprop,
    ScheduleFreeAdamW,
    Signum,
    Yogi,
)

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
    # (appended: the tests pick some of the cases above by index)
    (Adamax, {}),
    (Adamax, {"weight_decay": 0.1, "betas": (0.8, 0.95), "maximize": True}),
    (RAdam, {}),  # rho_t > 5 from step 6
    (RAdam, {"weight_decay": 0.1, "betas": (0.8, 0.9)}),
    (RAdam, {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    (Rprop, {}),
    (Rprop, {"etas": (0.3, 1.5), "step_sizes": (1e-3, 0.02), "maximize": True}),
    (Lion, {}),
    (Lion, {"weight_decay": 0.1, "betas": (0.8, 0.95)}),
    (AdaBelief, {}),
    (AdaBelief, {"nesterov": True, "weight_decay": 0.1, "eps": 1e-8}),
    (Yogi, {}),
    (Yogi, {"weight_decay": 0.1, "initial_accumulator_value": 0.1, "betas": (0.8, 0.99)}),
    (Signum, {}),
    (Signum, {"momentum": 0.0, "weight_decay": 0.1}),
    (Adan, {}),
    (Adan, {"no_prox": True, "weight_decay": 0.1, "betas": (0.9, 0.9, 0.99)}),
    (AdEMAMix, {}),
    (AdEMAMix, {"alpha_warmup": 4, "beta3_warmup": 4, "weight_decay": 0.1, "alpha": 2.0}),
    (LAMB, {}),
    (LAMB, {"weight_decay": 0.1, "betas": (0.8, 0.99), "eps_root": 1e-10}),
    (LARS, {}),
    (LARS, {"nesterov": True, "weight_decay": 0.1, "trust_coefficient": 0.02, "eps": 1e-8}),
    (NovoGrad, {}),
    (NovoGrad, {"weight_decay": 0.1, "eps_root": 1e-8, "betas": (0.8, 0.5)}),
    (ScheduleFreeAdamW, {}),
    (ScheduleFreeAdamW, {"warmup_steps": 3, "weight_decay": 0.1, "weight_lr_power": 1.0,
                         "betas": (0.8, 0.99)}),
    (NAdam, {}),
    (NAdam, {"weight_decay": 0.1, "betas": (0.8, 0.95), "momentum_decay": 0.01}),
    (NAdam, {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    (ASGD, {}),
    (ASGD, {"t0": 1, "lambd": 0.01, "alpha": 0.5, "weight_decay": 0.1}),  # averages from step 3
    (ASGD, {"lr": 0.05, "t0": 0, "maximize": True}),
    (Adafactor, {}),
    (Adafactor, {"weight_decay": 0.1, "beta2_decay": -0.5, "d": 1.5, "maximize": True}),
]


def case_id(case) -> str:
    cls, hypers = case
    return cls.__name__ + "".join(f"-{k}" for k in hypers)
