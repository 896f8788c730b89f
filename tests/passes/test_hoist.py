"""hoist_host_scalars: host values move to a float64 prologue, computed once per step."""

import numpy as np

from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.hypers import resolve

RULE = """optimizer R
hyper lr = 1e-3
hyper betas = (0.9, 0.999)
update:
    b1, b2 = betas
    p = p - lr / (1 - b1 ** t) * g
"""


def test_bias_correction_becomes_one_kernel_argument():
    spec = load_spec(RULE)
    program = spec.program(())
    assert len(program.kernel_args) == 1
    assert all(i.out.type.is_tensor for i in program.body)
    assert "pow" in [i.op for i in program.host]
    kernel = spec.kernel(get_backend("numpy"), ())
    body = kernel.source.split("def kernel")[1]
    assert "power" not in body  # no host arithmetic per chunk
    assert "_np.power" in kernel.source.split("def kernel")[0]  # it is in the prologue


def test_the_argument_is_computed_in_float64():
    spec = load_spec(RULE)
    kernel = spec.kernel(get_backend("numpy"), ())
    hypers = resolve(spec.hypers, {"lr": 0.3, "betas": (0.7, 0.9)}, "R")
    for t in (1, 2, 10):
        (arg,) = kernel.host_args(hypers, t)
        assert type(arg) is np.float64
        assert arg == np.float64(0.3) / (np.float64(1) - np.float64(0.7) ** np.float64(t))


def test_constants_stay_inline():
    spec = load_spec("optimizer R\nupdate:\n    p = p * 0.5 - g\n")
    program = spec.program(())
    assert program.kernel_args == ()
    assert "0.5, out=" in spec.kernel(get_backend("numpy"), ()).source
