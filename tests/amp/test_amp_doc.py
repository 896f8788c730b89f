"""docs/amp.md runs as written: its Python blocks, in order in one namespace, print what
their ``# comments`` say (a comment on the line after a print holds a long output)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: doc_blocks

from doc_blocks import code_blocks, run_blocks  # noqa: E402

DOC = Path(__file__).parents[2] / "docs" / "amp.md"


def test_every_block_prints_what_it_says(capsys):
    blocks = code_blocks(DOC, "python")
    assert len(blocks) >= 5
    namespace = run_blocks(blocks, "amp.md", capsys)
    assert namespace["scaler"].get_scale() == 32768.0
