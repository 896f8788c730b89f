"""Source text -> :class:`~optdsl.syntax.Spec`: the Lark parser and the tree-to-AST step.

Every failure becomes a :class:`~optdsl.errors.ParseError` with a location, a caret and a
hint; no Lark exception escapes this module.
"""

from __future__ import annotations

import ast as pyast
import inspect
import re
import warnings
from functools import cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.indenter import DedentError, Indenter

from . import syntax as S
from ._resources import data_dir
from .errors import Diagnostic, ParseError, SourceFile, Span
from .parser_cache import load_parser

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}

# How terminals are named in "expected ..." messages. Terminals that start an expression
# or continue one are summarised as "an expression" and "an operator" (see _expected_hint).
_READABLE = {
    "COLON": "':'", "COMMA": "','", "EQUAL": "'='", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "NAME": "a name",
    "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "_INDENT": "an indented block", "_DEDENT": "end of block", "$END": "end of file",
    "HYPER": "'hyper'", "STATE": "'state'", "UPDATE": "'update:'", "REQUIRE": "'require'",
    "KIND": "'optimizer NAME'", "ELSE": "'else'", "IN": "'in'", "AUGOP": "'+='",
    "INTERVAL_OPEN": "'[' or '('", "INTERVAL_CLOSE": "']' or ')'",
}
_EXPRESSION_START = {"NAME", "NUMBER", "STRING", "LPAR", "MINUS", "PLUS", "TRUE", "FALSE",
                     "NOT"}
_OPERATORS = {"ADD_OP", "MUL_OP", "COMPARE_OP", "AND", "OR"}  # and '**', anonymous
_DECLARATIONS = ("hyper", "state", "require")
_UPDATE_HEADER = re.compile(r"update\s*:\s*(#.*)?$")
# Words the grammar reserves in some places; the contextual lexer reads them as NAMEs
# elsewhere, so 'a - not b' fails at 'b' unless we look back at the 'not'.
_KEYWORDS = {"if", "elif", "else", "not", "and", "or", "in", "pass", "True", "False"}
# Python statements a user may reach for; optdsl has none of them.
_PYTHON_ONLY = {"return", "import", "from", "def", "class", "for", "while", "lambda",
                "with", "try", "del", "global", "assert", "raise", "yield", "print"}
# Deeper parse trees are refused before any recursive stage (transformer, checker, lowering)
# can hit Python's recursion limit; real specs nest a dozen levels at most.
MAX_DEPTH = 100


class _OptIndenter(Indenter):
    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR", "LSQB", "LBRACE"]
    CLOSE_PAREN_types = ["RPAR", "RSQB", "RBRACE"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8


@cache
def _parser() -> Lark:
    """The LALR parser; its tables come from the disk cache after the first build."""
    grammar = (data_dir("grammars") / "optdsl.lark").read_text()

    def build() -> Lark:
        return Lark(grammar, parser="lalr", lexer="contextual", postlex=_OptIndenter(),
                    propagate_positions=True, maybe_placeholders=True)

    return load_parser(grammar, build, postlex=_OptIndenter())


def parse(text: str, filename: str = "<string>") -> S.Spec:
    """Parse ``text`` into a Spec, or raise ParseError pointing at the mistake."""
    if not text.endswith("\n"):
        text += "\n"
    source = SourceFile(filename, text)
    if all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise _error(source, Span(1, 1, 1, 2), "the spec is empty",
                     "a spec starts with 'optimizer NAME'")
    _check_brackets(source)
    try:
        tree = _parser().parse(text)
    except DedentError:
        line, width = _bad_dedent(text)
        raise _error(source, Span(line, 1, line, width + 1),
                     "unindent does not match any outer indentation level",
                     "indent the block consistently") from None
    except UnexpectedInput as exc:
        raise _translate(source, exc) from None
    _check_depth(source, tree)
    try:
        return _ToAst(source).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, ParseError):
            raise exc.orig_exc from None
        raise


def _error(source: SourceFile, span: Span, message: str, hint: str | None = None) -> ParseError:
    return ParseError(Diagnostic(source, span, message, hint))


