"""The fuzzer's input generators, shared by ``tests/fuzz`` and ``scripts/fuzz.py``.

Four generators, from least to most structured:

- ``text``: random text, printable or any code point, or one long line;
- ``tokens``: sequences of the language's tokens, taken from the grammar's own terminals
  (literal ones as they are, regular ones drawn from their pattern) and the names the
  checker knows (built-ins, functions, hyper types), laid out in indented lines;
- ``mutants``: every stdlib ``.opt`` file with tokens and lines deleted, duplicated and
  swapped, tokens replaced by others of their kind (a name by a name, a number by an
  extreme one, an operator by another), characters inserted, deleted and replaced, and
  fragments inserted;
- ``programs``: optimizers and schedules with well-formed update blocks from a small
  grammar, some with a declaration renamed to a name the runtime uses itself; they get
  past the parser and so exercise the checker, lowering, every pass, rendering and the
  runtime.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from hypothesis import strategies as st
from lark.lexer import PatternStr

from optdsl._resources import data_dir
from optdsl.checker import (
    HYPER_TYPES,
    OPTIMIZER_BUILTINS,
    RUNTIME_NAMES,
    SCHEDULE_BUILTINS,
    SCHEDULE_FUNCTIONS,
)
from optdsl.frontend import _parser
from optdsl.ir import CONSTANTS, FUNCTIONS

STDLIB_DIR = data_dir("stdlib")
STDLIB: dict[str, str] = {str(p.relative_to(STDLIB_DIR)): p.read_text()
                          for p in sorted(STDLIB_DIR.rglob("*.opt"))}

# Fragments a mutation may insert: the language's own tokens, Python's, and characters a
# lexer or an indentation tracker could trip on.
FRAGMENTS = [
    "(", ")", "[", "]", "{", "}", ":", ",", "=", "==", "+=", "**", "-", "*", "/", ".", "#",
    '"', "'", '"""', "\\", "\\\n", "if", "if ", "elif x:", "else:", "where(", "sqrt(", "max(",
    "clip(g, ", "not ", " and ", " or ", "pass", "t", "p", "g", "inf", "pi", "1e999", "0",
    "1.5", ".5", "2e-3", "True", "False", "hyper ", "state ", "require ", "group ", "update:",
    "optimizer ", "schedule ", "in [0, 1)", ' in {"a"}', "betas[1]", "b1, b2 = ", "count(",
    "epoch", "metric", "base_lr", "\t", "    ", "\n", "\n    ", "\n        ", "\r\n", "\r",
    "\x0c", "\x00", "\u00a0", "λ", "é", "𝔭", "\u2028", "__import__", "exec", "lambda",
    "return",
]


# --- text ------------------------------------------------------------------------------

def random_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet=string.printable, max_size=300),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
        # one long line: compile() asks the file system whether a one-line text is a path
        st.text(alphabet=string.printable.replace("\n", ""), min_size=250, max_size=400),
        # printable text after a header, so that some of it gets past the first line
        st.tuples(st.sampled_from(["optimizer A\n", "schedule S\n", "optimizer A\nupdate:\n"]),
                  st.text(alphabet=string.printable, max_size=200)).map("".join),
    )


# --- tokens ----------------------------------------------------------------------------

def _terminals() -> list[st.SearchStrategy[str]]:
    """One strategy per terminal of the grammar: literal text, or a match of its regex."""
    out = []
    for terminal in _parser().terminals:
        pattern = terminal.pattern
        if isinstance(pattern, PatternStr):
            out.append(st.just(pattern.value))
        else:
            out.append(st.from_regex(pattern.to_regexp(), fullmatch=True).filter(
                lambda s: len(s) <= 40))
    return out


# The names the compiler and the runtime give a meaning to: these reach the checker's
# interesting cases (and the runtime's own keys: 'params', 'step', 'initial_lr', ...).
NAMES = sorted({*OPTIMIZER_BUILTINS, *SCHEDULE_BUILTINS, *FUNCTIONS, *CONSTANTS,
                *SCHEDULE_FUNCTIONS, *HYPER_TYPES, *(n for names in RUNTIME_NAMES.values()
                                                    for n in names),
                "lr", "betas", "b1", "b2", "exp_avg", "momentum", "initial_lr", "state",
                "x", "y", "flag", "mode"})
OPERATORS = ["+", "-", "*", "/", "%", "**", "<", "<=", "==", "!=", ">", "and", "or", "not",
             "if", "else", ",", "=", "in"]
DECLARATIONS = ["hyper", "hyper", "state", "require", "group"]
STATEMENTS = ["p =", "x =", "exp_avg =", "lr =", "x, y =", "p -=", "if", "elif", "else:",
              "pass"]


