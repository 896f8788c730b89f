"""Every fenced code block in README.md and docs/*.md is run or checked by a test.

A block is covered in one of these ways, and :func:`test_every_block_is_covered` fails,
listing them, for any block that is not:

1. **Marked on the page.** ``<!-- not run: REASON -->`` on the line just above the fence
   says why the block cannot run (it needs a GPU, it installs packages, it runs for
   minutes). ``<!-- error -->`` above an ``opt`` block says the spec must be rejected.
2. **Generated.** docs/api.md and the output regions of docs/pipeline.md are written by
   ``scripts/gen_docs.py``, which also runs that page's Python blocks;
   ``tests/test_gen_docs.py`` checks they are up to date.
3. **Delegated** to a page's own test by :data:`DELEGATED` (a page and a language: that
   test runs every such block of the page), or, for README.md, whose blocks the README's
   tests pick one by one, by :data:`README_BLOCKS`.
4. **Run here**, for every other page (a new page included): its ``python``, ``opt`` and
   ``console`` blocks, in page order, in one folder and one namespace
   (:func:`test_page_runs_as_written`):

   - ``python``: run, with the folder on ``sys.path`` as in a Python started there; each
     ``print(...)`` prints what the ``# comment`` after it says.
     A block that names torch (``torch.optim``, ``optdsl.torch``) is skipped, with the
     reason, where torch is not installed.
   - ``opt``: compiled; with ``<!-- error -->`` it must be rejected, and a ``text`` block
     right after it is the exact message. A first line ``# NAME.opt`` saves it under that
     name, for the commands after it.
   - ``console``: each ``$ optdsl ...`` line runs (in this process); ``# exits N`` gives
     its exit status, and the lines under it are its output, where a line ``...`` stands
     for any lines and a line ending in ``...`` for any line that starts so.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shlex
import sys
import tokenize
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

import optdsl
from optdsl.compiler import load_spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # doc_blocks

from doc_blocks import expected_prints, output_pattern, squash  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>\S.*?) -->")
ERROR = "<!-- error -->"


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _gen_docs()

# (page, language) -> the test that runs every such block of the page, in order; "*" for
# every language.
DELEGATED = {
    ("amp.md", "python"): "tests/amp/test_amp_doc.py",
    ("autotune.md", "python"): "tests/autotune/test_autotune_doc.py",
    ("checkpoints.md", "python"): "tests/checkpoint/test_ckpt_doc.py",
    ("checkpoints.md", "json"): "tests/checkpoint/test_ckpt_doc.py",
    ("cli.md", "opt"): "tests/test_cli_polish.py",
    ("cli.md", "console"): "tests/test_cli_polish.py",
    ("diagnostics.md", "python"): "tests/diagnostics/test_diagnostics_doc.py",
    ("distributed.md", "python"): "tests/distributed/test_mpi.py",
    ("distributed.md", ""): "tests/distributed/test_mpi.py",  # the install line
    ("diagnostics.md", "text"): "tests/diagnostics/test_diagnostics_doc.py",  # d.table()
    ("language.md", "*"): "tests/frontend/test_language_doc.py",
    ("runtime.md", "python"): "tests/test_runtime_doc.py",
    ("schedules.md", "python"): "tests/test_schedules_doc.py",
    ("schedules.md", "opt"): "tests/test_schedules_doc.py",
    ("sparse.md", "python"): "tests/sparse/test_sparse_doc.py",
    ("torch.md", "python"): "tests/torch_integration/test_torch_doc.py",
}

# README.md's blocks, one by one: (language, a line the block holds, what covers it). Its
# tests pick blocks by content, and README.md carries no markers, so a new block there
# must be listed here.
README_BLOCKS = [
    ("", "optimizer Lion", "tests/test_readme.py"),
    ("bash", "pip install '.[demo]' && optdsl demo",
     "not run: installs packages; tests/test_demo.py runs optdsl demo"),
    ("text", "$ optdsl demo --compare adam,sgd,lion", "tests/test_demo.py"),
    ("bash", "pip install -e '.[dev]' && python -m pytest",
     "not run: installs packages and runs the whole test suite"),
    ("python", "opt = Adam([w], lr=1e-3, betas=(0.9, 0.999))", "tests/test_readme.py"),
    ("python", 'Lion = optdsl.compile("lion.opt")', "tests/test_readme.py"),
    ("python", "def kernel(n, b_p, b_g, b_exp_avg, args, scratch, chunk",
     "tests/test_all_docs.py"),  # an excerpt of the kernel: see the test below
    ("", "did you mean 'b1'?", "tests/test_readme.py"),
    ("python", "SequentialLR", "tests/test_readme.py"),
    ("bash", "optdsl plot-schedule --all -o docs/schedules.png",
     "not run: installs matplotlib and redraws the README's figure"),
    ("python", "optdsl.flatten(layers)", "tests/test_readme.py"),
    ("python", "cupy.zeros", "tests/test_readme.py"),
]


@dataclass
class Block:
    page: Path
    lang: str
    body: str
    line: int  # of the opening fence, 1-based
    marker: str  # the line just above the fence
    generated: bool  # inside an output region of scripts/gen_docs.py

    def __str__(self) -> str:
        return f"{self.page.name}:{self.line} ({self.lang or 'no language'})"


def page_blocks(page: Path) -> list[Block]:
    """The page's fenced blocks (found by scripts/gen_docs.py's own parser), each knowing
    whether it lies inside a generated output region."""
    lines = page.read_text().split("\n")
    found = []
    for start, end, lang in gen_docs.fenced_blocks(lines):
        opened = [i for i, line in enumerate(lines[:start])
                  if gen_docs.OUTPUT_START.fullmatch(line)]
        closed = [i for i, line in enumerate(lines[:start]) if line == gen_docs.OUTPUT_END]
        region = bool(opened) and (not closed or opened[-1] > closed[-1])
        marker = lines[start - 1].strip() if start else ""
        found.append(Block(page, lang, "\n".join(lines[start + 1:end]) + "\n", start + 1,
                           marker, region))
    return found


BLOCKS = {page: page_blocks(page) for page in PAGES}


def _delegate(block: Block) -> str | None:
    name = block.page.name
    return DELEGATED.get((name, block.lang)) or DELEGATED.get((name, "*"))


def _readme_entry(block: Block):
    matches = [e for e in README_BLOCKS if e[0] == block.lang and e[1] in block.body]
    return matches[0] if len(matches) == 1 else None


def _follows_error(block: Block, blocks: list[Block]) -> bool:
    """A text block right after an error example: the message it must give."""
    i = blocks.index(block)
    return (block.lang == "text" and i > 0 and blocks[i - 1].lang == "opt"
            and blocks[i - 1].marker == ERROR and not block.marker)


def run_here(block: Block) -> bool:
    """Whether this test runs the block (see the module docstring, 4)."""
    if block.page.name == "README.md" or NOT_RUN.fullmatch(block.marker) or block.generated:
        return False
    if block.page.name == gen_docs.API_PAGE or _delegate(block):
        return False
    if block.page.name in gen_docs.OUTPUT_PAGES and block.lang == "python":
        return False  # scripts/gen_docs.py runs them
    return block.lang in ("python", "opt", "console") or _follows_error(
        block, BLOCKS[block.page])


def coverage(block: Block) -> str | None:
    """What runs or checks the block, or None."""
    if m := NOT_RUN.fullmatch(block.marker):
        return f"not run: {m['reason']}"
    if block.page.name == "README.md":
        entry = _readme_entry(block)
        return entry[2] if entry else None
    if block.generated or block.page.name == gen_docs.API_PAGE or (
            block.page.name in gen_docs.OUTPUT_PAGES and block.lang == "python"):
        return "tests/test_gen_docs.py"
    if delegate := _delegate(block):
        return delegate
    if run_here(block):
        return "tests/test_all_docs.py"
    return None


# --- coverage ------------------------------------------------------------------------------


def test_every_block_is_covered():
    assert len(PAGES) >= 18
    uncovered = [str(b) for blocks in BLOCKS.values() for b in blocks if coverage(b) is None]
    assert not uncovered, (
        "no test runs or checks these blocks; run them in a test (see DELEGATED and "
        "README_BLOCKS in tests/test_all_docs.py) or mark them <!-- not run: REASON -->:\n"
        + "\n".join(uncovered))


def test_the_readme_links_every_page():
    listed = (ROOT / "README.md").read_text().split("\n## Documentation\n", 1)[1]
    unlisted = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in listed]
    assert not unlisted, f"README.md's Documentation list does not link {unlisted}"


def test_markers_are_spelled_as_the_tests_read_them():
    bad = [f"{b}: {b.marker}" for blocks in BLOCKS.values() for b in blocks
           if b.marker.startswith("<!--") and not NOT_RUN.fullmatch(b.marker)
           and b.marker != ERROR and not gen_docs.OUTPUT_START.fullmatch(b.marker)]
    assert not bad, "unknown markers (use <!-- not run: REASON --> or <!-- error -->):\n" \
        + "\n".join(bad)
    stray = [str(b) for blocks in BLOCKS.values() for b in blocks
             if b.marker == ERROR and b.lang != "opt"]
    assert not stray, f"<!-- error --> is for opt blocks: {stray}"


def test_each_readme_block_has_one_entry_and_each_entry_one_block():
    readme = BLOCKS[ROOT / "README.md"]
    for lang, line, _ in README_BLOCKS:
        hits = [b for b in readme if b.lang == lang and line in b.body]
        assert len(hits) == 1, f"README_BLOCKS entry {line!r} matches {len(hits)} blocks"


def test_the_delegates_exist_and_read_their_page():
    delegates = {(page, test) for (page, _), test in DELEGATED.items()}
    delegates |= {("README.md", e[2]) for e in README_BLOCKS if e[2].startswith("tests/")}
    for page, test in delegates:
        path = ROOT / test
        assert path.is_file(), test
        stem = page.removesuffix(".md")
        assert stem in path.read_text(), f"{test} does not read {page}"
    for (page, lang) in DELEGATED:
        assert (ROOT / "docs" / page).is_file(), page
        if lang != "*":
            assert any(b.lang == lang for b in BLOCKS[ROOT / "docs" / page]), (page, lang)


def _logical_lines(source: str) -> list[str]:
    """The lines of Python source, a statement continued inside brackets joined into one
    line with its whitespace squashed (an excerpt may show a long signature on one line)."""
    out, pending = [], ""
    for line in source.splitlines():
        pending = f"{pending} {line.strip()}" if pending else line
        if pending.count("(") + pending.count("[") <= pending.count(")") + pending.count("]"):
            out.append(pending)
            pending = ""
    return out + ([pending] if pending else [])


def test_the_readme_kernel_is_an_excerpt_of_the_real_one():
    """README.md shows Lion's kernel with its middle left out (``...``): every line it
    shows is a line of the kernel, in the same order."""
    readme = BLOCKS[ROOT / "README.md"]
    lion = next(b.body for b in readme if b.lang == "" and b.body.startswith("optimizer Lion"))
    excerpt = next(b.body for b in readme if b.lang == "python" and "def kernel(" in b.body)
    source = _logical_lines(optdsl.compile(lion).source("numpy"))
    at = 0
    for line in _logical_lines(excerpt):
        if line.strip() == "...":
            continue
        assert line in source[at:], f"README's kernel excerpt: {line!r} is not in the kernel"
        at = source.index(line, at) + 1


# --- the pages this test runs ----------------------------------------------------------------

RUN_PAGES = [page for page, blocks in BLOCKS.items() if any(run_here(b) for b in blocks)]


def test_new_pages_are_run_here():
    names = {p.name for p in RUN_PAGES}
    assert {"five-minutes.md", "port-from-torch.md"} <= names


def needs_torch(code: str) -> bool:
    """Whether the code names torch (``torch.optim``, ``optdsl.torch``), comments aside."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return any(t.type == tokenize.NAME and t.string == "torch" for t in tokens)


