"""Golden files for spec error messages.

Each ``cases/NAME.opt`` is a spec with one mistake (or a few); ``cases/NAME.txt`` is the
exact ``str()`` of the error that compiling it raises, reported under the file name
``NAME.opt``. The ``.txt`` files are reviewed by eye: the line and column are right, the
caret is under the offending text, and the hint says what to do.

After changing a message on purpose, regenerate with

    OPTDSL_REGEN_GOLDEN=1 python -m pytest -q tests/errors/test_golden_messages.py

and review the diff of ``tests/errors/cases/*.txt`` before committing it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import optdsl
from optdsl.compiler import load_spec

CASES = Path(__file__).parent / "cases"
REGEN = os.environ.get("OPTDSL_REGEN_GOLDEN") == "1"
NAMES = sorted(p.stem for p in CASES.glob("*.opt"))

# What must never reach a user: Lark's terminal and class names, Python internals.
LEAKS = re.compile(r"_NL|_INDENT|_DEDENT|\$END|RPAR|LPAR|__ANON|Token\(|Traceback|lark|"
                   r"Unexpected[A-Z]|VisitError|'(add|sub|mul|div|pow|neg)'")
HEADER = re.compile(r"(?P<file>[\w.]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)")


def _error_for(name: str) -> optdsl.SpecError:
    text = (CASES / f"{name}.opt").read_text()
    with pytest.raises(optdsl.SpecError) as info:
        load_spec(text, f"{name}.opt")
    return info.value


@pytest.mark.parametrize("name", NAMES)
def test_message_matches_golden_file(name):
    exc = _error_for(name)
    golden = CASES / f"{name}.txt"
    if REGEN:
        golden.write_text(str(exc) + "\n")
    assert golden.exists(), f"no golden file for {name}; run with OPTDSL_REGEN_GOLDEN=1"
    assert str(exc) + "\n" == golden.read_text()


@pytest.mark.parametrize("name", NAMES)
def test_message_is_a_compiler_diagnostic(name):
    """Every diagnostic is 'FILE:LINE:COL: message', the source line, and a caret under it."""
    exc = _error_for(name)
    assert isinstance(exc, (optdsl.ParseError, optdsl.CheckError))
    assert not LEAKS.search(str(exc)), str(exc)
    lines = (CASES / f"{name}.opt").read_text().splitlines()
    for diag in exc.diagnostics:
        rendered = diag.render().splitlines()
        head = HEADER.fullmatch(rendered[0])
        assert head, rendered[0]
        assert head["file"] == f"{name}.opt"
        line, col = int(head["line"]), int(head["col"])
        assert (line, col) == (diag.span.line, diag.span.column)
        assert 1 <= line <= max(len(lines), 1)
        source_line = lines[line - 1] if lines else ""
        if not source_line:
            assert len(rendered) == 1
            continue
        assert rendered[1] == "    " + source_line
        caret = rendered[2][4:]
        assert caret.strip("^ \t") == "" and caret.lstrip(" \t").startswith("^")
        assert len(caret) - len(caret.lstrip(" \t")) == col - 1
        assert len(caret.rstrip()) <= max(len(source_line), col)
    # The first diagnostic is also what the exception's attributes describe.
    assert (exc.file, exc.line, exc.column) == (f"{name}.opt", exc.diagnostics[0].span.line,
                                                exc.diagnostics[0].span.column)
    assert exc.source_line == (lines[exc.line - 1] if lines else "")
    assert str(exc).startswith(f"{name}.opt:{exc.line}:{exc.column}: {exc.message}")


def test_every_golden_file_has_a_case():
    stale = sorted({p.stem for p in CASES.glob("*.txt")} - set(NAMES))
    assert not stale, f"golden files without a case: {stale}"


def test_hint_is_separated_by_a_semicolon():
    exc = _error_for("unknown_name")
    assert exc.message == "unknown name 'bta1'"
    assert exc.hint == "did you mean 'b1'?"
    assert str(exc).splitlines()[0].endswith("unknown name 'bta1'; did you mean 'b1'?")


def test_errors_are_sorted_and_all_reported():
    exc = _error_for("several_errors")
    assert isinstance(exc, optdsl.CheckError)
    spans = [(d.span.line, d.span.column) for d in exc.diagnostics]
    assert spans == sorted(spans) and len(spans) == 3
    assert [d.message for d in exc.diagnostics] == [
        "cannot assign to hyper 'lr'", "unknown name 'gg'", "sqrt() takes 1 argument, got 2"]


def test_a_failed_hyper_does_not_cascade():
    """Uses of a hyper whose declaration failed are not reported again as unknown names."""
    exc = _error_for("bad_hyper_type")
    assert len(exc.diagnostics) == 1


def test_path_name_is_reported_as_given(tmp_path):
    spec = tmp_path / "rule.opt"
    spec.write_text("optimizer Rule\nupdate:\n    p = p - lr * g\n")
    with pytest.raises(optdsl.CheckError) as info:
        optdsl.compile(str(spec))
    assert info.value.file == str(spec)
    assert str(info.value).startswith(f"{spec}:3:13: unknown name 'lr'")


def test_tab_indented_caret_lines_up():
    text = "optimizer Tabs\nupdate:\n\tp = p - lr * g\n"
    with pytest.raises(optdsl.CheckError) as info:
        load_spec(text, "tabs.opt")
    assert str(info.value).splitlines()[1:] == ["    \tp = p - lr * g", "    \t        ^^"]
