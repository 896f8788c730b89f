"""The typed SSA intermediate representation.

A :class:`Program` is one specialisation of one spec: the host ``if`` decisions are
already taken, so it is straight-line code. Every :class:`Var` is assigned exactly once.
Each value is either a *host* scalar (computed once per step, in float64, on the host) or
an elementwise *tensor* (computed per element of the parameter). Booleans, strings and
tuples exist only as the types the checker needs; tuples and strings never leave the host.

Passes (``optdsl.passes``) are pure functions ``Program -> Program``; nothing here mutates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .errors import Span

HOST, TENSOR = "host", "tensor"
# Factored values of a parameter with 2 or more dimensions (..., R, C), kept as small arrays
# and computed on the host's array module (optdsl.stages): ROW shaped (..., R, 1), COL
# (..., 1, C). A row value meeting a column value, or an elementwise one, is elementwise.
ROW, COL = "row", "col"


@dataclass(frozen=True)
class Type:
    kind: str  # HOST | TENSOR
    elem: str  # "float" | "bool" | "str" | "tuple"
    n: int = 0  # tuple length

    def __str__(self) -> str:
        if self.elem == "tuple":
            return f"tuple[{self.n}]"
        return f"{self.kind} {self.elem}"

    @property
    def is_tensor(self) -> bool:
        return self.kind == TENSOR

    @property
    def is_factored(self) -> bool:
        return self.kind in (ROW, COL)


HOST_FLOAT = Type(HOST, "float")
HOST_BOOL = Type(HOST, "bool")
HOST_STR = Type(HOST, "str")
TENSOR_FLOAT = Type(TENSOR, "float")
TENSOR_BOOL = Type(TENSOR, "bool")


def tuple_type(n: int) -> Type:
    return Type(HOST, "tuple", n)


def join_kind(*types: Type) -> str:
    kinds = {t.kind for t in types} - {HOST}
    if not kinds:
        return HOST
    if len(kinds) == 1:
        return kinds.pop()
    return TENSOR  # row with col, or either with an elementwise value: broadcast


# op -> number of operands, for the elementwise operators and built-in functions.
ARITH_OPS = {"add": 2, "sub": 2, "mul": 2, "div": 2, "mod": 2, "pow": 2, "min": 2, "max": 2,
             "neg": 1,
             "sqrt": 1, "rsqrt": 1, "exp": 1, "log": 1, "abs": 1, "sign": 1, "floor": 1,
             "cos": 1, "sin": 1, "tanh": 1}
COMPARE_OPS = ("lt", "le", "gt", "ge", "eq", "ne")
LOGIC_OPS = {"and": 2, "or": 2, "not": 1}
# Leaves: "const" (attr: value), "hyper" (attr: name), "step" (t), "load" (attr: buffer name),
# "scalar" (attr: key, a per-parameter host value: "state:NAME" a scalar state, "numel" the
# parameter's size, "reduce:K" the result of reduction K, see optdsl.stages),
# "index" (args: tuple value, attr: position). "where": (cond, if_true, if_false).
LEAF_OPS = ("const", "hyper", "step", "load", "scalar")

# Per-tensor reductions: an elementwise value -> one host scalar per parameter. Each lowers
# to a primitive "reduce" op (attr: REDUCE_KINDS) and host arithmetic: norm(x) is
# sqrt(reduce[sumsq](x)), mean(x) reduce[sum](x) / numel, rms(x) sqrt(reduce[sumsq](x) /
# numel). ("sum" itself is not a function: it is the name of torch's Adagrad state.)
REDUCTIONS = ("norm", "total", "mean", "maxabs", "rms")
REDUCE_KINDS = ("sum", "sumsq", "maxabs")
# Row and column means of an elementwise value, for factored second moments (Adafactor):
# row_mean(x) is x's mean over the last dimension, col_mean(x) over the one before.
FACTORED = {"row_mean": ROW, "col_mean": COL}

# Functions callable from a spec: name -> (min arity, max arity). ``clip`` and variadic
# min/max lower to nested min/max; ``where`` is the elementwise select.
FUNCTIONS = {
    "sqrt": (1, 1), "rsqrt": (1, 1), "exp": (1, 1), "log": (1, 1), "abs": (1, 1),
    "sign": (1, 1), "floor": (1, 1), "cos": (1, 1), "sin": (1, 1), "tanh": (1, 1),
    "min": (2, None), "max": (2, None), "clip": (3, 3), "where": (3, 3),
    **{name: (1, 1) for name in REDUCTIONS}, **{name: (1, 1) for name in FACTORED},
}
CONSTANTS = {"pi": 3.141592653589793, "inf": float("inf")}


class TypeRuleError(Exception):
    """Raised by :func:`result_type`; the checker turns it into a located diagnostic."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def _describe(t: Type) -> str:
    return {"bool": "a boolean", "str": "a string", "tuple": f"a tuple of {t.n}"}.get(
        t.elem, "a number")


