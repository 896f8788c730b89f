"""docs/autotune.md runs as written: its Python blocks, in order in one namespace, print
what their ``# comments`` say."""

from __future__ import annotations

from pathlib import Path

from tests.doc_blocks import code_blocks, run_blocks

DOC = Path(__file__).parents[2] / "docs" / "autotune.md"


def test_every_block_prints_what_it_says(capsys):
    blocks = code_blocks(DOC, "python")
    assert len(blocks) >= 3
    run_blocks(blocks, "autotune.md", capsys)


def test_the_page_shows_the_plot_and_the_demo():
    text = DOC.read_text()
    assert "![" in text and "(hypergradient.png)" in text
    assert (DOC.parent / "hypergradient.png").stat().st_size > 10_000
    assert "python examples/hypergradient_demo.py --plot docs/hypergradient.png" in text
