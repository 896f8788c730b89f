"""The tiny deterministic problem behind the torch.optim golden trajectories.

Shared by ``make_torch_golden.py`` (which runs torch.optim on it) and
``tests/stdlib/test_torch_parity.py`` (which runs optdsl on it and compares). Pure numpy on
purpose: the parity test must be able to rebuild the problem without torch installed.

The "loss" is a noisy quadratic: the gradient at 1-based step ``t`` is ``0.5 * p + noise_t``,
where ``noise_t`` depends only on ``t``. The gradient is computed by the caller from the
*current* parameter values of the optimizer under test (numpy for optdsl, the torch tensor's
``.detach().numpy()`` for torch), elementwise in the parameter's dtype, so both sides produce
bit-identical gradients from bit-identical parameters.

Changing anything here (values, seeds, configs, step counts) invalidates
``torch_trajectories.json``: rerun ``python tests/golden/make_torch_golden.py``.
``test_golden_file_is_current`` catches a stale file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_STEPS = 40
CHECK_STEPS = (1, 2, 3, 5, 10, 20, 30, 40)

PARAM_SHAPES = ((4, 3), (5,))
DTYPES = ("float64", "float32")

_PARAM_SEED = 1234
_GRAD_SEED_BASE = 1000


def make_params(dtype: Any) -> list[np.ndarray]:
    """The two initial parameters, shapes (4, 3) and (5,), cast to ``dtype``.

    Values are drawn once in float64, with magnitudes in [0.5, 1.5] and random signs, so no
    entry starts near zero (relative comparisons stay meaningful early on).
    """
    rng = np.random.default_rng(_PARAM_SEED)
    params = []
    for shape in PARAM_SHAPES:
        magnitude = rng.uniform(0.5, 1.5, size=shape)
        sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
        params.append((sign * magnitude).astype(dtype))
    return params


def make_grad(step: int, params: list[np.ndarray]) -> list[np.ndarray]:
    """Gradients at 1-based ``step`` for the current ``params``: ``0.5 * p + noise``.

    The noise is standard normal from ``default_rng(1000 + step)``, drawn in float64 (one draw
    per param, in order) and cast to the param's dtype. The arithmetic is done in the param's
    dtype with elementwise ops only, so it is reproducible bit for bit on any backend.
    """
    if step < 1:
        raise ValueError(f"steps are 1-based, got {step}")
    rng = np.random.default_rng(_GRAD_SEED_BASE + step)
    grads = []
    for p in params:
        p = np.asarray(p)
        noise = rng.standard_normal(size=p.shape).astype(p.dtype)
        half = np.asarray(0.5, dtype=p.dtype)
        grads.append(p * half + noise)
    return grads


# Constructor keyword arguments for each torch.optim optimizer, as passed to both torch and
# optdsl. Only valid torch combinations; never foreach/fused/capturable/differentiable (the
# generator forces foreach=False, i.e. torch's single-tensor reference implementation).
# Learning rates are chosen so the parameters move visibly within N_STEPS steps.
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "SGD": [
        {},  # torch 2.13: lr defaults to 1e-3
        {"lr": 0.1},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.3},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"lr": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"lr": 0.1, "maximize": True},
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "maximize": True},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True},
        {"lr": 0.1, "weight_decay": 0.1, "maximize": True},
    ],
    "Adam": [
        {},
        {"lr": 0.05},
        {"lr": 0.05, "betas": (0.8, 0.99)},
        {"lr": 0.05, "eps": 0.1},
        {"lr": 0.05, "weight_decay": 0.1},
        {"lr": 0.05, "amsgrad": True},
        {"lr": 0.05, "maximize": True},
        {"lr": 0.05, "betas": (0.5, 0.9), "eps": 1e-6, "amsgrad": True},
        {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True, "maximize": True},
        # torch >= 2.6: Adam(decoupled_weight_decay=True) is AdamW.
        {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    "AdamW": [
        {},  # weight_decay defaults to 1e-2 (not 0 as in Adam)
        {"lr": 0.05},
        {"lr": 0.05, "weight_decay": 0.0},
        {"lr": 0.05, "weight_decay": 0.5},
        {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-3},
        {"lr": 0.05, "amsgrad": True},
        {"lr": 0.05, "maximize": True},
        {"lr": 0.05, "weight_decay": 0.5, "amsgrad": True, "maximize": True},
    ],
    "RMSprop": [
        {},  # lr defaults to 1e-2
        {"lr": 0.005, "alpha": 0.9},
        {"lr": 0.01, "eps": 1e-3},
        {"lr": 0.01, "centered": True},
        {"lr": 0.005, "momentum": 0.9},
        {"lr": 0.005, "momentum": 0.9, "centered": True},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "maximize": True},
        {
            "lr": 0.005,
            "alpha": 0.9,
            "eps": 1e-6,
            "centered": True,
            "momentum": 0.5,
            "weight_decay": 0.1,
            "maximize": True,
        },
    ],
    "Adagrad": [
        {},  # lr defaults to 1e-2
        {"lr": 0.1},
        {"lr": 0.1, "lr_decay": 0.05},
        {"lr": 0.1, "initial_accumulator_value": 0.5},
        {"lr": 0.1, "eps": 1e-3},
        {"lr": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "maximize": True},
        {
            "lr": 0.1,
            "lr_decay": 0.05,
            "initial_accumulator_value": 0.5,
            "eps": 1e-3,
            "weight_decay": 0.1,
            "maximize": True,
        },
    ],
    "Adadelta": [
        {},  # lr defaults to 1.0
        {"lr": 0.5},
        {"rho": 0.5},
        {"eps": 1e-3},
        {"weight_decay": 0.1},
        {"maximize": True},
        {"lr": 2.0, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1, "maximize": True},
    ],
    "Adamax": [
        {},  # lr defaults to 2e-3
        {"lr": 0.05},
        {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-3},
        {"lr": 0.05, "weight_decay": 0.1},
        {"lr": 0.05, "maximize": True},
        {"lr": 0.05, "betas": (0.5, 0.9), "weight_decay": 0.1, "maximize": True},
    ],
    "RAdam": [
        {},  # rho_t > 5 (the rectified step) from step 6 on
        {"lr": 0.05},
        {"lr": 0.05, "betas": (0.8, 0.9)},
        # rho_inf = 4: rho_t never exceeds 5, every step is the unrectified one
        {"lr": 0.05, "betas": (0.9, 0.6)},
        {"lr": 0.05, "weight_decay": 0.1},
        {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 0.05, "maximize": True},
        {
            "lr": 0.05,
            "eps": 1e-3,
            "weight_decay": 0.1,
            "decoupled_weight_decay": True,
            "maximize": True,
        },
    ],
    "Rprop": [
        {},  # lr (the initial step size) defaults to 1e-2
        {"lr": 0.05},
        {"lr": 0.05, "etas": (0.3, 1.5)},
        # both clamps reached: shrinking stops at 0.01, growing at 0.08
        {"lr": 0.05, "step_sizes": (0.01, 0.08)},
        {"lr": 0.05, "maximize": True},
        {"lr": 0.05, "etas": (0.6, 1.1), "step_sizes": (1e-3, 0.1), "maximize": True},
    ],
}


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    return repr(value)


def config_id(name: str, kwargs: dict[str, Any]) -> str:
    """A stable, readable id such as ``Adam-amsgrad=True-lr=0.05`` (keys sorted)."""
    if not kwargs:
        return f"{name}-defaults"
    parts = [f"{key}={_format_value(kwargs[key])}" for key in sorted(kwargs)]
    return "-".join([name, *parts])


def canonical_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with JSON lists turned back into tuples (``betas``), as the optimizers expect."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
