"""eliminate_common_subexpressions: the same op on the same values is computed once."""

from optdsl.compiler import load_spec
from optdsl.passes import eliminate_common_subexpressions

RULE = """optimizer R
hyper eps = 1e-8
update:
    p = p - g * g / (g * g + eps)
"""


def _squares(program):
    return [i for i in program.body if i.op == "mul" and [a.id for a in i.args] ==
            [program.body[1].out.id] * 2]


def test_repeated_g_times_g_is_computed_once():
    spec = load_spec(RULE)
    before = spec.unoptimized(())
    assert before.body[1].attr == "g"
    assert len(_squares(before)) == 2
    after = eliminate_common_subexpressions(before)
    (square,) = _squares(after)
    readers = [i for i in after.body if square.out in i.args]
    assert sorted(i.op for i in readers) == ["add", "div"]  # both uses read the one square


def test_full_pipeline_squares_once():
    assert len(_squares(load_spec(RULE).program(()))) == 1


def test_different_constants_are_not_merged():
    """0.0 and -0.0 compare equal but are different constants."""
    spec = load_spec("optimizer R\nupdate:\n    p = p * 0.0 + g * -0.0\n")
    after = eliminate_common_subexpressions(spec.unoptimized(()))
    assert sum(i.op == "mul" for i in after.body) == 2
