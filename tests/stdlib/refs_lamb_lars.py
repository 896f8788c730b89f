"""NumPy references for LAMB and LARS, in the interface of ``tests/stdlib/references.py``
(see its docstring), which merges them into its ``REFERENCES``.

Transcribed from optax's source, never from the ``.opt`` files:

* ``optax.lamb`` (optax/_src/alias.py, google-deepmind/optax at commit 47fe655, unchanged in
  the 0.2.x alias.py): ``chain(scale_by_adam(b1, b2, eps, eps_root),
  add_decayed_weights(weight_decay, mask), scale_by_trust_ratio(),
  scale_by_learning_rate(learning_rate))``;
* ``optax.lars`` (same file): ``chain(add_decayed_weights(weight_decay,
  mask=weight_decay_mask), masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient,
  eps=eps), mask=trust_ratio_mask), scale_by_learning_rate(learning_rate),
  trace(decay=momentum, nesterov=nesterov))``;
* ``scale_by_adam`` and ``scale_by_trust_ratio`` from optax/_src/transform.py (commit
  006cebd), ``trace`` from optax/transforms/_accumulation.py, ``add_decayed_weights`` from
  optax/transforms/_adding.py (it returns the updates unchanged when weight_decay == 0.0),
  ``safe_norm`` from optax/_src/numerics.py, ``update_moment`` / ``bias_correction`` from
  optax/tree_utils/_tree_math.py.

Masks are optax's defaults (every parameter). The step count is optax's ``count_inc``, which
is ``t`` (1 at the first step).

State names: LAMB keeps ``exp_avg`` (optax's mu) and ``exp_avg_sq`` (nu). LARS keeps
``momentum_buffer``, which is optax's ``TraceState.trace`` with its sign flipped: optax's
trace accumulates the already lr-scaled, negative update ``-lr * trust_ratio * (g + wd * p)``,
and the optimizer stores ``-trace`` (a positive multiple of the descent direction, as
torch's momentum buffers are). Negation is exact, so this changes no bit of the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

StepFn = Callable[[dict[str, np.ndarray], dict[str, Any], np.ndarray, int, dict[str, Any]], None]

# optdsl name -> (hypers, step_fn); merge into references.REFERENCES
REFERENCES: dict[str, tuple[dict[str, Any], StepFn]] = {}


def _safe_norm(x: np.ndarray, min_norm: float) -> float:
    """numerics.safe_norm(x, min_norm) for ord=None, axis=None: the 2-norm of x raveled
    (jnp.linalg.norm), or min_norm when that norm is <= min_norm."""
    norm = float(np.sqrt(np.sum(np.asarray(x, dtype=np.float64) ** 2)))
    return min_norm if norm <= min_norm else norm


def _scale_by_trust_ratio(update: np.ndarray, param: np.ndarray, min_norm: float = 0.0,
                          trust_coefficient: float = 1.0, eps: float = 0.0) -> np.ndarray:
    """transform.scale_by_trust_ratio's _scale_update, for one leaf."""
    param_norm = _safe_norm(param, min_norm)
    update_norm = _safe_norm(update, min_norm)
    zero_norm = param_norm == 0.0 or update_norm == 0.0
    if zero_norm:  # jnp.where(zero_norm, 1.0, trust_ratio), without dividing by zero
        safe_trust_ratio = 1.0
    else:
        safe_trust_ratio = trust_coefficient * param_norm / (update_norm + eps)
    return update * safe_trust_ratio


def _add_decayed_weights(update: np.ndarray, param: np.ndarray, weight_decay: float) -> np.ndarray:
    """transform.add_decayed_weights (mask: every param): g + wd * p, skipped for wd == 0."""
    if weight_decay == 0.0:
        return update
    return update + weight_decay * param


def lamb_step(params, state, grad, t, h) -> None:
    """optax.lamb: scale_by_adam, add_decayed_weights, scale_by_trust_ratio(),
    scale_by_learning_rate."""
    b1, b2 = h["betas"]
    p = params["p"]
    state.setdefault("exp_avg", np.zeros_like(p))     # mu
    state.setdefault("exp_avg_sq", np.zeros_like(p))  # nu
    # scale_by_adam (nesterov=False)
    mu = (1 - b1) * (grad ** 1) + b1 * state["exp_avg"]   # update_moment(updates, mu, b1, 1)
    nu = (1 - b2) * (grad ** 2) + b2 * state["exp_avg_sq"]  # update_moment_per_elem_norm(.., 2)
    mu_hat = mu / (1 - b1 ** t)  # bias_correction(mu, b1, count_inc)
    nu_hat = nu / (1 - b2 ** t)
    u = mu_hat / (np.sqrt(nu_hat + h["eps_root"]) + h["eps"])
    state["exp_avg"], state["exp_avg_sq"] = mu, nu
    # add_decayed_weights(weight_decay)
    u = _add_decayed_weights(u, p, h["weight_decay"])
    # scale_by_trust_ratio() (min_norm 0, trust_coefficient 1, eps 0)
    u = _scale_by_trust_ratio(u, p)
    # scale_by_learning_rate(lr): scale(-lr); apply_updates
    u = (-h["lr"]) * u
    params["p"] = p + u


def lars_step(params, state, grad, t, h) -> None:
    """optax.lars: add_decayed_weights, masked(scale_by_trust_ratio(trust_coefficient, eps)),
    scale_by_learning_rate, trace(momentum, nesterov). The state keeps -trace (see above)."""
    p = params["p"]
    trace = -state["momentum_buffer"] if "momentum_buffer" in state else np.zeros_like(p)
    # add_decayed_weights(weight_decay, mask=True)
    u = _add_decayed_weights(grad, p, h["weight_decay"])
    # masked(scale_by_trust_ratio(trust_coefficient=..., eps=...), mask=True)
    u = _scale_by_trust_ratio(u, p, trust_coefficient=h["trust_coefficient"], eps=h["eps"])
    # scale_by_learning_rate(lr)
    u = (-h["lr"]) * u
    # trace(decay=momentum, nesterov=nesterov): f = lambda g, t: g + decay * t
    decay = h["momentum"]
    new_trace = u + decay * trace
    u = (u + decay * new_trace) if h["nesterov"] else new_trace
    state["momentum_buffer"] = -new_trace
    params["p"] = p + u


REFERENCES.update({
    "LAMB": ({"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-4, "eps_root": 1e-10,
              "weight_decay": 0.01}, lamb_step),
    "LARS": ({"lr": 0.5, "weight_decay": 0.01, "trust_coefficient": 0.02, "eps": 1e-8,
              "momentum": 0.8, "nesterov": True}, lars_step),
})
