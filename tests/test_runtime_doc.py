"""docs/runtime.md runs as written: its Python blocks, in order in one namespace, print
what their ``# comments`` say. The blocks that use torch run only where it is installed;
the others run everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from doc_blocks import code_blocks, run_blocks

DOC = Path(__file__).parents[1] / "docs" / "runtime.md"


def test_blocks_without_torch_print_what_they_say(capsys):
    blocks = [b for b in code_blocks(DOC, "python") if "import torch" not in b]
    assert len(blocks) >= 3
    run_blocks(blocks, "runtime.md", capsys)


def test_every_block_prints_what_it_says(capsys):
    pytest.importorskip("torch", reason="the page's torch.optim examples")
    blocks = code_blocks(DOC, "python")
    assert any("import torch" in b for b in blocks)
    run_blocks(blocks, "runtime.md", capsys)
