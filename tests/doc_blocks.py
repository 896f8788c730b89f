"""Fenced code blocks of a Markdown page, for tests that run a page's examples as written.

    for code in code_blocks(DOC, "python"):
        exec(compile(code, "page.md", "exec"), namespace)

A ``print(...)`` line documents what it prints in a ``  # comment`` after it;
:func:`expected_prints` reads those comments back.
"""

from __future__ import annotations

import re
from pathlib import Path

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.S | re.M)


def code_blocks(page: Path, language: str) -> list[str]:
    """The bodies of the page's blocks fenced as ``language``, in order."""
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def runnable_blocks(page: Path, language: str) -> list[str]:
    """As :func:`code_blocks`, without the blocks marked ``<!-- not run: REASON -->`` on
    the line above their fence (tests/test_all_docs.py's marker)."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != language:
            continue
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        if not before.startswith("<!-- not run:"):
            out.append(m.group(2))
    return out


def expected_prints(code: str) -> list[str]:
    """The ``# ...`` comment of each ``print(...)`` line (at any indentation): what that
    line prints."""
    out = []
    for line in code.splitlines():
        if line.lstrip().startswith("print(") and "  # " in line:
            out.append(line.rsplit("  # ", 1)[1].strip())
    return out


def squash(text: str) -> str:
    """Whitespace runs as one space (NumPy pads its columns; a page need not)."""
    return " ".join(text.split())


def run_blocks(blocks: list[str], page: str, capsys, namespace: dict | None = None) -> dict:
    """Run ``blocks`` in order in one namespace; each must print what its ``print(...)``
    lines' comments say (whitespace squashed). Returns the namespace."""
    namespace = {} if namespace is None else namespace
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page} block {i}", "exec"), namespace)  # noqa: S102
        printed = capsys.readouterr().out.splitlines()
        assert [squash(p) for p in printed] == [squash(e) for e in expected_prints(code)], code
    return namespace


def output_pattern(shown: list[str]) -> re.Pattern:
    """The output lines shown, as a pattern for the whole output: a line ``...`` stands for
    any number of lines, and a line ending in ``...`` for any line that starts so."""
    parts = []
    for line in shown:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        elif line.endswith("..."):
            parts.append(re.escape(line[:-3]) + r"[^\n]*\n")
        else:
            parts.append(re.escape(line) + r"\n")
    return re.compile("".join(parts))
