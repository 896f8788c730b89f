"""The affine-in-a-hyper proof and the derivative it builds (optdsl.affine).

Every path of every stdlib optimizer is affine in lr; the derivative the program computes
equals the exact difference quotient ``(p(lr=a) - p(lr=0)) / a`` on random float64 data,
and does not depend on lr. Each way of not being affine is reported with its line and
operation.
"""

from __future__ import annotations

import numpy as np
import pytest

from optdsl import hypers as H
from optdsl.affine import add_derivative, affine_report
from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.errors import InternalCompilerError, NotAffineError
from optdsl.extras import lower_with_extras
from optdsl.interp import interpret
from optdsl.lower import lower
from optdsl.optim import load
from optdsl.passes import run as run_passes
from tests.property.harness import run_kernel

OPTIMIZERS_WITH_LR = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta")
# Non-default values, so that every term of every branch is there (a zero weight decay
# would hide the weight-decay term on the paths that take it).
VALUES = {"weight_decay": 0.05, "momentum": 0.9, "dampening": 0.1, "lr_decay": 0.01,
          "alpha": 0.95, "rho": 0.85, "eps": 1e-3}
T = 3


def _cases():
    for name in OPTIMIZERS_WITH_LR:
        spec = load(name)._spec
        for path in spec.paths():
            yield pytest.param(name, path, id=f"{name}-{'-'.join(map(str, path)) or 'none'}")


def _buffers(spec, seed: int, n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"p": rng.standard_normal(n), "g": rng.standard_normal(n)}
    for s in spec.spec.states:  # positive: square averages go into sqrt, and above the
        # square of RMSprop's centered grad_avg
        big = any(word in s.name for word in ("sq", "square", "sum"))
        out[s.name] = rng.random(n) * 0.1 + (2.0 if big else 0.1)
    return out


def _hypers(spec, name: str, **changes) -> dict:
    given = {k: v for k, v in VALUES.items() if k in spec.hypers}
    return H.resolve(spec.hypers, {**given, **changes}, name)


@pytest.mark.parametrize(("name", "path"), list(_cases()))
def test_every_stdlib_path_is_affine_in_lr_with_the_exact_derivative(name, path):
    spec = load(name)._spec
    affine_report(spec.checked, path, "lr")  # raises if not
    program = lower_with_extras(spec.checked, path, ("dlr:lr",))
    buffers = _buffers(spec, seed=len(path) + sum(path))

    def step(lr: float) -> dict[str, np.ndarray]:
        return interpret(program, _hypers(spec, name, lr=lr), T, buffers)

    base = step(0.0)
    p0 = base.get("p", buffers["p"])
    for a in (1.0, 0.25, 3.0):
        out = step(a)
        p = out.get("p", buffers["p"])
        quotient = (p - p0) / a
        assert np.all(np.isfinite(quotient))
        np.testing.assert_allclose(out["dlr:lr"], quotient, rtol=1e-12,
                                   atol=1e-12 * (1 + np.abs(p0).max()) / a)
        # The slope is computed from values free of lr: the same bits for any lr.
        np.testing.assert_array_equal(out["dlr:lr"], base["dlr:lr"])
        for state in spec.spec.states:  # and no state moves with lr
            if state.name in out:
                np.testing.assert_array_equal(out[state.name], base[state.name])
    if "p" in dict(program.outputs):
        assert np.any(base["dlr:lr"] != 0)  # a real slope, not a vacuous zero


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_the_kernel_computes_the_interpreters_derivative_bit_for_bit(name):
    """Through the passes (folded, CSE'd, hoisted) and the NumPy backend, in float64."""
    spec = load(name)._spec
    values = _hypers(spec, name, lr=0.0125)
    path = spec.host["decide"](values, T)
    buffers = _buffers(spec, seed=7, n=300)
    want = interpret(lower_with_extras(spec.checked, path, ("dlr:lr",)), values, T, buffers)
    kernel = spec.kernel(get_backend("numpy"), path, ("dlr:lr",))
    assert kernel.outputs[-1] == "dlr:lr"
    given = {**buffers, "dlr:lr": np.full(300, np.nan)}
    got = run_kernel(kernel, values, T, {b: given[b] for b in kernel.buffers}, chunk=128)
    for out in kernel.outputs:
        np.testing.assert_array_equal(got[out], want[out], err_msg=out)


