"""Source text -> :class:`~optdsl.syntax.Spec`: the Lark parser and the tree-to-AST step.

Every failure becomes a :class:`~optdsl.errors.ParseError` with a location, a caret and a
hint (see :mod:`optdsl.parse_errors`); no Lark exception escapes this module.
"""

from __future__ import annotations

import ast as pyast
import inspect
import warnings
from functools import cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedInput,
    VisitError,
)
from lark.indenter import DedentError, Indenter

from . import syntax as S
from ._resources import data_dir
from .errors import ParseError, SourceFile, Span
from .parse_errors import (
    KEYWORDS,
    bad_dedent,
    check_brackets,
    error,
    keyword_error,
    token_span,
    translate,
)
from .parser_cache import load_parser

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
        raise error(source, Span(1, 1, 1, 2), "the spec is empty",
                     "a spec starts with 'optimizer NAME'")
    check_brackets(source)
    try:
        tree = _parser().parse(text)
    except DedentError:
        line, width = bad_dedent(text)
        raise error(source, Span(line, 1, line, width + 1),
                     "unindent does not match any outer indentation level",
                     "indent the block consistently") from None
    except UnexpectedInput as exc:
        raise translate(source, exc) from None
    _check_depth(source, tree)
    try:
        return _ToAst(source).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, ParseError):
            raise exc.orig_exc from None
        raise


def _check_depth(source: SourceFile, tree: Tree) -> None:
    """Refuse a tree nested deeper than MAX_DEPTH, at the first node that is too deep."""
    stack = [(tree, 1, tree.meta)]
    while stack:
        node, depth, meta = stack.pop()
        if not node.meta.empty:
            meta = node.meta
        if depth > MAX_DEPTH:
            line, col = getattr(meta, "line", 1), getattr(meta, "column", 1)
            raise error(source, Span(line, col, line, col + 1),
                         f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                         "split it into several assignments")
        stack.extend((child, depth + 1, meta) for child in node.children
                     if isinstance(child, Tree))


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _decl_span(meta, *parts) -> Span:
    """A declaration's span: from its keyword to the end of its last part, so that a caret
    underlines the declaration and not the newline after it."""
    ends = [token_span(x) if isinstance(x, Token) else x.span for x in parts if x is not None]
    last = max(ends, key=lambda sp: (sp.end_line, sp.end_column))
    return Span(meta.line, meta.column, last.end_line, last.end_column)


_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "%": "mod"}
_CMPOPS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark parse tree -> syntax nodes, with spans."""

    def __init__(self, source: SourceFile):
        super().__init__()
        self.source = source

    def _fail(self, span: Span, message: str, hint: str | None = None):
        raise error(self.source, span, message, hint)

    def _literal(self, token: Token) -> str:
        """The value of a STRING or DOCSTRING token, escapes decoded as Python does."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unknown escape stays as is, as in Python
            try:
                return pyast.literal_eval(str(token))
            except (SyntaxError, ValueError):
                self._fail(token_span(token), "invalid escape sequence in a string",
                           "write a backslash as \\\\")

    def _not_keyword(self, token: Token) -> None:
        """A keyword the contextual lexer read as a NAME where the grammar allows a name."""
        if str(token) in KEYWORDS:
            raise keyword_error(self.source, token)

    # --- file structure -------------------------------------------------------------
    def start(self, meta, children):
        kind, name, name_span = children[0]
        doc, hypers, states, requires, groups, body = "", [], [], [], [], None
        scalars, factored = [], []
        for child in children[1:]:
            if isinstance(child, str):
                doc = child
            elif isinstance(child, S.HyperDecl):
                hypers.append(child)
            elif isinstance(child, S.StateDecl):
                states.append(child)
            elif isinstance(child, S.ScalarStateDecl):
                scalars.append(child)
            elif isinstance(child, S.FactoredStateDecl):
                factored.append(child)
            elif isinstance(child, S.RequireDecl):
                requires.append(child)
            elif isinstance(child, S.GroupDecl):
                groups.append(child)
            elif isinstance(child, tuple):
                body = child
        if body is None:
            self._fail(name_span, f"{kind} {name!r} has no 'update:' block",
                       "add 'update:' after the declarations, with the rule indented below")
        return S.Spec(kind, name, doc, tuple(hypers), tuple(states), tuple(requires), body,
                      self.source, _span(meta), name_span, tuple(groups), tuple(scalars),
                      tuple(factored))

    def header(self, meta, children):
        kind, name = children
        return str(kind), str(name), token_span(name)

    def docstring(self, meta, children):
        return inspect.cleandoc(self._literal(children[0]))

    def hyper_decl(self, meta, children):
        name, type_name, default, bounds = children
        return S.HyperDecl(str(name), str(type_name) if type_name else None, default, bounds,
                           _decl_span(meta, name, type_name, default, bounds),
                           token_span(type_name) if type_name else token_span(name))

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
                self._fail(token_span(tok), f"a bound must be a number or inf, not {str(tok)!r}")
            value = float("inf")
        else:
            value = float(tok)
        return -value if sign is not None else value

    def choices(self, meta, children):
        return [self._literal(c) for c in children if c is not None]

    def state_decl(self, meta, children):
        name, kind, init, cond = children
        if kind is None:
            return S.StateDecl(str(name), init, cond, _decl_span(meta, name, init, cond))
        if str(kind) not in ("scalar", "row", "col"):
            self._fail(token_span(kind), f"unknown kind of state {str(kind)!r}",
                       "the kinds are 'scalar' (one number per parameter), and 'row' and "
                       "'col' (factored); an elementwise state has no kind")
        if cond is not None:
            what = "scalar state" if str(kind) == "scalar" else f"{kind} state"
            self._fail(cond.span, f"{what} {str(name)!r} cannot be conditional",
                       "give it a value in every case instead" if str(kind) == "scalar"
                       else "it exists exactly for parameters with 2 or more dimensions")
        span = _decl_span(meta, name, kind, init)
        if str(kind) == "scalar":
            return S.ScalarStateDecl(str(name), init, span)
        return S.FactoredStateDecl(str(name), str(kind), init, span)

    def group_decl(self, meta, children):
        name, alt, index, cond = children
        if (alt is None) != (index is None):  # pragma: no cover - the grammar pairs them
            self._fail(_span(meta), "malformed group declaration")
        position = None
        if index is not None:
            position = float(index)
            if not position.is_integer():
                self._fail(token_span(index), "a tuple index must be a whole number")
            position = int(position)
        return S.GroupDecl(str(name), str(alt) if alt is not None else None, position, cond,
                           _decl_span(meta, name, alt, index, cond))

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
                        tuple(token_span(t) for t in targets))

    def augassign(self, meta, children):
        target, op, value = children
        span = _span(meta)
        left = S.Name(str(target), token_span(target))
        return S.Assign((str(target),), S.Binary(_BINOPS[str(op)[0]], left, value, span), span,
                        (token_span(target),))

    def pass_stmt(self, meta, children):
        return None

    def track_stmt(self, meta, children):
        name, value = children
        self._not_keyword(name)
        return S.Track(str(name), value, _span(meta), token_span(name))

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
            self._fail(token_span(number), f"an index must be a whole number, not {text}")
        return S.Index(value, int(text), _span(meta))

    def call(self, meta, children):
        name, *args = children
        return S.Call(str(name), tuple(a for a in args if a is not None), _span(meta),
                      token_span(name))

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
