"""The derivative HypergradientLR reads is the kernel's own, and is the true slope of the
step in lr: it equals (p(lr) - p(0)) / lr, found by stepping a copy of the optimizer with
lr = 0 on the same gradients. Checked on optimizers whose updates are less simple than
SGD's: momentum (with dampening and Nesterov), and AdamW, whose decoupled weight decay
makes p = p * (1 - lr * wd) - lr * ..., still affine in lr."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl.autotune import HypergradientLR
from optdsl.optim import SGD, AdamW

CASES = {
    "sgd-momentum": (SGD, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    "sgd-nesterov": (SGD, {"momentum": 0.8, "nesterov": True}),
    "adamw": (AdamW, {"weight_decay": 0.1}),
    "adamw-amsgrad": (AdamW, {"weight_decay": 0.1, "amsgrad": True}),
}


def params(seed=0, flat=False):
    rng = np.random.default_rng(seed)
    ps = [optdsl.Param(rng.standard_normal(s)) for s in ((6, 5), (7,))]
    if flat:
        optdsl.flatten(ps)
    return ps


def grads(step, ps):
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(p.data.shape) + 0.3 for p in ps]


@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
@pytest.mark.parametrize("case", CASES)
def test_the_derivative_is_the_slope_of_the_step_in_lr(case, flat):
    optimizer, hypers = CASES[case]
    ps = params(flat=flat)
    opt = optimizer([{"params": ps[:1], "lr": 0.02}, {"params": ps[1:], "lr": 0.005}],
                    backend="numpy", **hypers)
    tuner = HypergradientLR(opt, beta=1e-3, lr_min=1e-3)  # lr > 0: a slope to divide by
    for step in range(8):
        gs = grads(step, ps)
        # A copy to step with lr = 0, from the same params and state.
        copies = [optdsl.Param(p.data.copy()) for p in ps]
        twin = optimizer([{"params": copies[:1]}, {"params": copies[1:]}], backend="numpy",
                         **hypers)
        twin.load_state_dict(opt.state_dict())
        for group in twin.param_groups:
            group["lr"] = 0.0
        for p, q, g in zip(ps, copies, gs, strict=True):
            if flat:
                p.grad[...] = g
            else:
                p.grad = g
            q.grad = g.copy()
        opt.step()
        twin.step()
        for index, group in enumerate(opt.param_groups):
            lr = group["lr"]  # what this step used, after the tuner's update
            for p, q in zip(group["params"], twin.param_groups[index]["params"],
                            strict=True):
                slope = (p.data - q.data) / lr
                d = opt.extra_output(p, "dlr:lr")
                np.testing.assert_allclose(d, slope, rtol=1e-7, atol=1e-9,
                                           err_msg=f"{case}, step {step}")
                assert np.abs(d).max() > 0.1
    lrs = [group["lr"] for group in opt.param_groups]
    assert lrs != [0.02, 0.005] and all(np.isfinite(lrs))
    assert tuner.last_hypergradients[0] != 0.0


def test_the_first_step_of_sgd_momentum_takes_its_own_path_and_both_are_proven():
    """stdlib SGD sets the momentum buffer to g at t == 1: a different kernel from later
    steps. Both are affine; the tuner proved both and the derivative follows each."""
    p = optdsl.Param(np.zeros(3))
    opt = SGD([p], lr=0.1, momentum=0.5, backend="numpy")
    HypergradientLR(opt, beta=0.0)  # beta 0: lr stays 0.1, the derivative is still there
    p.grad = np.array([1.0, 2.0, 3.0])
    opt.step()
    np.testing.assert_array_equal(opt.extra_output(p, "dlr:lr"), -p.grad)
    p.grad = np.array([1.0, 1.0, 1.0])
    opt.step()
    np.testing.assert_allclose(opt.extra_output(p, "dlr:lr"), -(0.5 * np.array([1, 2, 3])
                                                                  + 1.0), rtol=1e-15)
