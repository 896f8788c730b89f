"""Editor support: the Pygments lexer (optdsl.pygments_lexer), its entry point, and the
TextMate grammar in editors/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("pygments", reason="the lexer needs the extra: pip install 'optdsl[pygments]'")

from pygments.token import Error, Keyword, Name, Number, Operator, Punctuation, String  # noqa: E402

from optdsl import pygments_lexer as L  # noqa: E402
from optdsl.checker import SCHEDULE_FUNCTIONS  # noqa: E402
from optdsl.ir import CONSTANTS, FUNCTIONS  # noqa: E402
from optdsl.parse_errors import KEYWORDS as PARSER_KEYWORDS  # noqa: E402
from tests.doc_blocks import code_blocks  # noqa: E402

ROOT = Path(__file__).parents[1]
TMLANGUAGE = ROOT / "editors" / "opt.tmLanguage.json"
SPECS = [*sorted((ROOT / "stdlib").glob("*.opt")),
         *sorted((ROOT / "stdlib" / "schedules").glob("*.opt"))]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
DOC_BLOCKS = [(f"{page.name}[{i}]", code)
              for page in PAGES
              for i, code in enumerate(code_blocks(page, "opt") + code_blocks(page, "opt-prelude"))]


def tokens(text: str) -> list[tuple]:
    # No newline stripping or adding, so the tokens must give back the text exactly.
    return list(L.OptLexer(stripnl=False, ensurenl=False).get_tokens(text))


def test_there_is_something_to_lex():
    assert len(SPECS) >= 17
    assert len(DOC_BLOCKS) >= 20


@pytest.mark.parametrize("text", [p.read_text() for p in SPECS] + [c for _, c in DOC_BLOCKS],
                         ids=[p.name for p in SPECS] + [n for n, _ in DOC_BLOCKS])
def test_every_stdlib_spec_and_doc_block_lexes_without_errors_and_round_trips(text):
    toks = tokens(text)
    assert [v for t, v in toks if t in Error] == []
    assert "".join(v for _, v in toks) == text


def _kinds(text: str) -> dict[str, set]:
    """Each non-blank token text -> the token types it was given."""
    out: dict[str, set] = {}
    for tok, value in tokens(text):
        if value.strip():
            out.setdefault(value, set()).add(tok)
    return out


SAMPLE = '''optimizer Sample
"""A docstring
over two lines."""

hyper lr = 1e-3 in [0, inf)    # a comment
hyper warmup: int = 10 in (0, 100]
hyper mode = "fast" in {"fast", 'slow'}
hyper flag = True
state buf = 0 if not flag
require lr >= 0 or flag, "message"

update:
    if t == 1 and mode != "slow":
        pass
    elif t < 3:
        buf = buf
    else:
        buf += where(g > 0, sqrt(abs(g)), -g) * pi ** 2 % 3
    track step_size = lr / (1 - 0.9 ** t)
    p = p - lr * buf
'''


def test_key_tokens_are_classified():
    k = _kinds(SAMPLE)
    assert k["optimizer"] == {Keyword.Declaration} and k["Sample"] == {Name.Class}
    assert k['"""'] == {String.Doc} and k["A docstring\nover two lines."] == {String.Doc}
    for word in ("hyper", "state", "require", "update"):
        assert k[word] == {Keyword.Declaration}, word
    assert k["lr"] == {Name.Variable, Name}  # declared, then read
    assert k["warmup"] == {Name.Variable} and k["int"] == {Keyword.Type}
    for word in ("if", "elif", "else", "pass", "track"):
        assert k[word] == {Keyword}, word
    for word in ("and", "or", "not", "in"):
        assert k[word] == {Operator.Word}, word
    for word in ("True", "inf", "pi"):
        assert k[word] == {Keyword.Constant}, word
    for word in ("where", "sqrt", "abs"):
        assert k[word] == {Name.Builtin}, word
    for word in ("p", "g", "t"):
        assert k[word] == {Name.Builtin.Pseudo}, word
    assert k["step_size"] == {Name.Label}  # a track's name binds nothing
    assert k["buf"] == {Name.Variable, Name}
    assert k["1e-3"] == {Number.Float} and k["0.9"] == {Number.Float}
    assert k["10"] == {Number.Integer}
    assert k['"fast"'] == {String.Double} and k["'slow'"] == {String.Single}
    assert k["# a comment"] == {L.Comment.Single}
    for op in ("=", "==", "!=", ">=", "<", ">", "+=", "-", "*", "/", "**", "%"):
        assert k[op] <= {Operator}, op
    # The interval's brackets are a pair of markers, whichever way they face.
    assert k["["] == {Punctuation.Marker} and k[")"] >= {Punctuation.Marker}
    assert k["("] >= {Punctuation.Marker} and k["]"] == {Punctuation.Marker}
    assert k["{"] == {Punctuation} and k["}"] == {Punctuation}


def test_declaration_words_are_names_inside_the_update_block():
    # The grammar reserves 'state' and 'group' only at the top level.
    k = _kinds("optimizer X\nupdate:\n    state = g\n    p = p - state\n")
    assert k["state"] == {Name}


def test_a_schedule_highlights_its_built_ins():
    text = (ROOT / "stdlib" / "schedules" / "multisteplr.opt").read_text()
    k = _kinds(text)
    assert k["schedule"] == {Keyword.Declaration}
    assert k["count"] == {Name.Builtin} and k["epoch"] == {Name.Builtin.Pseudo}
    assert k["tuple"] == {Keyword.Type}