def _check_brackets(source: SourceFile) -> None:
    """Report an unclosed or unmatched bracket where it is, not at the end of the file."""
    stack: list[tuple[str, int, int]] = []
    text, i, line, col = source.text, 0, 1, 1
    while i < len(text):
        ch = text[i]
        if ch == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        if ch in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else ch
            end = _string_end(text, i + len(quote), quote)
            if len(quote) == 1:
                stop = text.find("\n", i + 1)
                if end == -1 or (stop != -1 and stop < end):
                    raise _error(source, Span(line, col, line, col + 1),
                                 "unterminated string", f"close it with {quote}")
            elif end == -1:
                raise _error(source, Span(line, col, line, col + 3),
                             "unterminated docstring", f"close it with {quote}")
            chunk = text[i:end + len(quote)]
            newlines = chunk.count("\n")
            if newlines:
                line += newlines
                col = len(chunk) - chunk.rfind("\n")
            else:
                col += len(chunk)
            i = end + len(quote)
            continue
        if ch in _OPENERS:
            stack.append((ch, line, col))
        elif ch in _CLOSERS:
            if not stack:
                raise _error(source, Span(line, col, line, col + 1), f"unmatched '{ch}'",
                             "remove it, or add the opening bracket")
            stack.pop()  # interval bounds like [0, 1) close with either kind
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    if stack:
        ch, l0, c0 = stack[-1]
        raise _error(source, Span(l0, c0, l0, c0 + 1), f"'{ch}' was never closed",
                     f"add the matching '{_OPENERS[ch]}'")


def _string_end(text: str, i: int, quote: str) -> int:
    """Where the string whose body starts at ``i`` is closed by ``quote``, or -1.

    A backslash escapes the next character, as in the grammar's STRING terminal.
    """
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(quote, i):
            return i
        else:
            i += 1
    return -1


def _bad_dedent(text: str) -> tuple[int, int]:
    """The line whose indentation matches no open block, and the width of that indentation."""
    indents = [0]
    for number, raw in enumerate(text.split("\n"), 1):  # lines as Lark counts them
        stripped = raw.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        width = len(raw.expandtabs(8)) - len(stripped.expandtabs(8))
        if width > indents[-1]:
            indents.append(width)
        else:
            while indents and width < indents[-1]:
                indents.pop()
            if not indents or indents[-1] != width:
                return number, max(len(raw) - len(stripped), 1)
    return 1, 1


def _check_depth(source: SourceFile, tree: Tree) -> None:
    """Refuse a tree nested deeper than MAX_DEPTH, at the first node that is too deep."""
    stack = [(tree, 1, tree.meta)]
    while stack:
        node, depth, meta = stack.pop()
        if not node.meta.empty:
            meta = node.meta
        if depth > MAX_DEPTH:
            line, col = getattr(meta, "line", 1), getattr(meta, "column", 1)
            raise _error(source, Span(line, col, line, col + 1),
                         f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                         "split it into several assignments")
        stack.extend((child, depth + 1, meta) for child in node.children
                     if isinstance(child, Tree))


