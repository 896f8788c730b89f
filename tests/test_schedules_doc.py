"""docs/schedules.md runs as written: its Python blocks, in order in one namespace, print
what their ``# comments`` say, and its ``.opt`` blocks compile."""

from __future__ import annotations

from pathlib import Path

from doc_blocks import code_blocks, run_blocks

from optdsl.compiler import load_spec

DOC = Path(__file__).parents[1] / "docs" / "schedules.md"


def _blocks(language: str) -> list[str]:
    return code_blocks(DOC, language)


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
    blocks = _blocks("python")
    assert len(blocks) >= 5
    run_blocks(blocks, "schedules.md", capsys)