def _torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _run_command(command: str) -> tuple[int, str]:
    """``$ optdsl ...`` in this process: its exit status, and its output (stdout and
    stderr in the order written)."""
    from optdsl.cli import EXIT_FAILURE, main

    words = shlex.split(command, comments=True)
    assert words[:2] == ["$", "optdsl"], f"only optdsl commands run here: {command}"
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        try:
            status = main(words[2:])
        except SystemExit as exc:  # argparse's --help and usage errors
            status = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    return status, out.getvalue()


def _run_console(block: Block) -> None:
    for chunk in re.split(r"^(?=\$ )", block.body, flags=re.M):
        if not chunk.strip():
            continue
        command, *shown = chunk.rstrip("\n").split("\n")
        note = re.search(r"# exits (\d+)", command)
        status, output = _run_command(command)
        assert status == (int(note.group(1)) if note else 0), f"{block}: {command}\n{output}"
        if shown:
            assert output_pattern(shown).fullmatch(output.rstrip("\n") + "\n"), \
                f"{block}: {command} printed\n{output}"


def _run_opt(block: Block, blocks: list[Block]) -> None:
    first = block.body.split("\n", 1)[0]
    name = "example.opt"
    if m := re.fullmatch(r"# ([\w.-]+\.opt)", first):
        name = m.group(1)
        Path(name).write_text(block.body)
    if block.marker != ERROR:
        load_spec(block.body, name)
        return
    with pytest.raises(optdsl.SpecError) as info:
        load_spec(block.body, name)
    after = blocks[blocks.index(block) + 1:][:1]
    if after and _follows_error(after[0], blocks):
        assert str(info.value) + "\n" == after[0].body, str(block)


def _run_python(block: Block, namespace: dict, capsys) -> None:
    exec(compile(block.body, str(block), "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert [squash(p) for p in printed] == [squash(e) for e in expected_prints(block.body)], \
        f"{block} printed\n" + "\n".join(printed)


@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_page_runs_as_written(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as a Python started in that folder
    before = set(sys.modules)
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    blocks = BLOCKS[page]
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    skipped = []
    for block in blocks:
        if not run_here(block):
            continue
        if block.lang == "python":
            if needs_torch(block.body) and not _torch():
                skipped.append(block)
                continue
            _run_python(block, namespace, capsys)
        elif block.lang == "opt":
            _run_opt(block, blocks)
        elif block.lang == "console":
            _run_console(block)
    for name in set(sys.modules) - before:  # modules the page wrote and imported
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]
    if skipped:
        pytest.skip(f"torch is not installed; not run: {', '.join(map(str, skipped))}")
