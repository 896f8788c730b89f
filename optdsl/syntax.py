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
    op: str  # "add" "sub" "mul" "div" "mod" "pow" "and" "or"
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
class Track(Stmt):
    """``track NAME = EXPR``: the value of EXPR here is the diagnostic NAME, an extra
    kernel output (``track:NAME``) when a step asks for tracks; it binds no name."""

    name: str
    value: Expr
    span: Span = _span()
    name_span: Span = _span()


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
class ScalarStateDecl:
    """``state NAME: scalar = init``: one float64 per parameter, kept on the host (NAdam's
    ``mu_product``), read and assigned in the update block as a per-parameter scalar."""

    name: str
    init: Expr
    span: Span = _span()


@dataclass(frozen=True)
class FactoredStateDecl:
    """``state NAME: row = init`` / ``state NAME: col = init``: a factored state of a
    parameter with 2 or more dimensions (..., R, C), shaped (..., R, 1) or (..., 1, C) as
    Adafactor's (and torch's) row_var and col_var. It exists only where ``factored``."""

    name: str
    kind: str  # "row" | "col"
    init: Expr
    span: Span = _span()


@dataclass(frozen=True)
class GroupDecl:
    """``group momentum [or betas[0]] [if cycle_momentum]`` (schedules only): a param-group
    value the schedule reads and may assign, with an optional fallback to one element of
    another group value that is a tuple, and an optional condition on the hypers."""

    name: str
    alt: str | None
    alt_index: int | None
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
    groups: tuple[GroupDecl, ...] = ()
    scalars: tuple[ScalarStateDecl, ...] = ()
    factored: tuple[FactoredStateDecl, ...] = ()


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


# --- re-rendering, for comments in generated code ------------------------------------------
# Generated code may hold only validated identifiers and re-rendered numbers, so these
# functions rebuild source-like text from the tree (never copying the user's text): names
# come from the grammar's NAME terminal, numbers from floats, operators from fixed tables,
# and a string literal is shown as <string>.

_PRECEDENCE = {"ifexp": 0, "or": 1, "and": 2, "not": 3, "compare": 4, "add": 5, "sub": 5,
               "mul": 6, "div": 6, "mod": 6, "neg": 7, "pow": 8}
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "pow": "**", "and": "and",
            "or": "or", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _number_text(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "nan"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(float(value))


def _precedence(e: Expr) -> int:
    if isinstance(e, IfExp):
        return 0
    if isinstance(e, Compare):
        return 4
    if isinstance(e, (Binary, Unary)):
        return _PRECEDENCE[e.op]
    return 9


def unparse(e: Expr) -> str:
    """Source-like text of an expression, rebuilt from the tree."""
    def wrap(child: Expr, minimum: int) -> str:
        text = unparse(child)
        return f"({text})" if _precedence(child) < minimum else text

    if isinstance(e, Num):
        return _number_text(e.value)
    if isinstance(e, Bool):
        return "True" if e.value else "False"
    if isinstance(e, Str):
        return "<string>"
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Tuple):
        return "(" + ", ".join(unparse(i) for i in e.items) + ("," if len(e.items) == 1
                                                               else "") + ")"
    if isinstance(e, Index):
        return f"{wrap(e.value, 9)}[{int(e.index)}]"
    if isinstance(e, Call):
        return f"{e.func}(" + ", ".join(unparse(a) for a in e.args) + ")"
    if isinstance(e, Unary):
        if e.op == "not":
            return f"not {wrap(e.operand, 3)}"
        return f"-{wrap(e.operand, 7)}"
    if isinstance(e, Binary):
        p = _PRECEDENCE[e.op]
        if e.op == "pow":  # right-associative
            return f"{wrap(e.left, p + 1)} ** {wrap(e.right, p)}"
        return f"{wrap(e.left, p)} {_SYMBOLS[e.op]} {wrap(e.right, p + 1)}"
    if isinstance(e, Compare):
        parts = [wrap(e.operands[0], 5)]
        for op, operand in zip(e.ops, e.operands[1:], strict=False):
            parts += [_SYMBOLS[op], wrap(operand, 5)]
        return " ".join(parts)
    if isinstance(e, IfExp):
        return f"{wrap(e.body, 1)} if {wrap(e.test, 1)} else {unparse(e.orelse)}"
    return "?"


def line_comment(line: int, notes: dict[int, str]) -> str:
    """``# line 12: exp_avg = b1 * exp_avg + ...`` (the text re-rendered, never copied)."""
    text = notes.get(line)
    return f"# line {line}: {text}" if text else f"# line {line}"


def statement_lines(spec: Spec) -> dict[int, str]:
    """Line number -> re-rendered statement, for every statement of the update block."""
    lines: dict[int, str] = {}

    def visit(stmts) -> None:
        for stmt in stmts:
            if isinstance(stmt, Assign):
                lines[stmt.span.line] = f"{', '.join(stmt.targets)} = {unparse(stmt.value)}"
                continue
            if isinstance(stmt, Track):
                lines[stmt.span.line] = f"track {stmt.name} = {unparse(stmt.value)}"
                continue
            for i, (cond, body) in enumerate(stmt.branches):
                lines[cond.span.line] = f"{'if' if i == 0 else 'elif'} {unparse(cond)}:"
                visit(body)
            visit(stmt.orelse or ())

    visit(spec.body)
    return lines
