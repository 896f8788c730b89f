"""Mutated and random program text: the compiler answers with a spec or a SpecError.

Nothing else may escape ``load_spec``: no Lark exception, no IndexError, KeyError or
RecursionError, no InternalCompilerError. A mutation that still compiles must also lower
and render to a NumPy kernel, since compiling a checked spec can only fail by a bug.

Set ``OPTDSL_FUZZ_EXAMPLES`` to run more examples (a longer fuzzing session).
"""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optdsl
from optdsl._resources import data_dir
from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec

STDLIB = {p.name: p.read_text() for p in sorted(data_dir("stdlib").glob("*.opt"))}
SCALE = int(os.environ.get("OPTDSL_FUZZ_EXAMPLES", "0")) or 1

# Fragments a mutation may insert: the language's own tokens, Python's, and characters a
# lexer or an indentation tracker could trip on.
FRAGMENTS = [
    "(", ")", "[", "]", "{", "}", ":", ",", "=", "==", "+=", "**", "-", "*", "/", ".", "#",
    '"', "'", '"""', "\\", "\\\n", "if", "if ", "elif x:", "else:", "where(", "sqrt(", "max(",
    "clip(g, ", "not ", " and ", " or ", "pass", "t", "p", "g", "inf", "pi", "1e999", "0",
    "1.5", ".5", "2e-3", "True", "False", "hyper ", "state ", "require ", "update:",
    "optimizer ", "in [0, 1)", ' in {"a"}', "betas[1]", "b1, b2 = ", "\t", "    ", "\n",
    "\n    ", "\n        ", "\r\n", "\r", "\x0c", "\x00", "\u00a0", "λ", "é", "𝔭", "\u2028",
    "__import__", "exec", "lambda", "return",
]


@pytest.fixture(scope="module", autouse=True)
def no_disk_cache():
    """Kernels of mutants are throwaway: keep them out of the user's cache directory."""
    old = os.environ.get("OPTDSL_CACHE_DIR")
    os.environ["OPTDSL_CACHE_DIR"] = "off"
    yield
    if old is None:
        del os.environ["OPTDSL_CACHE_DIR"]
    else:
        os.environ["OPTDSL_CACHE_DIR"] = old


def compile_or_reject(text: str) -> None:
    """The property: a SpecError, or a spec whose first kernel renders."""
    try:
        spec = load_spec(text, "fuzz.opt")
    except optdsl.SpecError as exc:
        rendered = str(exc)
        assert rendered.startswith("fuzz.opt:"), rendered
        assert exc.diagnostics and exc.line >= 1 and exc.column >= 1
        assert exc.line <= text.count("\n") + 2
        return
    kernel = spec.kernel(get_backend("numpy"), spec.paths()[0])
    assert "def kernel(" in kernel.source


@st.composite
def mutations(draw, text: str) -> str:
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        op = draw(st.sampled_from(["delete", "insert", "replace", "fragment", "swap",
                                   "duplicate", "drop_line", "truncate"]))
        # Mostly mutate the update block: hypothesis favours small integers, and a broken
        # header hides everything after it.
        last = max(n - 1, 0)
        where = draw(st.sampled_from(["update block"] * 3 + ["anywhere"]))
        lo = min(max(text.find("update:"), 0), last) if where == "update block" else 0
        i = draw(st.integers(lo, last))
        if op == "delete" and n:
            j = min(n, i + draw(st.integers(1, 8)))
            text = text[:i] + text[j:]
        elif op in ("insert", "replace"):
            ch = draw(st.characters(codec="utf-8") | st.sampled_from(string.printable))
            text = text[:i] + ch + text[i + (op == "replace"):]
        elif op == "fragment":
            text = text[:i] + draw(st.sampled_from(FRAGMENTS)) + text[i:]
        elif op in ("swap", "duplicate", "drop_line"):
            lines = text.split("\n")
            first = text[:i].count("\n")  # a line at or after the position drawn above
            a = draw(st.integers(first, len(lines) - 1))
            b = draw(st.integers(first, len(lines) - 1))
            if op == "swap":
                lines[a], lines[b] = lines[b], lines[a]
            elif op == "duplicate":
                lines.insert(b, lines[a])
            else:
                del lines[a]
            text = "\n".join(lines)
        elif op == "truncate":
            text = text[:i]
    return text


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(STDLIB)))
def test_mutated_stdlib_specs_compile_or_raise_spec_error(data, name):
    compile_or_reject(data.draw(mutations(STDLIB[name]), label="mutant"))


@settings(max_examples=60 * SCALE, deadline=None)
@given(st.text(alphabet=string.printable, max_size=300))
def test_random_printable_text(text):
    compile_or_reject(text)


# Well-formed programs from a small grammar get past the parser, so they exercise the
# checker, lowering and rendering: every mix of host and elementwise values, tuples,
# strings and booleans, calls of every arity, and nested ifs.
HEADER = ('optimizer Generated\nhyper lr = 0.1 in [0, inf)\nhyper betas = (0.9, 0.99)\n'
          'hyper mode = "a" in {"a", "b"}\nhyper flag = False\nstate exp_avg = 0\n'
          'state v = 0 if flag\n\nupdate:\n    x = 2 * lr\n')
NUMBERS = ["p", "g", "t", "lr", "exp_avg", "x", "pi", "0", "1", "0.5", "1e-8", "2"]
OTHERS = ["betas", "mode", "flag", "v", "y", "inf", "True", "False", '"a"', "b1", "sqrtt"]
OTHERS += ["betas[0]", "betas[1]", "betas[2]", "lr[0]", "(1, 2)[0]"]
ARITY = {"sqrt": 1, "rsqrt": 1, "exp": 1, "log": 1, "abs": 1, "sign": 1, "floor": 1,
         "cos": 1, "sin": 1, "tanh": 1, "min": 2, "max": 3, "clip": 3, "len": 1}


