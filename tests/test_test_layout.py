"""The test suite's own layout: every test file is where pytest looks."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pytest's default norecursedirs: it never enters directories so named (or dotted ones)
NORECURSE = {"build", "dist", "CVS", "_darcs", "node_modules", "venv", "{arch}"}


def test_no_test_directory_is_one_pytest_skips():
    """tests/dist once held the MPI tests, and the whole-suite run never collected them."""
    hidden = sorted({p.parent.relative_to(ROOT).as_posix()
                     for p in (ROOT / "tests").rglob("test_*.py")
                     if set(p.relative_to(ROOT).parts[:-1]) & NORECURSE
                     or any(part.startswith(".") for part in p.relative_to(ROOT).parts)})
    assert not hidden, f"pytest never collects these: {hidden}"