def test_a_path_that_leaves_p_alone_has_a_zero_derivative():
    spec = load_spec(_RULE.format(body="    if t > 100:\n        p = p - lr * g\n"), "r.opt")
    path = (1,)  # t > 100 not taken
    program = add_derivative(lower(spec.checked, path), spec.checked, "lr")
    out = interpret(program, _hypers(spec, "R"), 1, {"p": np.ones(3), "g": np.ones(3)})
    np.testing.assert_array_equal(out["dlr:lr"], np.zeros(3))
    assert "p" not in out


def test_where_with_an_independent_condition_is_affine():
    spec = load_spec(_RULE.format(body="    p = p - where(g > 0, lr, 2 * lr + 1) * g\n"),
                     "r.opt")
    program = add_derivative(lower(spec.checked, ()), spec.checked, "lr")
    g = np.array([-2.0, 0.0, 3.0])
    out = interpret(program, _hypers(spec, "R", lr=0.5), 1, {"p": np.ones(3), "g": g})
    np.testing.assert_array_equal(out["dlr:lr"], -np.where(g > 0, 1.0, 2.0) * g)


def test_nonlinear_values_that_do_not_reach_p_are_allowed():
    """lr * lr in a local nothing reads, and in a track (diagnostics are not p)."""
    body = ("    unused = lr * lr\n    track lr_squared = lr * lr * p\n"
            "    p = p - lr * g\n")
    spec = load_spec(_RULE.format(body=body), "r.opt")
    program = lower_with_extras(spec.checked, (), ("dlr:lr", "track"))
    out = interpret(program, _hypers(spec, "R", lr=0.5), 1,
                    {"p": np.ones(2), "g": np.array([1.0, -3.0])})
    np.testing.assert_array_equal(out["dlr:lr"], [-1.0, 3.0])
    np.testing.assert_array_equal(out["track:lr_squared"], [0.25, 0.25])


def test_the_derivative_is_emitted_beside_what_it_differentiates_and_folded():
    """Forward mode: the new instructions sit on the line of what they differentiate (the
    last one of Adam), and the passes hoist their host part: 1 / (1 - b1 ** t) is one more
    kernel argument, and the kernel does no division more than without the derivative."""
    spec = load("Adam")._spec
    path = spec.paths()[-1]
    lowered = lower(spec.checked, path)
    program = add_derivative(lowered, spec.checked, "lr")
    first_new = max(i.out.id for i in lowered.body) + 1
    added = [i for i in program.body if i.out.id >= first_new]
    assert added and {i.span.line for i in added if i.op != "const"} == {33}
    assert [i.out.id for i in program.body if i.out.id < first_new] == \
        [i.out.id for i in lowered.body]  # the original order is kept

    def divisions(p) -> tuple[int, int]:
        p = run_passes(p)
        return (sum(i.op == "div" for i in p.body), sum(i.op == "div" for i in p.host))

    assert divisions(program) == (divisions(lowered)[0], divisions(lowered)[1] + 1)
    with pytest.raises(InternalCompilerError):
        add_derivative(run_passes(program), spec.checked, "lr")


# --- what is not affine, and why ---------------------------------------------------------

_RULE = '''optimizer R
"""A rule for the affine tests."""

hyper lr = 0.1 in [0, inf)
hyper beta = 0.9 in [0, 1)
hyper betas = (0.9, 0.99)
hyper nesterov = False
hyper mode = "a" in {{"a", "b"}}

state exp_avg = 0

update:
{body}'''


