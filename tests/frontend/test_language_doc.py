"""docs/language.md is the language reference, and everything it shows is true.

- Each ``opt`` block is a whole file (it starts with ``optimizer``, ``schedule`` or a
  ``#`` comment line) or an update block, compiled after the page's ``opt-prelude``. It
  compiles, and an optimizer takes three steps (a schedule, three steps of an SGD).
- A block preceded by ``<!-- error -->`` must be rejected, and the ``text`` block after it
  is the exact message, for the file ``fragment.opt`` (an update block) or
  ``example.opt`` (a whole file). Each message shown is, names and numbers aside, one of
  the golden messages of ``tests/errors/cases/``.
- The Python blocks run in order, in one namespace, and print what their comments say.
- Every other block is marked ``<!-- not run: REASON -->``.
- The examples that compile use every rule of the grammar, every operator and every
  built-in function, so a construct added to the language needs an example here.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from lark import Token

import optdsl
from optdsl.api import make_class
from optdsl.checker import SCHEDULE_FUNCTIONS
from optdsl.compiler import load_spec
from optdsl.ir import CONSTANTS, FUNCTIONS
from optdsl.parse_errors import KEYWORDS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "language.md"
GRAMMAR = ROOT / "grammars" / "optdsl.lark"
GOLDEN = ROOT / "tests" / "errors" / "cases"
sys.path.insert(0, str(ROOT / "tests"))  # doc_blocks

from doc_blocks import run_blocks  # noqa: E402

FENCE = re.compile(r"^```([\w-]*)\s*$")
ERROR_MARK = "<!-- error -->"
NOT_RUN = re.compile(r"<!-- not run: \S.* -->")
LOCATION = re.compile(r"^[\w.<>-]+:\d+:\d+: (?P<message>.*)$")


@dataclass
class Block:
    lang: str
    body: str
    line: int  # of the opening fence, 1-based
    marker: str  # the line just above the fence
    message: str | None = None  # for an error example: the text block after it

    @property
    def error(self) -> bool:
        return self.marker == ERROR_MARK

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.body.split(chr(10), 1)[0][:30]}"


def page_blocks(text: str) -> list[Block]:
    """Every fenced block of the page, in order; an error example gets the ``text`` block
    that follows it (with no other block between) as its message."""
    lines = text.split("\n")
    found: list[Block] = []
    start = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if not m:
            continue
        if start is None:
            start, lang = i, m.group(1)
        elif m.group(1) == "":
            marker = lines[start - 1].strip() if start else ""
            found.append(Block(lang, "\n".join(lines[start + 1:i]) + "\n", start + 1, marker))
            start = None
    assert start is None, f"a fence opened on line {start + 1} is never closed"
    for block, after in zip(found, found[1:], strict=False):
        if block.lang == "opt" and block.error and after.lang == "text" and not after.marker:
            block.message = after.body
    return found


BLOCKS = page_blocks(DOC.read_text())
PRELUDE = next(b.body for b in BLOCKS if b.lang == "opt-prelude")
MESSAGES = {id(b) for b in BLOCKS if b.message is not None}
MESSAGE_BLOCKS = [after for b, after in zip(BLOCKS, BLOCKS[1:], strict=False)
                  if b.message is not None]
EXAMPLES = [b for b in BLOCKS if b.lang == "opt" and not b.error]
ERRORS = [b for b in BLOCKS if b.lang == "opt" and b.error]


def is_whole_file(body: str) -> bool:
    return body.startswith(("optimizer ", "schedule ", "# "))


def spec_text(body: str) -> tuple[str, str]:
    """The text to compile for a block, and the file name it is reported under."""
    if is_whole_file(body):
        return body, "example.opt"
    return PRELUDE + "".join("    " + line + "\n" if line else "\n"
                             for line in body.splitlines()), "fragment.opt"


def error_of(body: str) -> optdsl.SpecError:
    text, name = spec_text(body)
    with pytest.raises(optdsl.SpecError) as info:
        load_spec(text, name)
    return info.value


# --- the examples compile and run, the mistakes give the messages shown ---------------------


@pytest.mark.parametrize("block", EXAMPLES, ids=[b.id for b in EXAMPLES])
def test_example_compiles_and_runs(block, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")
    text, name = spec_text(block.body)
    spec = load_spec(text, name)
    cls = make_class(spec)
    required = {n: (1.0, 2.0) if info.type == "tuple" else 1.0
                for n, info in spec.hypers.items() if info.required}
    w = optdsl.Param(np.linspace(-1, 1, 5).astype(np.float32))
    w.grad = np.linspace(1, -1, 5).astype(np.float32)
    if spec.kind == "schedule":
        from optdsl.optim import SGD

        opt = SGD([w], lr=0.1, momentum=0.9)
        sched = cls(opt, **required)
        for _ in range(3):
            sched.step(1.0) if sched.needs_metric else sched.step()
        assert np.all(np.isfinite(sched.get_last_lr()))
        return
    opt = cls([w], **required)
    for _ in range(3):
        opt.step()
    assert np.all(np.isfinite(w.data))


@pytest.mark.parametrize("block", ERRORS, ids=[b.id for b in ERRORS])
def test_mistake_gives_the_message_shown(block, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")
    exc = error_of(block.body)
    assert block.message is not None, f"line {block.line}: show the message in a text block"
    assert str(exc) + "\n" == block.message


def _first_lines(message: str) -> list[str]:
    """The message of each diagnostic, without its location, caret and source line."""
    return [m["message"] for line in message.splitlines() if (m := LOCATION.match(line))]


def _template(message: str) -> str:
    """A message with its quoted names and its numbers left out: the kind of mistake."""
    return re.sub(r"\b\d+(\.\d+)?\b", "N", re.sub(r"'[^']*'", "'_'", message))


def test_every_message_shown_is_a_golden_message():
    golden = {_template(m) for path in GOLDEN.glob("*.txt")
              for m in _first_lines(path.read_text())}
    shown = [(b.line, m) for b in ERRORS if b.message for m in _first_lines(b.message)]
    assert len(shown) >= 60
    missing = [f"line {line}: {m}" for line, m in shown if _template(m) not in golden]
    assert not missing, ("these messages have no golden file in tests/errors/cases/; add "
                         "one there:\n" + "\n".join(missing))


# --- the Python blocks ------------------------------------------------------------------


def test_python_blocks_print_what_they_say(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = [b.body for b in BLOCKS if b.lang == "python" and not NOT_RUN.fullmatch(b.marker)]
    assert len(blocks) >= 5
    run_blocks(blocks, "language.md", capsys)


# --- every block is checked ------------------------------------------------------------------


def test_every_block_is_checked_or_marked_with_a_reason():
    checked = {"opt", "opt-prelude", "python"}
    unchecked = [f"line {b.line} ({b.lang or 'no language'})" for b in BLOCKS
                 if b.lang not in checked and b not in MESSAGE_BLOCKS
                 and not NOT_RUN.fullmatch(b.marker)]
    assert not unchecked, ("blocks nothing checks; make them an example or an error message, "
                           "or mark them <!-- not run: REASON -->: " + ", ".join(unchecked))
    stray = [b.line for b in BLOCKS if b.error and b.lang != "opt"]
    assert not stray, f"<!-- error --> marks an opt block, not the block on lines {stray}"


def test_normative_examples_behave_as_written():
    """DESIGN.md's Adam on this page steps exactly like the stdlib Adam with the same
    settings (the stdlib one adds options, which default to off)."""
    adam = next(b.body for b in EXAMPLES if b.body.startswith("optimizer Adam"))
    from optdsl.optim import Adam

    DocAdam = make_class(load_spec(adam, "adam.opt"))
    results = []
    for cls in (DocAdam, Adam):
        w = optdsl.Param(np.linspace(-1, 1, 9).astype(np.float32))
        opt = cls([w], lr=0.01, weight_decay=0.1, amsgrad=True)
        for k in range(5):
            w.grad = np.cos(np.arange(9, dtype=np.float32) + k)
            opt.step()
        results.append(w.data.copy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


# --- the page covers the whole language ------------------------------------------------------


def _grammar_constructs() -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """From grammars/optdsl.lark: the rule names a parse tree can hold (rules not inlined,
    and aliases), the (terminal, text) of each terminal with fixed alternatives (the
    operators), and the terminals matched by a pattern (names, numbers, strings)."""
    rules, literals, patterns = set(), set(), set()
    for line in GRAMMAR.read_text().splitlines():
        rules.update(re.findall(r"->\s*(\w+)", line))
        if m := re.match(r"(\??)([a-z]\w*):", line):
            if not m.group(1):
                rules.add(m.group(2))
        elif m := re.match(r"([A-Z]\w*)(?:\.\d+)?:\s*(.*)$", line):
            name, rhs = m.groups()
            alternatives = [a.strip() for a in rhs.split("|")]
            if all(re.fullmatch(r'"[^"]+"', a) for a in alternatives):
                literals.update((name, a[1:-1]) for a in alternatives)
            elif not name.startswith("_") and name != "COMMENT":
                patterns.add(name)
    return rules, literals, patterns


def _parse_trees():
    from optdsl.frontend import _parser

    return [_parser().parse(spec_text(b.body)[0]) for b in EXAMPLES]


def test_the_examples_use_every_rule_and_operator_of_the_grammar():
    rules, literals, patterns = _grammar_constructs()
    assert {"hyper_decl", "ifexp", "augassign", "track_stmt", "bare_tuple"} <= rules
    assert ("COMPARE_OP", "!=") in literals and ("MUL_OP", "%") in literals
    seen_rules, seen_tokens = set(), set()
    for tree in _parse_trees():
        seen_rules.update(t.data for t in tree.iter_subtrees())
        seen_tokens.update((tok.type, str(tok)) for tok in tree.scan_values(
            lambda v: isinstance(v, Token)))
    seen_types = {kind for kind, _ in seen_tokens}
    assert not rules - seen_rules, f"no example on the page uses {sorted(rules - seen_rules)}"
    assert not literals - seen_tokens, f"no example uses {sorted(literals - seen_tokens)}"
    assert not patterns - seen_types, f"no example has a {sorted(patterns - seen_types)}"
    texts = [spec_text(b.body)[0] for b in EXAMPLES]
    assert any("\\\n" in t for t in texts), "an example continues a line with a backslash"
    assert any(re.search(r"#[^\n]*\n", t) for t in texts), "an example has a comment"


def test_the_examples_call_every_function_and_name_every_constant():
    names_used = set()
    for b in EXAMPLES:
        names_used.update(re.findall(r"\b(\w+)\s*\(", b.body))
        names_used.update(re.findall(r"\b\w+\b", b.body))
    every = set(FUNCTIONS) | set(SCHEDULE_FUNCTIONS) | set(CONSTANTS)
    assert not every - names_used, f"no example uses {sorted(every - names_used)}"
    table = DOC.read_text().split("### Functions and constants", 1)[1].split("###", 1)[0]
    for name in set(FUNCTIONS) | set(SCHEDULE_FUNCTIONS):
        assert f"`{name}(" in table, f"the functions table does not list {name}"
    for name in CONSTANTS:
        assert f"`{name}`" in table


def test_the_reserved_words_are_the_parsers():
    text = DOC.read_text()
    listed = text.split("Of these, only `", 1)[1].split("`", 1)[0].split()
    assert set(listed) == KEYWORDS
    for schedule_name in ("epoch", "base_lr", "metric", "count"):
        assert f"`{schedule_name}" in text
