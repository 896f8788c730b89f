"""docs/schedules.md runs as written: its Python blocks, in order in one namespace, print
what their ``# comments`` say, and its ``.opt`` blocks compile."""

from __future__ import annotations

import re
from pathlib import Path

from optdsl.compiler import load_spec

DOC = Path(__file__).parents[1] / "docs" / "schedules.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(DOC.read_text()) if lang == language]


def _expected(code: str) -> list[str]:
    """The ``# ...`` comment of each ``print(...)`` line: what that line prints."""
    out = []
    for line in code.splitlines():
        if line.startswith("print(") and "  # " in line:
            out.append(line.rsplit("  # ", 1)[1].strip())
    return out


def _squash(text: str) -> str:
    return " ".join(text.split())  # numpy pads its columns; the page need not


def test_opt_blocks_compile():
    specs = _blocks("opt")
    assert specs
    for text in specs:
        load_spec(text, "schedules.md")


def test_python_blocks_print_what_they_say(tmp_path, monkeypatch, capsys):
    for text in _blocks("opt"):  # saved under the stdlib's naming, as the page says
        name = text.split("\n", 1)[0].split()[1]
        (tmp_path / f"{name.lower()}.opt").write_text(text)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = _blocks("python")
    assert len(blocks) >= 5
    for i, code in enumerate(blocks):
        exec(compile(code, f"schedules.md block {i}", "exec"), namespace)  # noqa: S102
        printed = capsys.readouterr().out.splitlines()
        expected = _expected(code)
        assert [_squash(p) for p in printed] == [_squash(e) for e in expected], code
