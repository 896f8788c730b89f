"""NumPy references for NovoGrad and ScheduleFreeAdamW, in the interface of
``tests/stdlib/references.py`` (see its docstring): ``step_fn(params, state, grad, t, h)``.

Transcribed from optax's source, never from the ``.opt`` files:

* ``novograd_step``: optax/_src/alias.py ``novograd`` = chain(scale_by_novograd(b1, b2, eps,
  eps_root, weight_decay), scale_by_learning_rate(lr)), with optax/_src/transform.py
  ``scale_by_novograd``.
* ``schedule_free_adamw_step``: optax/contrib/_schedule_free.py ``schedule_free_adamw`` =
  schedule_free(chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
  add_decayed_weights(weight_decay), scale_by_learning_rate(lr_schedule)), lr_schedule, b1,
  weight_lr_power), lr_schedule = warmup_constant_schedule(0, lr, warmup_steps) when
  warmup_steps is given (here: > 0), else the constant lr.

State keys are the ``.opt`` files' state names: optax's NovoGrad mu -> exp_avg, nu ->
exp_avg_sq (a 0-d float64, one per tensor); schedule_free's z -> z, weight_sum, max_lr
(0-d float64), scale_by_rms's nu -> exp_avg_sq. optax's step counts are not states here:
scale_by_novograd's count, scale_by_rms's count and schedule_free's step_count are all t
(the latter starts at 1), scale_by_schedule's count is t - 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def novograd_step(params, state, grad, t, h) -> None:
    """optax.novograd: scale_by_novograd then scale_by_learning_rate (-lr * mu)."""
    b1, b2 = h["betas"]
    eps, eps_root, wd = h["eps"], h["eps_root"], h["weight_decay"]
    p = params["p"]
    if not state:  # init_fn: mu = zeros_like(p), nu = 0.0 of p's dtype
        state["exp_avg"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.asarray(0.0, dtype=p.dtype)

    def nu_addition(g):
        return np.linalg.norm(g) ** 2

    def mu_addition(g, param, nu):
        return g / (np.sqrt(nu + eps_root) + eps) + wd * param

    count_inc = t  # numerics.safe_increment(state.count), count starts at 0
    if count_inc == 1:  # init_nu
        nu = np.asarray(nu_addition(grad), dtype=p.dtype)
    else:  # update_nu: update_moment(updates, nu, b2, 1)
        nu = (1.0 - b2) * nu_addition(grad) + b2 * state["exp_avg_sq"]
    if count_inc == 1:  # init_mu
        mu = mu_addition(grad, p, nu)
    else:  # update_mu
        mu = b1 * state["exp_avg"] + mu_addition(grad, p, nu)
    state["exp_avg"], state["exp_avg_sq"] = mu, np.asarray(nu, dtype=p.dtype)
    updates = -h["lr"] * mu  # scale_by_learning_rate: scale(-lr)
    params["p"] = p + updates  # apply_updates


def _warmup_constant(lr: float, warmup_steps: int):
    """optax.warmup_constant_schedule(init_value=0, peak_value=lr, warmup_steps), i.e.
    linear_schedule = polynomial_schedule(power=1): (init - end) * frac ** 1 + end with
    frac = 1 - clip(count, 0, T) / T; schedule_free_adamw's warmup_steps=None (here 0) means
    the constant lr."""
    if warmup_steps == 0:
        return lambda count: lr

    def schedule(count):
        count = min(max(count, 0), warmup_steps)
        frac = 1 - count / warmup_steps
        return (0.0 - lr) * (frac ** 1) + lr

    return schedule


def schedule_free_adamw_step(params, state, grad, t, h) -> None:
    """optax.contrib.schedule_free_adamw; params["p"] is the y sequence, as optax returns."""
    b1, b2 = h["betas"]
    eps, wd, power = h["eps"], h["weight_decay"], h["weight_lr_power"]
    schedule = _warmup_constant(h["lr"], h["warmup_steps"])
    y = params["p"]
    if not state:  # init_fn of schedule_free and of scale_by_rms (initial_scale 0)
        state["z"] = y.copy()
        state["weight_sum"] = np.asarray(0.0, dtype=y.dtype)
        state["max_lr"] = np.asarray(0.0, dtype=y.dtype)
        state["exp_avg_sq"] = np.zeros_like(y)
    step_count = t  # schedule_free's step_count: 1 at the first update
    lr = schedule(step_count)
    max_lr = np.maximum(state["max_lr"], lr)
    weight = max_lr ** power
    next_total_weight = state["weight_sum"] + weight
    with np.errstate(divide="ignore", invalid="ignore"):
        if np.isnan(weight) or np.isnan(next_total_weight):
            ck = np.nan
        else:
            ck = np.nan_to_num(weight / next_total_weight, nan=0.0, posinf=np.inf)

    # base optimizer: scale_by_rms(decay=b2, eps, eps_in_sqrt=False, bias_correction=True)
    nu = (1.0 - b2) * grad * grad + b2 * state["exp_avg_sq"]  # update_moment_per_elem_norm
    nu_hat = nu / (1.0 - b2 ** t)  # bias_correction(nu, b2, count_inc), count_inc = t
    scaling = 1 / (np.sqrt(nu_hat) + eps)
    u = scaling * grad
    u = u + wd * y  # add_decayed_weights(weight_decay), params = y
    u = (-schedule(t - 1)) * u  # scale_by_learning_rate: scale_by_schedule, count = t - 1
    z = state["z"] + u

    prev_x = (y - (1.0 - b1) * state["z"]) / b1
    x = (1.0 - ck) * prev_x + ck * z
    new_params = b1 * x + (1.0 - b1) * z
    updates = new_params - y
    params["p"] = y + updates  # apply_updates
    state.update(z=z, exp_avg_sq=nu, weight_sum=np.asarray(next_total_weight, dtype=y.dtype),
                 max_lr=np.asarray(max_lr, dtype=y.dtype))


REFERENCES: dict[str, tuple[dict[str, Any], Any]] = {
    "NovoGrad": ({"lr": 0.01, "betas": (0.8, 0.5), "eps": 1e-7, "eps_root": 1e-9,
                  "weight_decay": 0.01}, novograd_step),
    "ScheduleFreeAdamW": ({"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6,
                           "weight_decay": 0.01, "warmup_steps": 10,
                           "weight_lr_power": 1.5}, schedule_free_adamw_step),
}