def token_sequences() -> st.SearchStrategy[str]:
    """The grammar's tokens laid out as a spec is: an optional header, declaration lines,
    usually an ``update:`` line, then indented statement lines. Each line starts with a
    keyword or target of its section and goes on with random tokens, most of them names,
    numbers and operators, some any terminal of the grammar or a stray fragment."""
    plain = st.one_of(st.sampled_from(NAMES), st.sampled_from(OPERATORS),
                      st.from_regex(r"[0-9]{1,3}(\.[0-9]{0,3})?(e-?[0-9])?", fullmatch=True))
    token = st.one_of(plain, plain, st.one_of(*_terminals()), st.sampled_from(FRAGMENTS))
    separator = st.sampled_from([" ", " ", " ", ""])
    # Short lines of plain tokens are often well-formed; long ones of any token hardly ever.
    rest = st.one_of(
        st.lists(plain, min_size=1, max_size=3).map(" ".join),
        st.lists(st.tuples(separator, token).map("".join), max_size=6).map("".join))

    def lines(starts, indents):
        line = st.tuples(st.sampled_from(indents), st.sampled_from(starts), rest)
        return st.lists(line.map(lambda x: f"{x[0]}{x[1]} {x[2].lstrip()}"), max_size=5)

    return st.tuples(
        st.sampled_from(["optimizer Fuzz", "optimizer Fuzz", "schedule Fuzz", ""]),
        lines(DECLARATIONS, ["", "", "", "    "]),
        st.sampled_from(["update:", "update:", "update:", ""]),
        lines(STATEMENTS, ["    ", "    ", "        ", "", "\t", "  "]),
    ).map(lambda x: "\n".join([x[0], *x[1], x[2], *x[3]]))


# --- mutants of the stdlib -------------------------------------------------------------

def tokens_of(text: str) -> list[tuple[int, int, str]]:
    """(start, end, type) of every token the parser's lexer finds in ``text``; none if it
    cannot lex the text (a mutant with a character no token takes)."""
    try:
        return [(tok.start_pos, tok.end_pos, tok.type) for tok in _parser().lex(text)
                if tok.start_pos is not None and tok.end_pos > tok.start_pos]
    except Exception:  # lark's UnexpectedCharacters, or whatever a broken text makes it do
        return []


# What a token may be replaced with: one of its own kind, so that the mutant often still
# parses and checks, and runs a different program.
NUMBERS = ("0", "1", "2", "0.5", "3", "1e-8", "10", "1e308", "1e-320", "0.999", "1e999")
REPLACEMENTS = {
    "NUMBER": NUMBERS, "ADD_OP": ("+", "-"), "MUL_OP": ("*", "/", "%"),
    "COMPARE_OP": ("<", "<=", ">", ">=", "==", "!="), "AUGOP": ("+=", "-=", "*=", "/="),
    "AND": ("and", "or"), "OR": ("or", "and"), "TRUE": ("True", "False"),
    "FALSE": ("False", "True"), "STRING": ('"a"', '"min"', '"cos"', '""', "'rel'"),
}
TOKEN_OPS = ("delete token", "duplicate token", "swap tokens", "replace token",
             "replace token")
LINE_OPS = ("delete line", "duplicate line", "swap lines")
CHAR_OPS = ("insert character", "delete characters", "replace character", "insert fragment",
            "truncate")


def _replacement(draw, text: str, tokens, kind: str) -> str:
    if kind == "NAME":  # a name of this file or one the compiler knows
        names = sorted({text[a:b] for a, b, k in tokens if k == "NAME"} | set(NAMES))
        return draw(st.sampled_from(names))
    return draw(st.sampled_from(REPLACEMENTS.get(kind, ()) or FRAGMENTS))