@pytest.mark.parametrize(("body", "message", "line"), [
    ("    p = p - lr * lr * g\n",
     "p is not affine in lr: line 13 'p = p - lr * lr * g' multiplies two values that "
     "depend on lr", 13),
    ("    step = sqrt(lr) * g\n    p = p - step\n",
     "p is not affine in lr: line 13 'step = sqrt(lr) * g' takes sqrt() of a value that "
     "depends on lr", 13),
    ("    exp_avg = beta * exp_avg + lr * g\n    p = p - exp_avg\n",
     "state exp_avg depends on lr (line 13), so ∂p/∂lr would depend on past steps", 13),
    ("    p = p - where(g > lr, lr, 0) * g\n",
     "p is not affine in lr: line 13 'p = p - where(g > lr, lr, 0) * g' chooses between "
     "values with a condition that depends on lr", 13),
    ("    p = p - (lr if lr > 0.5 else 0.5) * g\n",
     "p is not affine in lr: line 13 'p = p - (lr if lr > 0.5 else 0.5) * g' chooses "
     "between values with a condition that depends on lr", 13),
    ("    p = p - g / (1 + lr)\n",
     "p is not affine in lr: line 13 'p = p - g / (1 + lr)' divides by a value that "
     "depends on lr", 13),
    ("    x = max(lr, 0.01)\n    p = p - x * g\n",
     "p is not affine in lr: line 13 'x = max(lr, 0.01)' takes max() of a value that "
     "depends on lr", 13),
    ("    p = p - 2 ** lr * g\n",
     "p is not affine in lr: line 13 'p = p - 2 ** lr * g' raises to a power that depends "
     "on lr", 13),
    ("    p = p - lr ** 2 * g\n",
     "p is not affine in lr: line 13 'p = p - lr ** 2 * g' raises a value that depends on "
     "lr to a power", 13),
])
def test_not_affine_says_why_with_the_line_and_the_operation(body, message, line):
    spec = load_spec(_RULE.format(body=body), "r.opt")
    with pytest.raises(NotAffineError) as info:
        affine_report(spec.checked, (), "lr")
    assert str(info.value) == message
    assert info.value.line == line and info.value.hyper == "lr"


def test_the_first_cause_is_named_not_where_it_ends_up():
    body = "    x = lr * lr\n    y = x + 1\n    z = y * g\n    p = p - z\n"
    spec = load_spec(_RULE.format(body=body), "r.opt")
    with pytest.raises(NotAffineError, match=r"line 13 'x = lr \* lr' multiplies"):
        affine_report(spec.checked, (), "lr")


@pytest.mark.parametrize(("hyper", "message"), [
    ("lrr", "cannot differentiate by 'lrr': R has no such hyper; did you mean 'lr'?"),
    ("momentum", "cannot differentiate by 'momentum': R has no such hyper"),
    ("betas", "cannot differentiate by 'betas': it is a tuple hyper, not a float"),
    ("nesterov", "cannot differentiate by 'nesterov': it is a bool hyper, not a float"),
    ("mode", "cannot differentiate by 'mode': it is a str hyper, not a float"),
])
def test_only_a_float_hyper_can_be_differentiated_by(hyper, message):
    spec = load_spec(_RULE.format(body="    p = p - lr * g\n"), "r.opt")
    with pytest.raises(NotAffineError) as info:
        affine_report(spec.checked, (), hyper)
    assert str(info.value) == message and info.value.line is None


def test_other_hypers_of_the_stdlib():
    """eps sits in a divisor (Adam) or in a state (Adadelta); AdamW's weight_decay is
    affine."""
    adam, adadelta = load("Adam")._spec, load("Adadelta")._spec
    with pytest.raises(NotAffineError, match="divides by a value that depends on eps"):
        affine_report(adam.checked, adam.paths()[-1], "eps")
    with pytest.raises(NotAffineError, match="state acc_delta depends on eps"):
        affine_report(adadelta.checked, adadelta.paths()[0], "eps")
    adamw = load("AdamW")._spec
    for path in adamw.paths():  # p * (1 - lr * weight_decay): only p sees it
        affine_report(adamw.checked, path, "weight_decay")
