"""What HypergradientLR refuses, and how it says so: an update that is not affine in the
hyper (NotAffineError at construction, naming the optimizer, the line and the reason), a
hyper that cannot be tuned, bad arguments, and step(closure)."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl.autotune import HypergradientLR
from optdsl.errors import NotAffineError, OptdslError
from optdsl.optim import SGD, Adam

SQUARED = """optimizer Squared
hyper lr = 0.1

update:
    p = p - lr * lr * g
"""

STATEFUL = """optimizer LrInState
hyper lr = 0.1
state velocity = 0

update:
    velocity = 0.9 * velocity + lr * g
    p = p - velocity
"""

LATER = """optimizer Later
hyper lr = 0.1

update:
    if t == 1:
        p = p - lr * g
    else:
        p = p - sqrt(lr) * g
"""

SWITCHED = """optimizer Switched
hyper lr = 0.1
hyper clipped = False

update:
    if clipped:
        p = p - min(lr, 0.01) * g
    else:
        p = p - lr * g
"""

AFFINE = """optimizer Affine
hyper lr = 0.1 in (0, 1]
hyper scale = 2.0
hyper steps: int = 3

update:
    p = p - where(g > 0, lr, 2 * lr) * g / scale + 0 * steps
"""


def _param():
    return optdsl.Param(np.ones(3))


@pytest.mark.parametrize(("source", "reason", "line"), [
    (SQUARED, "line 5 'p = p - lr * lr * g' multiplies two values that depend on lr", 5),
    (STATEFUL, "state velocity depends on lr (line 6), so ∂p/∂lr would depend on past "
               "steps", 6),
    (LATER, "takes sqrt() of a value that depends on lr", 8),
])
def test_an_update_not_affine_in_lr_is_refused_at_construction(source, reason, line):
    Rule = optdsl.compile(source)
    opt = Rule([_param()], lr=0.1)
    with pytest.raises(NotAffineError) as info:
        HypergradientLR(opt)
    message = str(info.value)
    assert message.startswith(f"HypergradientLR cannot tune {Rule.__name__}'s lr")
    assert reason in message
    assert info.value.line == line and info.value.hyper == "lr"
    assert isinstance(info.value, ValueError)
    # Nothing was attached: no request for the derivative, no hook.
    assert opt._extras() == () and not opt._step_pre_hooks


def test_the_path_each_group_takes_is_proven_and_the_group_is_named():
    Rule = optdsl.compile(SWITCHED)
    HypergradientLR(Rule([_param()], lr=0.1))  # the affine branch only: fine
    opt = Rule([{"params": [_param()]}, {"params": [_param()], "clipped": True}], lr=0.1)
    with pytest.raises(NotAffineError, match=r"Switched's lr \(param group 1, step 1\): .*"
                                             r"takes min\(\) of a value that depends on lr"):
        HypergradientLR(opt)


def test_hypers_changed_to_a_path_not_affine_are_refused_before_the_step():
    Rule = optdsl.compile(SWITCHED)
    p = _param()
    opt = Rule([p], lr=0.1)
    HypergradientLR(opt, beta=0.1)
    p.grad = np.ones(3)
    opt.step()
    opt.param_groups[0]["clipped"] = True
    before = p.data.copy()
    with pytest.raises(NotAffineError, match="takes min"):
        opt.step()
    np.testing.assert_array_equal(p.data, before)  # nothing stepped


def test_another_float_hyper_can_be_tuned_but_not_a_missing_or_int_one():
    Rule = optdsl.compile(AFFINE)
    opt = Rule([_param()], lr=0.1)
    HypergradientLR(opt, hyper="lr", lr_min=1e-4).remove()
    with pytest.raises(NotAffineError, match=r"'lrr': Affine has no such hyper; "
                                             r"did you mean 'lr'\?"):
        HypergradientLR(opt, hyper="lrr")
    with pytest.raises(NotAffineError, match="'steps': it is a int hyper, not a float"):
        HypergradientLR(opt, hyper="steps")
    with pytest.raises(NotAffineError, match="divides by a value that depends on scale"):
        HypergradientLR(opt, hyper="scale")
    with pytest.raises(NotAffineError, match="cannot tune Adam's eps.*depends on eps"):
        HypergradientLR(Adam([_param()]), hyper="eps")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"beta": -1e-3}, ValueError, r"HypergradientLR\(SGD\): beta must be >= 0, got -0.001"),
    ({"beta": float("nan")}, ValueError, "beta must be finite"),
    ({"beta": "0.1"}, TypeError, "beta must be a number, got '0.1'"),
    ({"beta": True}, TypeError, "beta must be a number"),
    ({"lr_min": float("inf")}, ValueError, "lr_min must be finite"),
    ({"lr_min": 0.5, "lr_max": 0.1}, ValueError, "lr_max=0.1 is below lr_min=0.5"),
    ({"lr_min": -0.1}, ValueError, r"lr_min=-0.1 is outside lr's range, in \[0, inf\)"),
    ({"hyper": 3}, TypeError, "hyper must be the name of a hyper"),
])
def test_bad_arguments_are_refused_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        HypergradientLR(SGD([_param()], lr=0.1), **kwargs)


def test_bounds_outside_an_open_range_are_refused():
    Rule = optdsl.compile(AFFINE)  # lr in (0, 1]
    opt = Rule([_param()], lr=0.1)
    with pytest.raises(ValueError, match=r"lr_min=0.0 is outside lr's range, in \(0, 1\]"):
        HypergradientLR(opt)
    with pytest.raises(ValueError, match="lr_max=2.0 is outside"):
        HypergradientLR(opt, lr_min=1e-4, lr_max=2.0)
    HypergradientLR(opt, lr_min=1e-4, lr_max=1.0)


def test_only_optdsl_optimizers_are_taken():
    with pytest.raises(TypeError, match="needs an optdsl optimizer .* got list"):
        HypergradientLR([_param()])


def test_step_with_a_closure_is_refused_before_anything_moves():
    p = _param()
    opt = SGD([p], lr=0.1)
    HypergradientLR(opt)
    p.grad = np.ones(3)
    calls = []
    with pytest.raises(OptdslError, match=r"step\(closure\) is not supported"):
        opt.step(lambda: calls.append(1))
    assert calls == [] and not opt.state[p]
