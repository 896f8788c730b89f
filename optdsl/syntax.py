"""The abstract syntax tree of a ``.opt`` file.

Frozen dataclasses; every node carries a :class:`~optdsl.errors.Span` that takes no part
in equality, so two structurally equal expressions compare equal wherever they are
(the checker relies on this to match ``if amsgrad:`` against ``state ... if amsgrad``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SourceFile, Span

NOWHERE = Span(0, 0, 0, 0)


def _span() -> Span:
    return field(default=NOWHERE, compare=False, repr=False)


class Expr:
    span: Span


@dataclass(frozen=True)
class Num(Expr):
    value: float
    span: Span = _span()


@dataclass(frozen=True)
class Str(Expr):
    value: str
    span: Span = _span()


@dataclass(frozen=True)
class Bool(Expr):
    value: bool
    span: Span = _span()


@dataclass(frozen=True)
class Name(Expr):
    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Tuple(Expr):
    items: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Index(Expr):
    value: Expr
    index: int
    span: Span = _span()


@dataclass(frozen=True)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]
    span: Span = _span()
    func_span: Span = _span()


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "neg" | "not"
    operand: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # "add" "sub" "mul" "div" "pow" "and" "or"
    left: Expr
    right: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Compare(Expr):
    ops: tuple[str, ...]  # "lt" "le" "gt" "ge" "eq" "ne"
    operands: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True)
class IfExp(Expr):
    test: Expr
    body: Expr
    orelse: Expr
    span: Span = _span()


class Stmt:
    span: Span


@dataclass(frozen=True)
class Assign(Stmt):
    targets: tuple[str, ...]
    value: Expr
    span: Span = _span()
    target_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class If(Stmt):
    """``if``/``elif`` branches as (condition, body) pairs, and an optional ``else`` body."""

    branches: tuple[tuple[Expr, tuple[Stmt, ...]], ...]
    orelse: tuple[Stmt, ...] | None
    span: Span = _span()


@dataclass(frozen=True)
class Bounds:
    """``in [lo, hi)`` (numbers, inclusive flags) or ``in {"a", "b"}`` (choices)."""

    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True
    choices: tuple[str, ...] | None = None
    span: Span = _span()


@dataclass(frozen=True)
class HyperDecl:
    name: str
    type: str | None
    default: Expr | None
    bounds: Bounds | None
    span: Span = _span()
    type_span: Span = _span()


@dataclass(frozen=True)
class StateDecl:
    name: str
    init: Expr
    cond: Expr | None
    span: Span = _span()


@dataclass(frozen=True)
class RequireDecl:
    cond: Expr
    message: str
    span: Span = _span()


@dataclass(frozen=True)
class Spec:
    """A whole file: ``optimizer NAME`` or ``schedule NAME`` and what follows."""

    kind: str
    name: str
    doc: str
    hypers: tuple[HyperDecl, ...]
    states: tuple[StateDecl, ...]
    requires: tuple[RequireDecl, ...]
    body: tuple[Stmt, ...]
    source: SourceFile = field(compare=False, repr=False)
    span: Span = _span()
    name_span: Span = _span()


def walk_expr(expr: Expr):
    """Yield ``expr`` and every sub-expression, parents first."""
    yield expr
    children: tuple[Expr, ...] = ()
    if isinstance(expr, Tuple):
        children = expr.items
    elif isinstance(expr, Index):
        children = (expr.value,)
    elif isinstance(expr, Call):
        children = expr.args
    elif isinstance(expr, Unary):
        children = (expr.operand,)
    elif isinstance(expr, Binary):
        children = (expr.left, expr.right)
    elif isinstance(expr, Compare):
        children = expr.operands
    elif isinstance(expr, IfExp):
        children = (expr.test, expr.body, expr.orelse)
    for child in children:
        yield from walk_expr(child)
