"""Inputs the fuzzer found (minimised), and hand-written edge cases of the same kind: each
must pass the fuzzer's property (``tests/fuzz/check.py``), and where a bug was fixed the
test says what the outcome must be now."""

from __future__ import annotations

import inspect

import pytest

import optdsl
from optdsl.checker import RUNTIME_NAMES
from optdsl.compiler import load_spec
from tests.fuzz.check import check_input, time_limit

EDGE_CASES = [
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
]


@pytest.mark.parametrize("text", EDGE_CASES, ids=[f"{i}:{t[:30]!r}" for i, t in
                                                  enumerate(EDGE_CASES)])
def test_edge_cases(text):
    check_input(text)


def test_a_long_one_line_spec_is_text_not_a_path():
    """compile() asked the file system whether a one-line text names a file; for a line
    longer than a file name may be, that raised OSError (ENAMETOOLONG)."""
    text = "optimizer A update: p = g " + "x" * 300
    with pytest.raises(optdsl.ParseError) as info:
        optdsl.compile(text)
    assert (info.value.line, info.value.column) == (1, 13)
    assert check_input("x" * 5000).startswith("rejected")


def _sequential_ifs(n: int, indent: str) -> str:
    return "".join(f"{indent}if f{i}:\n{indent}    p = p - g\n" for i in range(n))


def test_listing_too_many_specialisations_fails_fast():
    """spec.paths() (used by `optdsl compile` and export) checked its limit of 4096 after
    each if: 2**11 paths followed by an if holding 11 ifs built 4 million paths first
    (17 s and a gigabyte). The spec itself compiles and runs: each step compiles its own
    kernel."""
    hypers = "".join(f"hyper f{i} = False\n" for i in range(11)) + "hyper c = False\n"
    text = (f"optimizer Nested\n{hypers}update:\n{_sequential_ifs(11, '    ')}    if c:\n"
            f"{_sequential_ifs(11, '        ')}")
    spec = load_spec(text)
    with time_limit(5), pytest.raises(optdsl.OptdslError, match="more than 4096"):
        spec.paths()
    assert check_input(text) == "ran"


@pytest.mark.parametrize(("text", "was"), [
    # The runtime keeps the step count under opt.state[p]["step"], so it never created
    # this state and each step overwrote the count's slot: the kernel read the step count
    # as the state (found as a KeyError in the interpreter, which had no 'step' buffer).
    ("optimizer A\nstate step = 0\nupdate:\n    step = step + 1\n    p = p - g * step\n",
     "a wrong result"),
    # The hyper's default replaced the group's list of parameters: a class that no call
    # could construct (ParamGroupTypeError).
    ("optimizer A\nhyper params = 1.0\nupdate:\n    p = p - params * g\n", "unusable"),
    # Keywords of the constructors: the hyper could never be given.
    ("optimizer A\nhyper backend = 1.0\nupdate:\n    p = p - backend * g\n", "unsettable"),
    ("schedule S\nhyper last_epoch = 1.0\nupdate:\n    lr = lr * last_epoch\n", "unsettable"),
    # The schedule read the group's parameters as a number (TypeError), or would write
    # a number over the first parameter.
    ("schedule S\ngroup params\nupdate:\n    params = 0.5\n", "TypeError"),
    ("schedule S\ngroup momentum or params[0]\nupdate:\n    momentum = 0.5\n", "corruption"),
])
def test_names_the_runtime_uses_are_rejected(text, was):
    with pytest.raises(optdsl.CheckError, match="cannot be a"):
        optdsl.compile(text)
    assert check_input(text) == "rejected (check)"


def _keywords(init) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for name, p in inspect.signature(init).parameters.items()
            if p.kind in kinds and name != "self"}


def test_runtime_names_follow_the_constructors():
    """A hyper cannot be named like a constructor's own argument: the checker's list is
    the constructors' signatures."""
    from optdsl.runtime import Optimizer
    from optdsl.schedules import Schedule

    assert set(RUNTIME_NAMES[("optimizer", "hyper")]) == _keywords(Optimizer.__init__)
    assert set(RUNTIME_NAMES[("schedule", "hyper")]) == _keywords(Schedule.__init__)
