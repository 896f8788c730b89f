"""eliminate_dead_code: values no output needs are dropped, with their kernel arguments."""

from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec

RULE = """optimizer R
hyper lr = 0.1
update:
    unused = sqrt(abs(g)) + lr * 3
    p = p - lr * g
"""


def test_an_unused_local_is_dropped():
    spec = load_spec(RULE)
    kept = spec.program((), skip=("eliminate_dead_code",))
    assert "sqrt" in [i.op for i in kept.body]
    program = spec.program(())
    assert "sqrt" not in [i.op for i in program.body]
    assert "sqrt" not in get_backend("numpy").render(program, path=())


def test_a_kernel_argument_only_dead_code_read_is_dropped():
    """``lr * 3`` fed only the dead local: no host computation, no kernel argument."""
    program = load_spec(RULE).program(())
    assert [v.hint for v in program.kernel_args] == ["lr"]
    assert "mul" not in [i.op for i in program.host]
    assert 3.0 not in [i.attr for i in program.host if i.op == "const"]


def test_loaded_but_unused_state_is_not_a_kernel_buffer():
    spec = load_spec("optimizer R\nstate buf = 0\nupdate:\n    x = buf * 2\n    p = p - g\n")
    assert spec.program(()).loads == ("p", "g")