@st.composite
def _calls(draw, inner) -> str:
    """A call of a function, usually with the right number of arguments."""
    func = draw(st.sampled_from(sorted(ARITY)))
    n = max(ARITY[func] + draw(st.sampled_from([0] * 8 + [-1, 1])), 0)
    return f"{func}({', '.join(draw(st.lists(inner, min_size=n, max_size=n)))})"


def _expressions():
    """Mostly well-typed number expressions, with some of every other kind mixed in."""
    leaves = st.sampled_from(NUMBERS) | st.sampled_from(NUMBERS) | st.sampled_from(OTHERS)

    def extend(inner):
        binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**"]), inner)
        compare = st.tuples(inner, st.sampled_from(["<", "<=", ">", "==", "!="]), inner)
        return st.one_of(
            binary.map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
            binary.map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
            _calls(inner),
            st.tuples(compare, inner, inner).map(
                lambda x: f"where({x[0][0]} {x[0][1]} {x[0][2]}, {x[1]}, {x[2]})"),
            st.tuples(inner, compare, inner).map(
                lambda x: f"({x[0]} if {x[1][0]} {x[1][1]} {x[1][2]} else {x[2]})"),
            inner.map(lambda x: f"(-{x})"),
            st.tuples(st.sampled_from(["", "not "]), compare, st.sampled_from(["and", "or"])).map(
                lambda x: f"where({x[0]}{x[1][0]} {x[1][1]} {x[1][2]} {x[2]} flag, 1, 0)"),
        )

    return st.recursive(leaves, extend, max_leaves=8)


EXPRESSIONS = _expressions()
TARGETS = st.sampled_from(["p", "p", "g", "exp_avg", "exp_avg", "v", "x", "x", "y", "x, y",
                           "b1, b2", "lr", "t"])


@st.composite
def blocks(draw, indent: str = "    ", depth: int = 0) -> str:
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["assign", "assign", "augassign", "if", "pass"]))
        if kind == "if" and depth < 2:
            cond = draw(st.sampled_from(["flag", "not flag", 'mode == "b"', "t > 1", "lr"])
                        | EXPRESSIONS)
            lines.append(f"{indent}if {cond}:\n")
            lines.append(draw(blocks(indent + "    ", depth + 1)))
            if draw(st.booleans()):
                lines.append(f"{indent}elif {draw(EXPRESSIONS)}:\n")
                lines.append(draw(blocks(indent + "    ", depth + 1)))
            if draw(st.booleans()):
                lines.append(f"{indent}else:\n")
                lines.append(draw(blocks(indent + "    ", depth + 1)))
        elif kind == "augassign":
            op = draw(st.sampled_from(["+=", "-=", "*=", "/="]))
            lines.append(f"{indent}{draw(st.sampled_from(['p', 'x', 'exp_avg']))} {op} "
                         f"{draw(EXPRESSIONS)}\n")
        elif kind == "pass":
            lines.append(f"{indent}pass\n")
        else:
            target = draw(TARGETS)
            value = draw(EXPRESSIONS)
            if "," in target and draw(st.booleans()):
                value = draw(st.sampled_from(["betas", f"({value}, {draw(EXPRESSIONS)})"]))
            lines.append(f"{indent}{target} = {value}\n")
    return "".join(lines)


@settings(max_examples=80 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_generated_update_blocks(body):
    compile_or_reject(HEADER + body)


@pytest.mark.parametrize("name", sorted(STDLIB))
def test_stdlib_specs_themselves_compile(name):
    compile_or_reject(STDLIB[name])
    load_spec(STDLIB[name], name)  # and cleanly: no SpecError


@pytest.mark.parametrize("text", [
    "",
    "\n\n",
    "optimizer",
    "optimizer A",
    "optimizer A\nupdate:",
    "optimizer A\nupdate:\n    pass",
    "optimizer A\nupdate:\n\tp = g\n        p = g\n",
    "optimizer A\nupdate:\n    p = " + "(" * 500 + "g" + ")" * 500,
    "optimizer A\nupdate:\n    p = " + "-" * 2000 + "g",
    "optimizer A\nupdate:\n    p = " + " + ".join(["g"] * 2000),
    "optimizer A\nupdate:\n    p = " + " ** ".join(["g"] * 2000),
    "optimizer A\nupdate:\n    p = " + "not " * 2000 + "g",
    "optimizer A\nupdate:\n    p = " + "sqrt(" * 300 + "g" + ")" * 300,
    'optimizer A\nhyper s = "\\N{bogus}"\nupdate:\n    p = g',
    'optimizer A\n"""\\x"""\nupdate:\n    p = g',
    "optimizer A\nhyper n: int = 1e999\nupdate:\n    p = g",
    "optimizer A\nhyper lr = 1e999 in [0, inf)\nupdate:\n    p = p - lr * g",
    "optimizer A\nhyper lr = 0 / 0\nupdate:\n    p = g",
    "optimizer A\nupdate:\n    p = (1, 2)[5]",
    "optimizer A\nhyper b = (1,)\nupdate:\n    x, = b\n    p = g",
    "optimizer A\nupdate:\n    x = (g, 1.0) if t > 1 else (g, 2.0)\n    p = g",
])
def test_edge_cases(text):
    compile_or_reject(text)
