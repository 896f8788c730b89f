"""Source text -> :class:`~optdsl.syntax.Spec`: the Lark parser and the tree-to-AST step.

Every failure becomes a :class:`~optdsl.errors.ParseError` with a location, a caret and a
hint; no Lark exception escapes this module.
"""

from __future__ import annotations

import ast as pyast
import inspect
from functools import cache

from lark import Lark, Token, Transformer, v_args
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

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}

# How terminals are named in "expected ..." messages.
_READABLE = {
    "COLON": "':'", "COMMA": "','", "EQUAL": "'='", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "NAME": "a name", "NUMBER": "a number",
    "STRING": "a string", "_NL": "end of line", "_INDENT": "an indented block",
    "_DEDENT": "end of block", "$END": "end of file", "HYPER": "'hyper'",
    "STATE": "'state'", "UPDATE": "'update:'", "REQUIRE": "'require'",
}


class _OptIndenter(Indenter):
    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR", "LSQB", "LBRACE"]
    CLOSE_PAREN_types = ["RPAR", "RSQB", "RBRACE"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8


@cache
def _parser() -> Lark:
    grammar = (data_dir("grammars") / "optdsl.lark").read_text()
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        postlex=_OptIndenter(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse(text: str, filename: str = "<string>") -> S.Spec:
    """Parse ``text`` into a Spec, or raise ParseError pointing at the mistake."""
    if not text.endswith("\n"):
        text += "\n"
    source = SourceFile(filename, text)
    _check_brackets(source)
    try:
        tree = _parser().parse(text)
    except DedentError:
        line = _bad_dedent_line(text)
        raise _error(source, Span(line, 1, line, 2),
                     "unindent does not match any outer indentation level",
                     "indent the block consistently") from None
    except UnexpectedInput as exc:
        raise _translate(source, exc) from None
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
            end = text.find(quote, i + len(quote))
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


def _bad_dedent_line(text: str) -> int:
    indents = [0]
    for number, raw in enumerate(text.splitlines(), 1):
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
                return number
    return 1


def _translate(source: SourceFile, exc: UnexpectedInput) -> ParseError:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        ch = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else "?"
        return _error(source, Span(line, col, line, col + 1),
                      f"unexpected character {ch!r}", "optdsl accepts Python-like expressions")
    if isinstance(exc, UnexpectedEOF):
        last = len(source.text.splitlines()) or 1
        return _error(source, Span(last, 1, last, 2), "unexpected end of file",
                      "is a block or an 'update:' section unfinished?")
    assert isinstance(exc, UnexpectedToken)
    token: Token = exc.token
    expected = set(exc.expected)
    if token.type == "_NL":
        # The newline token starts at the end of the offending line.
        span = Span(token.line, token.column, token.line, token.column + 1)
        if "COLON" in expected:
            return _error(source, span, "expected ':'",
                          "a block header (update, if, elif, else) ends with ':'")
        return _error(source, span, "unexpected end of line", _expected_hint(expected))
    if token.type == "$END":
        last = len(source.text.splitlines()) or 1
        return _error(source, Span(last, 1, last, 2), "unexpected end of file",
                      _expected_hint(expected))
    if token.type == "_INDENT":
        return _error(source, Span(line, 1, line, col), "unexpected indent",
                      "only the body of 'update:', 'if', 'elif' and 'else' is indented")
    if token.type == "_DEDENT":
        return _error(source, Span(line, 1, line, 2), "expected an indented block",
                      _expected_hint(expected))
    text = str(token)
    span = Span(line, col, line, col + max(len(text), 1))
    if "COLON" in expected and token.type not in ("NAME", "NUMBER"):
        return _error(source, span, f"unexpected {text!r}; expected ':'")
    if token.type == "EQUAL" and "COMPARE_OP" in expected:
        return _error(source, span, "unexpected '='", "to compare, write '=='")
    return _error(source, span, f"unexpected {text!r}", _expected_hint(expected))


def _expected_hint(expected: set[str]) -> str | None:
    names = sorted({_READABLE[t] for t in expected if t in _READABLE})
    if not names:
        return None
    if len(names) > 6:
        names = names[:6] + ["..."]
    return "expected " + ", ".join(names)


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _tspan(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


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

    # --- file structure -------------------------------------------------------------
    def start(self, meta, children):
        kind, name, name_span = children[0]
        doc, hypers, states, requires, body = "", [], [], [], ()
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
        return S.Spec(kind, name, doc, tuple(hypers), tuple(states), tuple(requires), body,
                      self.source, _span(meta), name_span)

    def header(self, meta, children):
        kind, name = children
        return str(kind), str(name), _tspan(name)

    def docstring(self, meta, children):
        return inspect.cleandoc(pyast.literal_eval(str(children[0])))

    def hyper_decl(self, meta, children):
        name, type_name, default, bounds = children
        return S.HyperDecl(str(name), str(type_name) if type_name else None, default, bounds,
                           _span(meta), _tspan(type_name) if type_name else _tspan(name))

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
        return [pyast.literal_eval(str(c)) for c in children if c is not None]

    def state_decl(self, meta, children):
        name, init, cond = children
        return S.StateDecl(str(name), init, cond, _span(meta))

    def require_decl(self, meta, children):
        cond, message = children
        return S.RequireDecl(cond, pyast.literal_eval(str(message)), _span(meta))

    def update(self, meta, children):
        return tuple(c for c in children if c is not None)

    # --- statements -----------------------------------------------------------------
    def assign(self, meta, children):
        *targets, value = children
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
        return S.Str(pyast.literal_eval(str(children[0])), _span(meta))

    def true(self, meta, children):
        return S.Bool(True, _span(meta))

    def false(self, meta, children):
        return S.Bool(False, _span(meta))

    def name(self, meta, children):
        return S.Name(str(children[0]), _span(meta))

    def tuple(self, meta, children):
        return S.Tuple(tuple(c for c in children if c is not None), _span(meta))