def test_the_word_lists_are_the_compilers():
    grammar = L.grammar_words()
    # the grammar's literals were found, and the parser's own list is among them
    assert {"optimizer", "hyper", "state", "update", "track", "in", "True"} <= grammar
    assert PARSER_KEYWORDS <= grammar
    every = set(L.DECLARATIONS) | set(L.OPERATOR_WORDS) | set(L.KEYWORDS) | set(L.CONSTANTS_WORDS)
    assert grammar <= every
    assert set(L.DECLARATIONS) <= grammar and set(L.OPERATOR_WORDS) <= grammar
    assert set(L.BUILTIN_FUNCTIONS) == {*FUNCTIONS, *SCHEDULE_FUNCTIONS}
    assert set(CONSTANTS) <= set(L.CONSTANTS_WORDS)
    # every word really comes out as what its list says
    for word in grammar - set(L.DECLARATIONS):
        (tok, _), *_ = tokens(f"{word} ")
        assert tok in Keyword or tok is Operator.Word, word
    for word in L.BUILTIN_FUNCTIONS:
        assert tokens(f"{word}(x)")[0][0] is Name.Builtin, word


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_lexer_is_registered_in_pyproject():
    project = _project()
    entry = project["entry-points"]["pygments.lexers"]["opt"]
    module, _, attr = entry.partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is L.OptLexer
    assert "opt" in L.OptLexer.aliases and L.OptLexer.filenames == ["*.opt"]
    extras = project["optional-dependencies"]
    assert any(r.startswith("pygments") for r in extras["pygments"])
    assert any(r.startswith("pygments") for r in extras["dev"])


def test_optdsl_does_not_import_pygments():
    code = "import sys, optdsl, optdsl.cli; assert 'pygments' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def _pygments(args: list[str], env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "pygments", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pygmentize_finds_the_lexer_through_the_declared_entry_point(tmp_path):
    """Pygments, in a fresh process, finds the lexer by alias and by file name through the
    entry point that pyproject.toml declares, without the package being installed: a
    minimal dist-info directory carries pyproject's entry points, as `pip install` would
    write them."""
    project = _project()
    dist = tmp_path / "optdsl_entry_points_only-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: optdsl-entry-points-only\nVersion: 0.0\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
             for group, eps in project["entry-points"].items()]
    (dist / "entry_points.txt").write_text("\n".join(lines))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}

    raw = _pygments(["-l", "opt", "-f", "raw", "stdlib/adam.opt"], env)
    assert "Token.Keyword.Declaration\t'optimizer'" in raw
    assert "Token.Name.Builtin\t'sqrt'" in raw
    assert "Token.Error" not in raw
    assert _pygments(["-N", "stdlib/sgd.opt"], env).strip() == "opt"  # by *.opt


def _entry_point_installed() -> bool:
    return any(ep.name == "opt" and ep.value == "optdsl.pygments_lexer:OptLexer"
               for ep in metadata.entry_points(group="pygments.lexers"))


@pytest.mark.skipif(not _entry_point_installed(),
                    reason="optdsl is not installed here (pip install -e '.[pygments]'), so "
                    "the installed entry point cannot be tried; the test above checks the "
                    "declared one")
def test_installed_pygmentize_highlights_opt_files():
    # this interpreter's pygmentize, where its environment has one
    exe = Path(sys.executable).with_name("pygmentize")
    args = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pygments"]
    done = subprocess.run([*args, "-l", "opt", "-f", "terminal", "stdlib/adam.opt"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" in done.stdout and "exp_avg" in done.stdout


# --- the TextMate grammar --------------------------------------------------------------

def _tm() -> dict:
    return json.loads(TMLANGUAGE.read_text())


def _words(pattern: str) -> set[str]:
    match = re.fullmatch(r"\\b\(([\w|]+)\)\\b", pattern)
    assert match, pattern
    return set(match.group(1).split("|"))


def test_textmate_grammar_parses_and_its_regexes_compile():
    grammar = _tm()
    assert grammar["scopeName"] == "source.opt" and grammar["fileTypes"] == ["opt"]

    def walk(node):
        if isinstance(node, dict):
            for key in ("match", "begin", "end"):
                if key in node:
                    re.compile(node[key])  # Oniguruma accepts these Python-compatible ones
            if "include" in node:
                assert node["include"].lstrip("#") in grammar["repository"], node["include"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(grammar)


def test_textmate_word_lists_match_the_lexers():
    repo = _tm()["repository"]
    assert _words(repo["keyword"]["match"]) == set(L.KEYWORDS)
    assert _words(repo["operator-word"]["match"]) == set(L.OPERATOR_WORDS)
    assert _words(repo["constant"]["match"]) == set(L.CONSTANTS_WORDS)
    assert _words(repo["function"]["match"]) == set(L.BUILTIN_FUNCTIONS)
    assert _words(repo["builtin"]["match"]) == set(L.BUILTIN_NAMES)
    hyper = re.search(r"\(([\w|]+)\)\\b\)\?$", repo["hyper"]["match"])
    assert hyper and set(hyper.group(1).split("|")) == set(L.TYPES)
    declared = {"optimizer", "schedule", "hyper", "state", "group", "require", "update"}
    patterns = " ".join(repo[k]["match"] for k in ("header", "hyper", "declaration", "require",
                                                   "update"))
    assert {w for w in declared if re.search(rf"\b{w}\b", patterns)} == set(L.DECLARATIONS)
