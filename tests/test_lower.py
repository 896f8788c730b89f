"""Lowering: regressions found by tests/property (kernel vs interpreter)."""

import numpy as np

from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.interp import interpret
from tests.property.harness import assert_same_bits, run_kernel


def test_a_host_value_stored_in_p_is_filled_into_the_buffer():
    """x is elementwise after the if (the checker joins both branches), but a host scalar
    on the path where flag is False; p = x must still store a tensor of p's dtype."""
    spec = load_spec("optimizer R\nhyper lr = 0.5\nhyper flag = False\nupdate:\n"
                     "    x = lr\n    if flag:\n        x = x + p\n    p = x\n")
    hypers = {"lr": 0.5, "flag": False}
    path = spec.host["decide"](hypers, 1)
    assert path == (1,)
    buffers = {"p": np.ones(7, np.float32), "g": np.ones(7, np.float32)}
    want = interpret(spec.unoptimized(path), hypers, 1, buffers)
    assert_same_bits(want["p"], np.full(7, 0.5, np.float32), "interpreter")
    got = run_kernel(spec.kernel(get_backend("numpy"), path), hypers, 1, buffers, 4)
    assert_same_bits(got["p"], want["p"], "kernel")


def test_the_string_one_and_the_number_one_are_different_constants():
    spec = load_spec('optimizer R\nhyper mode = "1.0" in {"1.0", "b"}\nupdate:\n'
                     '    x = 2 if mode == "1.0" else 3\n    p = p - 1.0 * g * x\n')
    consts = [i for i in spec.unoptimized(()).body if i.op == "const"]
    assert {type(i.attr) for i in consts if i.attr in ("1.0", 1.0)} == {str, float}
    buffers = {"p": np.zeros(3), "g": np.ones(3)}
    got = run_kernel(spec.kernel(get_backend("numpy"), ()), {"mode": "1.0"}, 1, buffers, 2)
    assert_same_bits(got["p"], np.full(3, -2.0), "p")


def test_bare_tuple_swap_of_states_is_simultaneous():
    import numpy as np

    import optdsl

    Swap = optdsl.compile("""optimizer Swap
state a = 1
state b = 2
update:
    a, b = b, a
    p = p - a * g
""")
    w = optdsl.Param(np.ones(3))
    opt = Swap([w])
    w.grad = np.ones(3)
    opt.step()
    np.testing.assert_array_equal(opt.state[w]["a"], 2.0)
    np.testing.assert_array_equal(opt.state[w]["b"], 1.0)
    np.testing.assert_array_equal(w.data, -1.0)
