"""What each stdlib optimizer is checked against by ``tests/stdlib/test_conformance.py``.

Every name in ``optdsl.optim.STDLIB`` must have exactly one entry, in one of two tables:

``TORCH_REFERENCES[name] = (torch_class_name, hypers)``
    The optimizers torch.optim has: the conformance suite runs ``torch.optim.<class>``
    (``foreach=False``, float64) side by side with optdsl's class, both built with
    ``hypers``, and compares parameters and state every step. ``hypers`` are non-default
    values, so that a wrong default or an ignored keyword shows. Skipped without torch.

``REFERENCES[name] = (hypers, step_fn)``
    The others: a NumPy transcription of the paper's (or optax's) algorithm, written here
    (or in ``refs_*.py`` beside it, merged in at the end) from the source the ``.opt``
    file's docstring cites, never from the ``.opt`` file. Scalar states are 0-d float64
    arrays.

    ``hypers``: the keyword arguments the test passes to optdsl's class (non-default
    values, chosen so that every branch the reference has is taken by some entry). The
    reference receives the *resolved* hypers: the class's defaults with these applied
    (``{"lr": 1e-3, "betas": (0.9, 0.99), ...}``, tuples as tuples).

    ``step_fn(params, state, grad, t, hypers) -> None`` takes one step, in place:

    * ``params``: ``{"p": ndarray}``, the parameter (float64). Update it in place or
      rebind ``params["p"]``.
    * ``state``: a dict, empty before the first step, that the function fills with its
      buffers (``state["exp_avg"] = np.zeros_like(p)`` at ``t == 1``) and updates in
      place or by rebinding. Its keys must be the ``.opt`` file's state names (the suite
      compares them, and the values, with ``opt.state[param]`` minus ``step``).
    * ``grad``: the gradient (float64 ndarray of ``p``'s shape); do not write to it.
    * ``t``: the step count, 1 at the first step.
    * ``hypers``: the resolved hypers, as above.

    The suite runs 40+ steps on a few float64 parameters of different shapes (a matrix,
    a vector, a scalar-shaped one), with gradients that change sign and scale, and
    compares to rtol 1e-9.

A name in STDLIB with no entry fails the conformance suite with a message naming this
file. The hypers of ``TORCH_REFERENCES`` also feed the other conformance checks (state
round-trip, backends); a name may list a second hyper set there in
``EXTRA_HYPERS[name]`` (a list of dicts), run through the same checks, to reach more
branches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tests.stdlib import refs_lamb_lars, refs_novograd_sf

StepFn = Callable[[dict[str, np.ndarray], dict[str, Any], np.ndarray, int, dict[str, Any]], None]

# optdsl name -> (torch.optim class name, hypers)
TORCH_REFERENCES: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    "Adam": ("Adam", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.01,
                      "amsgrad": True}),
    "AdamW": ("AdamW", {"lr": 0.01, "betas": (0.85, 0.99), "weight_decay": 0.1,
                        "maximize": True}),
    "RMSprop": ("RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "centered": True,
                            "weight_decay": 0.01}),
    "Adagrad": ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1,
                            "weight_decay": 0.01}),
    "Adadelta": ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01}),
    "SparseAdam": ("SparseAdam", {"lr": 0.01, "betas": (0.8, 0.95), "maximize": True}),
    "Adamax": ("Adamax", {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6,
                          "weight_decay": 0.01}),
    "RAdam": ("RAdam", {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.01}),
    "Rprop": ("Rprop", {"lr": 0.02, "etas": (0.4, 1.3), "step_sizes": (1e-4, 0.1)}),
    "NAdam": ("NAdam", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.01,
                        "momentum_decay": 0.01}),
    "ASGD": ("ASGD", {"lr": 0.05, "lambd": 1e-3, "alpha": 0.6, "t0": 5, "weight_decay": 0.01}),
    # factored (row and column) second moments for the matrix, the whole one for the rest
    "Adafactor": ("Adafactor", {"lr": 0.05, "beta2_decay": -0.5, "eps": (1e-20, 1e-2),
                                "d": 1.5, "weight_decay": 0.1}),
}

# optdsl name -> more hyper sets for the torch ones (other branches)
EXTRA_HYPERS: dict[str, list[dict[str, Any]]] = {
    "SGD": [{"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}],
    "RAdam": [{"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True,
               "maximize": True}],
    "Rprop": [{"lr": 0.01, "maximize": True}],
    "Adamax": [{"lr": 0.01, "maximize": True}],
    "NAdam": [{"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True,
               "maximize": True}],
    "ASGD": [{"lr": 0.02, "t0": 0, "maximize": True}],
    "Adafactor": [{"lr": 0.01, "maximize": True}],  # eps[0]: the dtype's, torch's None
}

# optdsl name -> (hypers, step_fn): the NumPy references for the optimizers torch lacks.
# The helper writing lion/adabelief/yogi/signum/adan/ademamix fills these in below.
REFERENCES: dict[str, tuple[dict[str, Any], StepFn]] = {}


# --- Lion, AdaBelief, Yogi, Signum/signSGD, Adan, AdEMAMix --------------------------------
# Transcribed from optax (optax/_src/transform.py's scale_by_*, alias.py, contrib/_ademamix.py)
# or from the papers' algorithms, as each .opt docstring says. optax writes an optimizer as a
# chain: scale_by_X gives an update u, add_decayed_weights adds wd * p, and
# scale_by_learning_rate multiplies by -lr; the helpers below keep that shape.


def _zeros(state: dict[str, Any], p: np.ndarray, *names: str, fill: float = 0.0) -> None:
    for name in names:
        state.setdefault(name, np.full_like(p, fill))


def _apply_optax(params: dict[str, np.ndarray], u: np.ndarray, lr: float, wd: float) -> None:
    """chain(..., add_decayed_weights(wd), scale_by_learning_rate(lr)) and apply_updates."""
    params["p"] = params["p"] + (-lr) * (u + wd * params["p"])


def lion_step(params, state, grad, t, h) -> None:
    """optax.lion: scale_by_lion(b1, b2), add_decayed_weights, scale_by_learning_rate."""
    b1, b2 = h["betas"]
    _zeros(state, params["p"], "exp_avg")
    mu = state["exp_avg"]
    u = np.sign((1.0 - b1) * grad + b1 * mu)
    state["exp_avg"] = (1.0 - b2) * grad + b2 * mu  # update_moment(g, mu, b2, order=1)
    _apply_optax(params, u, h["lr"], h["weight_decay"])


def adabelief_step(params, state, grad, t, h) -> None:
    """optax.adabelief (scale_by_belief with eps, eps_root, nesterov), plus an optional
    add_decayed_weights before the learning rate."""
    b1, b2 = h["betas"]
    _zeros(state, params["p"], "exp_avg", "exp_avg_var")
    mu = (1.0 - b1) * grad + b1 * state["exp_avg"]
    prediction_error = grad - mu
    nu = (1.0 - b2) * prediction_error ** 2 + b2 * state["exp_avg_var"]
    nu = nu + h["eps_root"]
    if h["nesterov"]:
        mu_hat = b1 * (mu / (1.0 - b1 ** (t + 1))) + (1.0 - b1) * (grad / (1.0 - b1 ** t))
    else:
        mu_hat = mu / (1.0 - b1 ** t)
    nu_hat = nu / (1.0 - b2 ** t)
    u = mu_hat / (np.sqrt(nu_hat) + h["eps"])
    state["exp_avg"], state["exp_avg_var"] = mu, nu
    _apply_optax(params, u, h["lr"], h["weight_decay"])


def yogi_step(params, state, grad, t, h) -> None:
    """optax.yogi: scale_by_yogi (both accumulators start at initial_accumulator_value,
    eps_root 0), plus an optional add_decayed_weights before the learning rate."""
    b1, b2 = h["betas"]
    _zeros(state, params["p"], "exp_avg", "exp_avg_sq", fill=h["initial_accumulator_value"])
    mu = (1.0 - b1) * grad + b1 * state["exp_avg"]
    v = state["exp_avg_sq"]
    nu = v - (1.0 - b2) * np.sign(v - np.abs(grad) ** 2) * np.abs(grad) ** 2
    mu_hat, nu_hat = mu / (1.0 - b1 ** t), nu / (1.0 - b2 ** t)
    u = mu_hat / (np.sqrt(nu_hat + 0.0) + h["eps"])
    state["exp_avg"], state["exp_avg_sq"] = mu, nu
    _apply_optax(params, u, h["lr"], h["weight_decay"])


def signum_step(params, state, grad, t, h) -> None:
    """Bernstein et al. (2018): signSGD (momentum 0), x <- x - lr * sign(g), and Signum,
    m <- beta * m + (1 - beta) * g, x <- x - lr * sign(m); with decoupled weight decay."""
    beta = h["momentum"]
    direction = grad
    if beta != 0:
        _zeros(state, params["p"], "momentum_buffer")
        state["momentum_buffer"] = (1.0 - beta) * grad + beta * state["momentum_buffer"]
        direction = state["momentum_buffer"]
    _apply_optax(params, np.sign(direction), h["lr"], h["weight_decay"])


def adan_step(params, state, grad, t, h) -> None:
    """Xie et al. (2022), Algorithm 1, in the decay-rate convention of the authors' code
    (paper beta_k = 1 - b_k): m, v, n start at 0 and are bias-corrected, g_0 = g_1."""
    b1, b2, b3 = h["betas"]
    beta1, beta2, beta3 = 1.0 - b1, 1.0 - b2, 1.0 - b3  # the paper's
    p = params["p"]
    _zeros(state, p, "exp_avg", "exp_avg_diff", "exp_avg_sq")
    previous = state.get("prev_grad", grad)
    delta = grad - previous
    m = (1.0 - beta1) * state["exp_avg"] + beta1 * grad
    v = (1.0 - beta2) * state["exp_avg_diff"] + beta2 * delta
    n = (1.0 - beta3) * state["exp_avg_sq"] + beta3 * (grad + (1.0 - beta2) * delta) ** 2
    m_hat, v_hat, n_hat = m / (1 - b1 ** t), v / (1 - b2 ** t), n / (1 - b3 ** t)
    eta = h["lr"] / (np.sqrt(n_hat) + h["eps"])
    step = eta * (m_hat + (1.0 - beta2) * v_hat)
    lam = h["weight_decay"]
    if h["no_prox"]:
        params["p"] = p * (1.0 - h["lr"] * lam) - step
    else:
        params["p"] = (p - step) / (1.0 + lam * h["lr"])
    state.update(exp_avg=m, exp_avg_diff=v, exp_avg_sq=n, prev_grad=grad.copy())


def _ademamix_alpha(t: int, alpha: float, warmup: int) -> float:
    """The paper's alpha scheduler: a linear warm-up from 0."""
    return alpha if warmup == 0 else min(t * alpha / warmup, alpha)


