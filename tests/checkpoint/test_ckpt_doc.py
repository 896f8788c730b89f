"""docs/checkpoints.md runs as written: its Python blocks, in order in one namespace (in a
temp directory), print what their ``# comments`` say, and its JSON example parses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: doc_blocks
from doc_blocks import code_blocks, run_blocks  # noqa: E402

DOC = Path(__file__).parents[2] / "docs" / "checkpoints.md"


def _blocks(language: str) -> list[str]:
    return code_blocks(DOC, language)


def test_python_blocks_print_what_they_say(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) >= 5
    run_blocks(blocks, "checkpoints.md", capsys)


def test_json_example_is_json():
    (example,) = _blocks("json")
    doc = json.loads(example)
    assert doc["format"] == "optdsl-checkpoint" and doc["format_version"] == 1
