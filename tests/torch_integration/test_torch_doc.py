"""docs/torch.md runs as written: its Python blocks, in order in one namespace, print what
their ``# comments`` say."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the page trains torch models")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: doc_blocks

from doc_blocks import code_blocks, run_blocks  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "torch.md"


def test_every_block_prints_what_it_says(capsys):
    blocks = code_blocks(DOC, "python")
    assert len(blocks) >= 5
    run_blocks(blocks, "torch.md", capsys)