def _translate(source: SourceFile, exc: UnexpectedInput) -> ParseError:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        ch = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else "?"
        return _error(source, Span(line, col, line, col + 1),
                      f"unexpected character {ch!r}", _character_hint(ch))
    if isinstance(exc, UnexpectedEOF):
        last = source.text.count("\n") or 1
        return _error(source, Span(last, 1, last, 2), "unexpected end of file",
                      "is a block or an 'update:' section unfinished?")
    assert isinstance(exc, UnexpectedToken)
    token: Token = exc.token
    # What the parser could accept here. exc.expected is what the contextual lexer was
    # ready for, which is wrong where the parser needs an _INDENT (no lexer terminal).
    parser = exc.interactive_parser
    expected = set(parser.accepts()) if parser is not None else set(exc.expected)
    if token.type == "_INDENT":
        # The token starts at the end of the line before; the indentation is on the next.
        line = token.end_line
        return _error(source, Span(line, 1, line, max(token.end_column, 2)),
                      "unexpected indent",
                      "only the body of 'update:', 'if', 'elif' and 'else' is indented")
    if "_INDENT" in expected:
        # _NL and _DEDENT tokens start on the line before the one that should be indented.
        line = token.end_line if token.type in ("_NL", "_DEDENT", "$END") else token.line
        line = min(line or 1, source.text.count("\n"))
        return _error(source, Span(line, 1, line, 2), "expected an indented block",
                      _block_hint(source, line))
    if "KIND" in expected:
        span = Span(line, col, line, col + max(len(str(token)), 1))
        return _error(source, span, "a spec starts with 'optimizer NAME'",
                      "write the header first, e.g. 'optimizer MyRule'")
    colon = "COLON" in expected and "EQUAL" not in expected  # a block header, not a hyper
    text = str(token)
    span = Span(line, col, line, col + max(len(text), 1))
    if token.type == "_NL":
        # The newline token starts at the end of the offending line.
        span = Span(token.line, token.column, token.line, token.column + 1)
    if colon and token.type not in ("$END", "_DEDENT"):
        return _error(source, span, "expected ':'" if token.type == "_NL"
                      else f"unexpected {text!r}; expected ':'",
                      "a block header (update, if, elif, else) ends with ':'")
    previous = exc.token_history[-1] if exc.token_history else None
    misplaced = _misplaced_word(source, token, previous)
    if misplaced is not None:
        return misplaced
    if previous is not None and str(previous) in _KEYWORDS:
        if token.type == "EQUAL":
            return _error(source, _tspan(previous), f"cannot assign to keyword '{previous}'",
                          "use a name that is not a keyword")
        if previous.type == "NAME":
            return _keyword_error(source, previous)
    if token.type == "_NL":
        return _error(source, span, "unexpected end of line", _expected_hint(expected))
    if token.type == "$END":
        last = source.text.count("\n") or 1
        return _error(source, Span(last, 1, last, 2), "unexpected end of file",
                      _expected_hint(expected))
    if token.type == "_DEDENT":
        return _error(source, Span(line, 1, line, 2), "unexpected end of block",
                      _expected_hint(expected))
    if token.type == "EQUAL" and source.line_text(line)[col - 2:col - 1] == "=":
        return _error(source, Span(line, col - 1, line, col + 1),
                      "a comparison is not a statement",
                      "a statement assigns: 'name = expression'")
    if token.type == "EQUAL" and "COMPARE_OP" in expected:
        return _error(source, span, "unexpected '='", "to compare, write '=='")
    if token.type == "COMMA" and "_NL" in expected:
        return _error(source, span, "unexpected ','",
                      "write a tuple in parentheses, e.g. 'a, b = (x, y)'")
    if token.type == "EQUAL" and "_NL" in expected:
        return _error(source, span, "unexpected '='",
                      "a statement assigns once: 'name = expression'; to compare, write '=='")
    if text == ":" and "_NL" in expected:
        return _error(source, span, "unexpected ':'",
                      "only 'update', 'if', 'elif' and 'else' lines end with ':'")
    if token.type in ("NAME", "NUMBER", "STRING") and expected == {"_NL"}:
        return _error(source, span, f"unexpected {text!r}; expected end of line",
                      "a block's body goes on the next lines, indented")
    return _error(source, span, f"unexpected {text!r}", _expected_hint(expected))


def _keyword_error(source: SourceFile, token: Token) -> ParseError:
    word = str(token)
    return _error(source, _tspan(token), f"'{word}' cannot be used here",
                  "after an operator, put it in parentheses: 'a == (not b)'" if word == "not"
                  else f"'{word}' is a keyword, not a name")


def _misplaced_word(source: SourceFile, token: Token, previous: Token | None
                    ) -> ParseError | None:
    """A statement that starts with a word that cannot start one: 'else' without an 'if',
    'return', a declaration after 'update:'. It is the cause only if the parser failed at
    that word or right after it."""
    for tok in (token, previous):
        if tok is None or not tok.line:
            continue
        text = source.line_text(tok.line)
        if tok.column != len(text) - len(text.lstrip()) + 1:
            continue  # not the first word of its line
        word, span = str(tok), _tspan(tok)
        if word in ("else", "elif"):
            return _error(source, span, f"'{word}' without a matching 'if'",
                          f"'{word}' follows an 'if' block at the same indentation")
        if word in _PYTHON_ONLY:
            return _error(source, span, f"'{word}' is not part of optdsl",
                          "an update block holds assignments, 'if' blocks and 'pass'")
        after_update = any(_UPDATE_HEADER.match(source.line_text(n))
                           for n in range(1, tok.line))
        if word in _DECLARATIONS and after_update:
            return _error(source, span, f"'{word}' must come before 'update:'",
                          "declarations (hyper, state, require) come first, then 'update:'")
        if word == "update" and after_update:
            return _error(source, span, "a second 'update:' block",
                          "a spec has one 'update:' block")
    return None


