"""docs/diagnostics.md runs as written: its Python blocks, in order in one namespace (in a
scratch directory: they write runs/*.jsonl), print what their ``# comments`` say; its
table is what ``d.table()`` prints; and its figure is the CLI's drawing of such a log."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: doc_blocks

from doc_blocks import code_blocks, run_blocks  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC = DOCS / "diagnostics.md"


def test_blocks_print_what_they_say(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks(DOC, "python")
    assert len(blocks) >= 5
    namespace = run_blocks(blocks, "diagnostics.md", capsys)
    table = code_blocks(DOC, "text")[0]
    assert namespace["d"].table() == table.rstrip("\n")
    assert (tmp_path / "runs" / "diag.jsonl").stat().st_size > 0
    # The page's plot command draws that log.
    pytest.importorskip("matplotlib")
    from optdsl.cli import main

    assert "optdsl plot-diagnostics runs/diag.jsonl -o diag.png" in DOC.read_text()
    assert main(["plot-diagnostics", "runs/diag.jsonl", "-o", "diag.png"]) == 0
    assert (tmp_path / "diag.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figure_is_a_small_png():
    data = (DOCS / "diagnostics.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert height > width > 400 and len(data) < 150_000
    assert "![diagnostics of Adam" in DOC.read_text() and "(diagnostics.png)" in DOC.read_text()