@st.composite
def mutants(draw) -> str:
    """A stdlib spec with one to four mutations: token-, line- or character-level."""
    name = draw(st.sampled_from(sorted(STDLIB)), label="stdlib file")
    text = STDLIB[name]
    for _ in range(draw(st.integers(1, 4))):
        # Mostly edit the declarations and the update block: hypothesis favours small
        # positions, and a broken header or docstring hides everything after it.
        lo = 0
        if draw(st.sampled_from(["body", "body", "body", "anywhere"])) == "body":
            found = re.search(r"^(hyper|state|require|group|update)\b", text, re.M)
            lo = found.start() if found else 0
        tokens = [tok for tok in tokens_of(text) if tok[0] >= lo]
        op = draw(st.sampled_from((TOKEN_OPS if tokens else ()) + LINE_OPS + CHAR_OPS))
        if op in TOKEN_OPS:
            a0, a1, kind = tokens[draw(st.integers(0, len(tokens) - 1))]
            if op == "delete token":
                text = text[:a0] + text[a1:]
            elif op == "replace token":
                text = text[:a0] + _replacement(draw, text, tokens, kind) + text[a1:]
            elif op == "duplicate token":
                b0, _, _ = tokens[draw(st.integers(0, len(tokens) - 1))]
                text = text[:b0] + text[a0:a1] + " " + text[b0:]
            else:
                b0, b1, _ = tokens[draw(st.integers(0, len(tokens) - 1))]
                (a0, a1), (b0, b1) = sorted([(a0, a1), (b0, b1)])
                if a1 <= b0:
                    text = text[:a0] + text[b0:b1] + text[a1:b0] + text[a0:a1] + text[b1:]
        elif op in LINE_OPS:
            lines = text.split("\n")
            first = text[:lo].count("\n")
            a = draw(st.integers(first, len(lines) - 1))
            b = draw(st.integers(first, len(lines) - 1))
            if op == "delete line":
                del lines[a]
            elif op == "duplicate line":
                lines.insert(b, lines[a])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        else:
            i = draw(st.integers(lo, len(text)))
            if op == "insert character":
                ch = draw(st.characters(codec="utf-8") | st.sampled_from(string.printable))
                text = text[:i] + ch + text[i:]
            elif op == "delete characters":
                text = text[:i] + text[i + draw(st.integers(1, 8)):]
            elif op == "replace character":
                ch = draw(st.characters(codec="utf-8") | st.sampled_from(string.printable))
                text = text[:i] + ch + text[i + 1:]
            elif op == "insert fragment":
                text = text[:i] + draw(st.sampled_from(FRAGMENTS)) + text[i:]
            else:
                text = text[:i]
    return text


# --- well-formed programs --------------------------------------------------------------

@dataclass(frozen=True)
class Vocabulary:
    """What a generated program is made of: a header, then expressions over ``numbers``
    (mostly well-typed) and ``others`` (tuples, strings, booleans, unknown names),
    assigned to ``targets`` and tested in ``conditions``."""

    header: str
    footer: str
    numbers: tuple[str, ...]
    others: tuple[str, ...]
    targets: tuple[str, ...]
    conditions: tuple[str, ...]


# An optimizer with every kind of hyper and a conditional state.
OPTIMIZER = Vocabulary(
    header=('optimizer Generated\nhyper lr = 0.1 in [0, inf)\nhyper betas = (0.9, 0.99)\n'
            'hyper mode = "a" in {"a", "b"}\nhyper flag = False\nstate exp_avg = 0\n'
            'state v = 0 if flag\n\nupdate:\n    x = 2 * lr\n'),
    footer="",
    numbers=("p", "g", "t", "lr", "exp_avg", "x", "pi", "0", "1", "0.5", "1e-8", "2"),
    others=("betas", "mode", "flag", "v", "y", "inf", "True", "False", '"a"', "b1", "sqrtt",
            "betas[0]", "betas[1]", "betas[2]", "lr[0]", "(1, 2)[0]"),
    targets=("p", "p", "g", "exp_avg", "exp_avg", "v", "x", "x", "y", "x, y", "b1, b2", "lr",
             "t"),
    conditions=("flag", "not flag", 'mode == "b"', "t > 1", "lr"),
)
# A schedule with scalar state, a tuple hyper and a group value it reads and sets (the
# fuzzer steps schedules on SGD with momentum).
SCHEDULE = Vocabulary(
    header=('schedule Generated\nhyper gamma = 0.5 in [0, 1]\nhyper step_size: int = 3 in '
            '[1, inf)\nhyper milestones = (2, 4)\nhyper mode = "min" in {"min", "max"}\n'
            'hyper flag = False\nstate best = inf\ngroup momentum\n\nupdate:\n'
            '    x = base_lr * gamma\n'),
    footer="    lr = lr + 0 * x\n",  # a schedule's unused local is an error
    numbers=("epoch", "base_lr", "lr", "metric", "gamma", "step_size", "x", "best", "0", "1",
             "0.5", "2", "count(milestones, epoch)"),
    others=("milestones", "mode", "flag", "momentum", "y", "inf", "True", '"min"', "p",
            "milestones[1]", "milestones[2]", "count(epoch, milestones)"),
    targets=("lr", "lr", "lr", "base_lr", "x", "y", "best", "best", "momentum", "epoch",
             "gamma", "x, y"),
    conditions=("flag", 'mode == "min"', "epoch > 2", "epoch % step_size == 0",
                "metric < best"),
)
ARITY = {"sqrt": 1, "rsqrt": 1, "exp": 1, "log": 1, "abs": 1, "sign": 1, "floor": 1,
         "cos": 1, "sin": 1, "tanh": 1, "min": 2, "max": 3, "clip": 3, "len": 1, "where": 3}