def _block_hint(source: SourceFile, line: int) -> str:
    """Which header the missing block belongs to: the nearest line above ending with ':'."""
    for n in range(min(line, source.text.count("\n")), 0, -1):
        text = source.line_text(n).split("#", 1)[0].rstrip()
        if text.endswith(":"):
            word = text.split()[0].rstrip(":")
            return f"indent the body of the '{word}' on line {n}"
        if text and n < line:
            break
    return "indent the body of the 'update:', 'if', 'elif' or 'else' line above"


def _character_hint(ch: str) -> str:
    if ch == ".":
        return "optdsl values have no attributes or methods"
    if not ch.isprintable():
        return "an invisible or control character; delete it"
    if not ch.isascii():
        return "names and operators are ASCII: letters, digits and '_'"
    return "the operators are + - * / ** < <= > >= == != and or not"


def _terminal_text(name: str) -> str | None:
    if name in _READABLE:
        return _READABLE[name]
    if name.startswith("__ANON"):  # an anonymous literal such as '**'
        pattern = _parser().get_terminal(name).pattern
        return repr(pattern.value) if pattern.type == "str" else None
    return None


def _expected_hint(expected: set[str]) -> str | None:
    """``expected an expression``, ``expected an operator, ',' or ')'``, and the like."""
    names = []
    if {"NAME", "NUMBER"} <= expected:
        names.append("an expression")
        expected = expected - _EXPRESSION_START
    operators = {t for t in expected if t in _OPERATORS or _terminal_text(t) == "'**'"}
    if operators:
        names.append("an operator")
        # After a complete operand, calls, indexing and 'x if c else y' are noise.
        expected = expected - operators - {"LPAR", "LSQB", "IF"}
    names += sorted({_terminal_text(t) for t in expected} - {None})
    if not names:
        return None
    if len(names) == 1:
        return "expected " + names[0]
    return "expected " + ", ".join(names[:-1]) + " or " + names[-1]


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tspan(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _decl_span(meta, *parts) -> Span:
    """A declaration's span: from its keyword to the end of its last part, so that a caret
    underlines the declaration and not the newline after it."""
    ends = [_tspan(x) if isinstance(x, Token) else x.span for x in parts if x is not None]
    last = max(ends, key=lambda sp: (sp.end_line, sp.end_column))
    return Span(meta.line, meta.column, last.end_line, last.end_column)


_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
_CMPOPS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark parse tree -> syntax nodes, with spans."""

    def __init__(self, source: SourceFile):
        super().__init__()
        self.source = source

    def _fail(self, span: Span, message: str, hint: str | None = None):
        raise _error(self.source, span, message, hint)

    def _literal(self, token: Token) -> str:
        """The value of a STRING or DOCSTRING token, escapes decoded as Python does."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unknown escape stays as is, as in Python
            try:
                return pyast.literal_eval(str(token))
            except (SyntaxError, ValueError):
                self._fail(_tspan(token), "invalid escape sequence in a string",
                           "write a backslash as \\\\")

    def _not_keyword(self, token: Token) -> None:
        """A keyword the contextual lexer read as a NAME where the grammar allows a name."""
        if str(token) in _KEYWORDS:
            raise _keyword_error(self.source, token)

    # --- file structure -------------------------------------------------------------
    def start(self, meta, children):
        kind, name, name_span = children[0]
        doc, hypers, states, requires, body = "", [], [], [], None
        for child in children[1:]:
            if isinstance(child, str):
                doc = child
            elif isinstance(child, S.HyperDecl):
                hypers.append(child)
            elif isinstance(child, S.StateDecl):
                states.append(child)
            elif isinstance(child, S.RequireDecl):
                requires.append(child)
            elif isinstance(child, tuple):
                body = child
        if body is None:
            self._fail(name_span, f"{kind} {name!r} has no 'update:' block",
                       "add 'update:' after the declarations, with the rule indented below")
        return S.Spec(kind, name, doc, tuple(hypers), tuple(states), tuple(requires), body,
                      self.source, _span(meta), name_span)

    def header(self, meta, children):
        kind, name = children
        return str(kind), str(name), _tspan(name)

    def docstring(self, meta, children):
        return inspect.cleandoc(self._literal(children[0]))

    def hyper_decl(self, meta, children):
        name, type_name, default, bounds = children
        return S.HyperDecl(str(name), str(type_name) if type_name else None, default, bounds,
                           _decl_span(meta, name, type_name, default, bounds),
                           _tspan(type_name) if type_name else _tspan(name))

    def bounds(self, meta, children):
        inner = children[0]
        if isinstance(inner, list):
            return S.Bounds(choices=tuple(inner), span=_span(meta))
        return S.Bounds(*inner, span=_span(meta))

    def interval(self, meta, children):
        open_tok, lo, hi, close_tok = children
        return lo, hi, str(open_tok) == "[", str(close_tok) == "]"

    def bound(self, meta, children):
        sign, tok = children
        if tok.type == "NAME":
            if str(tok) != "inf":
                self._fail(_tspan(tok), f"a bound must be a number or inf, not {str(tok)!r}")
            value = float("inf")
        else:
            value = float(tok)
        return -value if sign is not None else value

    def choices(self, meta, children):
        return [self._literal(c) for c in children if c is not None]

    def state_decl(self, meta, children):
        name, init, cond = children
        return S.StateDecl(str(name), init, cond, _decl_span(meta, name, init, cond))

    def require_decl(self, meta, children):
        cond, message = children
        return S.RequireDecl(cond, self._literal(message), _decl_span(meta, message))

    def update(self, meta, children):
        return tuple(c for c in children if c is not None)

    # --- statements -----------------------------------------------------------------
    def assign(self, meta, children):
        *targets, value = children
        for target in targets:
            self._not_keyword(target)
        return S.Assign(tuple(str(t) for t in targets), value, _span(meta),
                        tuple(_tspan(t) for t in targets))

    def augassign(self, meta, children):
        target, op, value = children
        span = _span(meta)
        left = S.Name(str(target), _tspan(target))
        return S.Assign((str(target),), S.Binary(_BINOPS[str(op)[0]], left, value, span), span,
                        (_tspan(target),))

    def pass_stmt(self, meta, children):
        return None

    def if_stmt(self, meta, children):
        cond, body, *rest = children
        branches = [(cond, body)]
        orelse = None
        for clause in rest:
            if clause is None:
                continue
            kind, *payload = clause
            if kind == "elif":
                branches.append(tuple(payload))
            else:
                orelse = payload[0]
        return S.If(tuple(branches), orelse, _span(meta))

    def elif_clause(self, meta, children):
        return ("elif", children[0], children[1])

    def else_clause(self, meta, children):
        return ("else", children[0])

    def suite(self, meta, children):
        return tuple(c for c in children if c is not None)

    # --- expressions ----------------------------------------------------------------
    def ifexp(self, meta, children):
        body, test, orelse = children
        return S.IfExp(test, body, orelse, _span(meta))

    def or_(self, meta, children):
        return S.Binary("or", children[0], children[1], _span(meta))

    def and_(self, meta, children):
        return S.Binary("and", children[0], children[1], _span(meta))

    def not_(self, meta, children):
        return S.Unary("not", children[0], _span(meta))

    def compare(self, meta, children):
        operands = tuple(children[0::2])
        ops = tuple(_CMPOPS[str(op)] for op in children[1::2])
        return S.Compare(ops, operands, _span(meta))

    def binop(self, meta, children):
        left, op, right = children
        return S.Binary(_BINOPS[str(op)], left, right, _span(meta))

    def neg(self, meta, children):
        return S.Unary("neg", children[0], _span(meta))

    def pos(self, meta, children):
        return children[0]

    def pow(self, meta, children):
        return S.Binary("pow", children[0], children[1], _span(meta))

    def index(self, meta, children):
        value, number = children
        text = str(number)
        if not text.isdigit():
            self._fail(_tspan(number), f"an index must be a whole number, not {text}")
        return S.Index(value, int(text), _span(meta))

    def call(self, meta, children):
        name, *args = children
        return S.Call(str(name), tuple(a for a in args if a is not None), _span(meta),
                      _tspan(name))

    def number(self, meta, children):
        return S.Num(float(str(children[0])), _span(meta))

    def string(self, meta, children):
        return S.Str(self._literal(children[0]), _span(meta))

    def true(self, meta, children):
        return S.Bool(True, _span(meta))

    def false(self, meta, children):
        return S.Bool(False, _span(meta))

    def name(self, meta, children):
        self._not_keyword(children[0])
        return S.Name(str(children[0]), _span(meta))

    def bare_tuple(self, meta, children):
        return self.tuple(meta, children)

    def tuple(self, meta, children):
        return S.Tuple(tuple(c for c in children if c is not None), _span(meta))
