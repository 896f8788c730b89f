"""fold_constants: host arithmetic on constants becomes one constant, computed in float64."""

import numpy as np

from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.passes import fold_constants
from tests.property.harness import run_kernel

NUMPY = get_backend("numpy")


def _consts(program):
    return [i.attr for i in program.body + program.host if i.op == "const"]


def test_one_minus_beta_becomes_one_constant():
    spec = load_spec("optimizer R\nupdate:\n    p = p - (1 - 0.9) * g\n")
    before = spec.unoptimized(())
    after = fold_constants(before)
    assert [i.op for i in before.body].count("sub") == 2  # (1 - 0.9) and p - ...
    assert [i.op for i in after.body].count("sub") == 1  # only the elementwise one
    # the exact float64 result, as the host prologue would have computed it
    assert np.float64(1) - np.float64(0.9) in _consts(after)
    source = NUMPY.render(spec.program(()), path=())
    assert repr(1 - 0.9) in source  # 0.09999999999999998, re-rendered inline


def test_folding_keeps_the_sign_of_zero():
    spec = load_spec("optimizer R\nupdate:\n    p = p + 0 * -1\n")
    (value,) = [v for v in _consts(fold_constants(spec.unoptimized(()))) if v == 0 and
                np.signbit(v)]
    assert repr(value) == "-0.0"


def test_hypers_and_t_are_not_folded():
    spec = load_spec("optimizer R\nhyper lr = 0.5\nupdate:\n    p = p - lr * (t * 2) * g\n")
    after = fold_constants(spec.unoptimized(()))
    ops = [i.op for i in after.body]
    assert "hyper" in ops and "step" in ops
    assert ops.count("mul") == 3  # t * 2, lr * (..), and the elementwise one


def test_where_with_a_constant_condition_picks_its_branch():
    spec = load_spec("optimizer R\nupdate:\n    p = where(2 > 1, p - g, p + g)\n")
    after = fold_constants(spec.unoptimized(()))
    assert "where" not in [i.op for i in after.body]
    assert dict(after.outputs)["p"] == next(i.out for i in after.body if i.op == "sub")


def test_where_picking_a_host_value_stays_elementwise():
    """where(True, lr, p) is elementwise: folding must not turn the output p into a host
    scalar (it used to, and rendering the kernel then failed with a KeyError)."""
    spec = load_spec("optimizer R\nhyper lr = 0.25\nupdate:\n    p = where(1 > 0, lr, p)\n")
    after = fold_constants(spec.unoptimized(()))
    assert dict(after.outputs)["p"].type.is_tensor
    kernel = spec.kernel(NUMPY, ())
    out = run_kernel(kernel, {"lr": 0.25}, 1, {"p": np.ones(5, np.float32),
                                                "g": np.ones(5, np.float32)}, 4)
    assert np.array_equal(out["p"], np.full(5, 0.25, np.float32))
