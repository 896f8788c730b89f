"""A Pygments lexer for ``.opt`` files, so ``pygmentize -l opt``, Sphinx (``.. code-block::
opt``) and MkDocs (```` ```opt ````) highlight specs.

Pygments finds it through the ``pygments.lexers`` entry point in pyproject.toml (install
the extra: ``pip install 'optdsl[pygments]'``). Nothing else in optdsl imports this module,
so optdsl itself never needs Pygments.

The word lists come from the compiler's own tables, so the highlighter cannot drift from
the language: the reserved words from the grammar's keyword literals, the functions from
:data:`optdsl.ir.FUNCTIONS` and :data:`optdsl.checker.SCHEDULE_FUNCTIONS`, the constants
from :data:`optdsl.ir.CONSTANTS`, the built-in names from the checker's built-ins, the
hyper types from :data:`optdsl.checker.HYPER_TYPES`. ``editors/opt.tmLanguage.json`` holds
the same lists for TextMate editors; tests/test_editor_support.py keeps them equal.
"""

from __future__ import annotations

import re

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Text,
    Whitespace,
)

from ._resources import data_dir
from .checker import HYPER_TYPES, OPTIMIZER_BUILTINS, SCHEDULE_BUILTINS, SCHEDULE_FUNCTIONS
from .ir import CONSTANTS, FUNCTIONS

__all__ = ["OptLexer"]


def grammar_words() -> frozenset[str]:
    """Every word the grammar spells out as a literal (``"hyper"``, ``"if"``, ``"True"``)."""
    text = (data_dir("grammars") / "optdsl.lark").read_text()
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    return frozenset(re.findall(r'"([A-Za-z_]\w*)"', code))


# Words that open a top-level line. Only there are they reserved: the update block may
# name a local `state` or `group`, so they are highlighted at the start of a line only.
DECLARATIONS = ("optimizer", "schedule", "hyper", "state", "group", "require", "update")
# Written as operators, as Pygments' Python lexer does.
OPERATOR_WORDS = ("and", "or", "not", "in")
# True, False, pi and inf.
CONSTANTS_WORDS = tuple(sorted({"True", "False"} | set(CONSTANTS)))
# The rest of the grammar's words (if, elif, else, pass, track, and any added later).
KEYWORDS = tuple(sorted(grammar_words() - set(DECLARATIONS) - set(OPERATOR_WORDS)
                        - set(CONSTANTS_WORDS)))
BUILTIN_FUNCTIONS = tuple(sorted({*FUNCTIONS, *SCHEDULE_FUNCTIONS}))
# p, g, t in an optimizer; epoch, base_lr, metric in a schedule. A schedule's `lr` is a
# built-in too, but in an optimizer it is an ordinary hyper, so it is left a plain name.
BUILTIN_NAMES = tuple(sorted({*OPTIMIZER_BUILTINS, *SCHEDULE_BUILTINS} - {"lr"}))
TYPES = tuple(HYPER_TYPES)

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# The grammar's NUMBER: a float when it has a point or an exponent.
_FLOAT = r"(\d+\.\d*|\.\d+)([eE][+-]?\d+)?|\d+[eE][+-]?\d+"
_INT = r"\d+"


class OptLexer(RegexLexer):
    """optdsl's ``.opt`` update-rule specs (optimizers and learning-rate schedules)."""

    name = "optdsl"
    aliases = ["opt", "optdsl"]
    filenames = ["*.opt"]
    mimetypes = ["text/x-optdsl"]

    tokens = {
        "root": [
            (r"\n", Whitespace),
            (r"[ \t\f]+", Whitespace),
            (r"(\\)(\n)", bygroups(Text, Whitespace)),  # a line continuation
            (r"#.*?$", Comment.Single),
            (r'"""', String.Doc, "docstring"),
            # optimizer Adam / schedule StepLR
            (rf"^(optimizer|schedule)([ \t]+)({_NAME})",
             bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            # hyper NAME [: TYPE] / state NAME / group NAME
            (rf"^(hyper)([ \t]+)({_NAME})(?:([ \t]*)(:)([ \t]*)({'|'.join(TYPES)})\b)?",
             bygroups(Keyword.Declaration, Whitespace, Name.Variable, Whitespace, Punctuation,
                      Whitespace, Keyword.Type)),
            (rf"^(state|group)([ \t]+)({_NAME})",
             bygroups(Keyword.Declaration, Whitespace, Name.Variable)),
            (r"^(require)\b", Keyword.Declaration),
            (r"^(update)([ \t]*)(:)", bygroups(Keyword.Declaration, Whitespace, Punctuation)),
            # track NAME = ...: the name is a diagnostic's, not a variable's
            (rf"\b(track)([ \t]+)({_NAME})", bygroups(Keyword, Whitespace, Name.Label)),
            # hyper lr = 1e-3 in [0, inf): the brackets of an interval need not match
            (r"\b(in)([ \t]*)([\[(])", bygroups(Operator.Word, Whitespace, Punctuation.Marker),
             "interval"),
            include("expression"),
        ],
        "expression": [
            (words(OPERATOR_WORDS, prefix=r"\b", suffix=r"\b"), Operator.Word),
            (words(KEYWORDS, prefix=r"\b", suffix=r"\b"), Keyword),
            (words(CONSTANTS_WORDS, prefix=r"\b", suffix=r"\b"), Keyword.Constant),
            (words(BUILTIN_FUNCTIONS, prefix=r"\b", suffix=r"\b"), Name.Builtin),
            (words(BUILTIN_NAMES, prefix=r"\b", suffix=r"\b"), Name.Builtin.Pseudo),
            (_NAME, Name),
            (_FLOAT, Number.Float),
            (_INT, Number.Integer),
            (r'"(\\\\|\\[^\n]|[^"\\\n])*"', String.Double),
            (r"'(\\\\|\\[^\n]|[^'\\\n])*'", String.Single),
            (r"\*\*|[-+*/]=|[<>=!]=|[-+*/%<>=]", Operator),
            (r"[()\[\]{},:]", Punctuation),
        ],
        "docstring": [
            (r'"""', String.Doc, "#pop"),
            (r'[^"]+|"', String.Doc),
        ],
        "interval": [
            (r"[\])]", Punctuation.Marker, "#pop"),
            (r"\n", Whitespace, "#pop"),  # an unclosed interval ends with its line
            (r"[ \t\f]+", Whitespace),
            (r",", Punctuation),
            (r"-", Operator),
            (words(CONSTANTS_WORDS, prefix=r"\b", suffix=r"\b"), Keyword.Constant),
            (_NAME, Name),
            (_FLOAT, Number.Float),
            (_INT, Number.Integer),
        ],
    }
