"""Re-rendering expressions for comments: the text parses back to the same tree."""

from __future__ import annotations

import pytest

from optdsl import syntax as S
from optdsl._resources import data_dir
from optdsl.frontend import parse

STDLIB_FILES = sorted(data_dir("stdlib").glob("*.opt"))


def reparse(expr_text: str) -> S.Expr:
    spec = parse(f"optimizer X\nupdate:\n    x = {expr_text}\n")
    return spec.body[0].value


def assignments(stmts):
    for stmt in stmts:
        if isinstance(stmt, S.Assign):
            yield stmt
        elif isinstance(stmt, S.Track):
            yield S.Assign((stmt.name,), stmt.value)
        else:
            for cond, body in stmt.branches:
                yield S.Assign(("c",), cond)
                yield from assignments(body)
            yield from assignments(stmt.orelse or ())


@pytest.mark.parametrize("path", STDLIB_FILES, ids=lambda p: p.name)
def test_every_stdlib_expression_round_trips(path):
    spec = parse(path.read_text())
    for stmt in assignments(spec.body):
        if isinstance(stmt.value, S.Tuple):
            continue
        assert reparse(S.unparse(stmt.value)) == stmt.value, S.unparse(stmt.value)


@pytest.mark.parametrize("text", [
    "-(g ** 2) ** 0.5 - (p - g) - -g",
    "2 ** -t",
    "(a - b) - (c - d) / (e * f)",
    "a if b < c <= d else e if f else -g",
    "not a and (b or c)",
    "x / (y * 3) + (not t > 1) * 0",
    "max(a, b, c) ** (1 / 3)",
    "betas[0] * 1e-08 + 1.5e+300",
    "where(g > 0, g, -g)",
])
def test_tricky_expressions_round_trip(text):
    tree = reparse(text)
    assert reparse(S.unparse(tree)) == tree


def test_strings_are_never_copied():
    tree = reparse('1 if mode == "os.system(1)" else 2')
    assert S.unparse(tree) == "1 if mode == <string> else 2"