def _ademamix_beta3(t: int, b_start: float, b_end: float, warmup: int) -> float:
    """The paper's beta3 scheduler: the half-life f(b) = log(0.5) / log(b) - 1 warms up
    linearly from f(b_start) to f(b_end), b = f^-1(...) = 0.5 ** (1 / (f + 1)); clipped at
    b_end. (Its closed form, exp(ln b1 ln b3 / ((1 - a) ln b3 + a ln b1)), is the same.)"""
    if warmup == 0:
        return b_end
    a = t / warmup
    half_life = (1 - a) * (np.log(0.5) / np.log(b_start) - 1) \
        + a * (np.log(0.5) / np.log(b_end) - 1)
    return min(0.5 ** (1 / (half_life + 1)), b_end)


def ademamix_step(params, state, grad, t, h) -> None:
    """Pagliardini et al. (2024), Algorithm 1 (optax.contrib.ademamix with the paper's
    schedulers, called with the 1-based t)."""
    b1, b2, b3 = h["betas"]
    alpha = _ademamix_alpha(t, h["alpha"], h["alpha_warmup"])
    b3_t = _ademamix_beta3(t, b1, b3, h["beta3_warmup"])
    _zeros(state, params["p"], "exp_avg_fast", "exp_avg_slow", "exp_avg_sq")
    m1 = (1.0 - b1) * grad + b1 * state["exp_avg_fast"]
    m2 = (1.0 - b3_t) * grad + b3_t * state["exp_avg_slow"]
    nu = (1.0 - b2) * grad ** 2 + b2 * state["exp_avg_sq"]
    m1_hat, nu_hat = m1 / (1.0 - b1 ** t), nu / (1.0 - b2 ** t)
    u = (m1_hat + alpha * m2) / (np.sqrt(nu_hat) + h["eps"])
    state.update(exp_avg_fast=m1, exp_avg_slow=m2, exp_avg_sq=nu)
    _apply_optax(params, u, h["lr"], h["weight_decay"])


REFERENCES.update({
    "Lion": ({"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1}, lion_step),
    "AdaBelief": ({"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-8, "eps_root": 1e-10,
                   "weight_decay": 0.01, "nesterov": True}, adabelief_step),
    "Yogi": ({"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-4,
              "initial_accumulator_value": 0.01, "weight_decay": 0.01}, yogi_step),
    "Signum": ({"lr": 0.01, "momentum": 0.8, "weight_decay": 0.1}, signum_step),
    "Adan": ({"lr": 0.01, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05},
             adan_step),
    "AdEMAMix": ({"lr": 0.01, "betas": (0.8, 0.95, 0.99), "alpha": 3.0, "alpha_warmup": 20,
                  "beta3_warmup": 30, "weight_decay": 0.01}, ademamix_step),
})

# LAMB and LARS (optax), NovoGrad and ScheduleFreeAdamW (optax): in their own files.
REFERENCES.update(refs_lamb_lars.REFERENCES)
REFERENCES.update(refs_novograd_sf.REFERENCES)