@st.composite
def _calls(draw, inner) -> str:
    """A call of a function, usually with the right number of arguments."""
    func = draw(st.sampled_from(sorted(ARITY)))
    n = max(ARITY[func] + draw(st.sampled_from([0] * 8 + [-1, 1])), 0)
    return f"{func}({', '.join(draw(st.lists(inner, min_size=n, max_size=n)))})"


def expressions(vocab: Vocabulary) -> st.SearchStrategy[str]:
    """Mostly well-typed number expressions, with some of every other kind mixed in."""
    numbers, others = st.sampled_from(vocab.numbers), st.sampled_from(vocab.others)
    leaves = numbers | numbers | others

    def extend(inner):
        binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**", "%"]), inner)
        compare = st.tuples(inner, st.sampled_from(["<", "<=", ">", "==", "!="]), inner)
        return st.one_of(
            binary.map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
            binary.map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
            _calls(inner),
            st.tuples(compare, inner, inner).map(
                lambda x: f"where({x[0][0]} {x[0][1]} {x[0][2]}, {x[1]}, {x[2]})"),
            st.tuples(inner, compare, inner).map(
                lambda x: f"({x[0]} if {x[1][0]} {x[1][1]} {x[1][2]} else {x[2]})"),
            inner.map(lambda x: f"(-{x})"),
            st.tuples(st.sampled_from(["", "not "]), compare, st.sampled_from(["and", "or"])).map(
                lambda x: f"where({x[0]}{x[1][0]} {x[1][1]} {x[1][2]} {x[2]} flag, 1, 0)"),
        )

    return st.recursive(leaves, extend, max_leaves=8)


@st.composite
def blocks(draw, vocab: Vocabulary, exprs, indent: str = "    ", depth: int = 0) -> str:
    """One to three statements at ``indent``: assignments, ifs (nested twice at most)."""
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["assign", "assign", "augassign", "if", "pass"]))
        if kind == "if" and depth < 2:
            cond = draw(st.sampled_from(vocab.conditions) | exprs)
            lines.append(f"{indent}if {cond}:\n")
            lines.append(draw(blocks(vocab, exprs, indent + "    ", depth + 1)))
            if draw(st.booleans()):
                lines.append(f"{indent}elif {draw(exprs)}:\n")
                lines.append(draw(blocks(vocab, exprs, indent + "    ", depth + 1)))
            if draw(st.booleans()):
                lines.append(f"{indent}else:\n")
                lines.append(draw(blocks(vocab, exprs, indent + "    ", depth + 1)))
        elif kind == "augassign":
            op = draw(st.sampled_from(["+=", "-=", "*=", "/="]))
            lines.append(f"{indent}{draw(st.sampled_from(vocab.targets[:6]))} {op} "
                         f"{draw(exprs)}\n")
        elif kind == "pass":
            lines.append(f"{indent}pass\n")
        else:
            target = draw(st.sampled_from(vocab.targets))
            value = draw(exprs)
            if "," in target and draw(st.booleans()):
                value = draw(st.sampled_from([vocab.others[0], f"({value}, {draw(exprs)})"]))
            lines.append(f"{indent}{target} = {value}\n")
    return "".join(lines)


# Sometimes a declared name is renamed to one the runtime uses for itself (a state
# 'step', a hyper 'params' or 'backend', a group value 'params', ...).
RENAMES = {OPTIMIZER: [("exp_avg", "step"), ("lr", "params"), ("lr", "backend"),
                       ("flag", "skip_nonfinite"), ("mode", "initial_lr")],
           SCHEDULE: [("gamma", "last_epoch"), ("gamma", "optimizer"),
                      ("momentum", "params"), ("best", "step")]}


def _renamed(text_and_rename: tuple[str, tuple[str, str] | None]) -> str:
    text, rename = text_and_rename
    return text if rename is None else re.sub(rf"\b{rename[0]}\b", rename[1], text)


def programs() -> st.SearchStrategy[str]:
    """Generated optimizers (three in four) and schedules."""
    def of(vocab):
        program = blocks(vocab, expressions(vocab)).map(
            lambda body: vocab.header + body + vocab.footer)
        rename = st.sampled_from([None] * len(RENAMES[vocab]) + RENAMES[vocab])
        return st.tuples(program, rename).map(_renamed)

    optimizers = of(OPTIMIZER)
    return st.one_of(optimizers, optimizers, optimizers, of(SCHEDULE))


GENERATORS: dict[str, st.SearchStrategy[str]] = {
    "text": random_text(),
    "tokens": token_sequences(),
    "mutants": mutants(),
    "programs": programs(),
}