def result_type(op: str, args: tuple[Type, ...]) -> Type:
    """The type of ``op(*args)``; the one place the typing rules live."""
    kind = join_kind(*args)
    if op in ARITH_OPS:
        for a in args:
            if a.elem != "float":
                hint = None
                if a.elem == "bool":
                    hint = "use where(cond, a, b) to choose between numbers"
                elif a.elem == "tuple":
                    hint = "unpack it first, e.g. 'b1, b2 = betas', or index it: betas[0]"
                raise TypeRuleError(f"'{op}' needs numbers, got {_describe(a)}", hint)
        return Type(kind, "float")
    if op in COMPARE_OPS:
        a, b = args
        if op in ("eq", "ne") and a.elem == b.elem and a.elem in ("str", "bool"):
            return Type(kind, "bool")
        if a.elem != "float" or b.elem != "float":
            raise TypeRuleError(f"cannot compare {_describe(a)} with {_describe(b)}")
        return Type(kind, "bool")
    if op in LOGIC_OPS:
        for a in args:
            if a.elem != "bool":
                raise TypeRuleError(f"'{op}' needs booleans, got {_describe(a)}",
                                    "compare explicitly, e.g. 'x != 0'")
        return Type(kind, "bool")
    if op == "where":
        cond, a, b = args
        if cond.elem != "bool":
            raise TypeRuleError(f"where() needs a boolean condition, got {_describe(cond)}")
        if a.elem != "float" or b.elem != "float":
            raise TypeRuleError("where() chooses between numbers")
        return Type(kind, "float")
    raise TypeRuleError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class Var:
    id: int
    type: Type
    hint: str = field(default="", compare=False)  # the spec name it came from, for printing

    def __str__(self) -> str:
        return f"%{self.id}" + (f".{self.hint}" if self.hint else "")


@dataclass(frozen=True)
class Instr:
    out: Var
    op: str
    args: tuple[Var, ...] = ()
    attr: Any = None
    span: Span | None = field(default=None, compare=False)

    def __str__(self) -> str:
        rhs = self.op
        if self.attr is not None:
            rhs += f"[{self.attr!r}]"
        if self.args:
            rhs += "(" + ", ".join(str(a) for a in self.args) + ")"
        where = f"    # line {self.span.line}" if self.span else ""
        return f"{self.out}: {self.out.type} = {rhs}{where}"


@dataclass(frozen=True)
class Program:
    """One specialisation of a spec as straight-line SSA code.

    ``outputs`` maps each buffer the step writes (``p`` and state names) to the value it
    ends with. After :func:`optdsl.passes.hoist_host_scalars`, ``host`` holds the scalar
    prologue, ``body`` only tensor code, and ``kernel_args`` the host values the kernel
    reads. After :func:`optdsl.passes.reuse_buffers`, ``slots`` maps each tensor value
    computed in the body to the buffer it is written into.
    """

    name: str
    body: tuple[Instr, ...]
    outputs: tuple[tuple[str, Var], ...]
    host: tuple[Instr, ...] = ()
    kernel_args: tuple[Var, ...] = ()
    hoisted: bool = False
    # scalar state -> its new value (a host value), for specs with scalar states
    scalar_outputs: tuple[tuple[str, Var], ...] = ()
    # factored (row or column) state -> its new value, for specs with factored states
    factored_outputs: tuple[tuple[str, Var], ...] = ()
    slots: tuple[tuple[int, str], ...] | None = None
    # line -> the spec's statement on it, re-rendered from the tree (for comments only)
    notes: tuple[tuple[int, str], ...] = field(default=(), compare=False, repr=False)

    def with_(self, **changes) -> Program:
        return replace(self, **changes)

    @property
    def loads(self) -> tuple[str, ...]:
        """The buffers the kernel reads, in first-use order."""
        seen: list[str] = []
        for ins in self.host + self.body:
            if ins.op == "load" and ins.attr not in seen:
                seen.append(ins.attr)
        return tuple(seen)

    @property
    def hypers(self) -> tuple[str, ...]:
        seen: list[str] = []
        for ins in self.host + self.body:
            if ins.op == "hyper" and ins.attr not in seen:
                seen.append(ins.attr)
        return tuple(seen)

    def __str__(self) -> str:
        lines = [f"program {self.name}"]
        if self.hoisted:
            lines.append("  host:")
            lines += [f"    {ins}" for ins in self.host]
            lines.append("  kernel(" + ", ".join(str(v) for v in self.kernel_args) + "):")
        slots = dict(self.slots or ())
        for ins in self.body:
            slot = f"  -> {slots[ins.out.id]}" if ins.out.id in slots else ""
            lines.append(f"    {ins}{slot}")
        lines.append("  outputs: " + ", ".join(f"{n} = {v}" for n, v in self.outputs))
        if self.scalar_outputs:
            lines.append("  scalar outputs: " + ", ".join(f"{n} = {v}"
                                                          for n, v in self.scalar_outputs))
        return "\n".join(lines)


def uses(instrs: tuple[Instr, ...]) -> dict[int, int]:
    """How many times each var id is read."""
    counts: dict[int, int] = {}
    for ins in instrs:
        for a in ins.args:
            counts[a.id] = counts.get(a.id, 0) + 1
    return counts
