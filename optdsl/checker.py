"""Checks: a parsed Spec -> a CheckedSpec, or CheckError with every diagnostic found.

The checks run in a fixed order, each a ``check_*`` function that returns diagnostics:
declarations first (so later checks can trust the hyper table), then state declarations,
``require`` lines, and the update block. Typing rules themselves live in
:func:`optdsl.ir.result_type`, shared with lowering.

Assignment rules (documented in docs/language.md):
- ``t`` can never be assigned: it is the step count the runtime keeps.
- In an optimizer, hypers are read-only: copy into a local (``lr_t = lr * 2``) instead.
- ``g`` may be rebound (``g = g + weight_decay * p``); this changes a local copy, never
  the user's ``.grad`` array. ``p``, ``g`` and states must stay elementwise numbers.
- Built-in functions and constants cannot be rebound.
- ``track NAME = EXPR`` binds nothing: NAME is a new name (no built-in, hyper, state or
  local of the block, no other track's) and EXPR a number (see :func:`_check_track`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from . import syntax as S
from .errors import CheckError, Diagnostic, HyperError, Span
from .hypers import REQUIRED, HyperInfo, coerce
from .ir import (
    COL,
    CONSTANTS,
    FACTORED,
    FUNCTIONS,
    HOST,
    HOST_BOOL,
    HOST_FLOAT,
    REDUCTIONS,
    ROW,
    TENSOR,
    TENSOR_FLOAT,
    Type,
    TypeRuleError,
    join_kind,
    result_type,
)
from .parse_errors import KEYWORDS

OPTIMIZER_BUILTINS = {"p": TENSOR_FLOAT, "g": TENSOR_FLOAT, "t": HOST_FLOAT,
                      # p has 2 or more dimensions (decided per parameter; see factored
                      # states), and the machine epsilon of p's dtype (a per-parameter value)
                      "factored": HOST_BOOL, "dtype_eps": HOST_FLOAT}
FACTORED_FACT = S.Name("factored")
# A schedule runs on the host: the epoch, the group's base lr, the metric given to
# step(metric), and the group values it may read and assign.
SCHEDULE_BUILTINS = {"epoch": HOST_FLOAT, "base_lr": HOST_FLOAT, "metric": HOST_FLOAT,
                     "lr": HOST_FLOAT}
SCHEDULE_GROUP_VALUES = ("lr",)
# Built-ins a schedule may assign: the group's lr, and base_lr (the group's initial_lr,
# which OneCycleLR sets to max_lr / div_factor, as torch's does).
SCHEDULE_ASSIGNABLE = ("lr", "base_lr")
# Functions only a schedule may call: count(tuple, x), how many items of a tuple hyper
# equal x (MultiStepLR's milestones).
SCHEDULE_FUNCTIONS = {"count": (2, 2)}
HYPER_TYPES = ("float", "int", "bool", "str", "tuple")
# Names the runtime gives a meaning of its own, per kind of spec and of declaration: a
# param group keeps its parameters under 'params' and a parameter's state its step count
# under 'step' (as torch.optim does), and the classes' constructors take keywords besides
# the hypers (tests/fuzz/test_regressions.py keeps this in step with their signatures).
RUNTIME_NAMES = {
    ("optimizer", "hyper"): {"params": "a param group's list of parameters",
                             "backend": "a keyword of the optimizer's constructor",
                             "skip_nonfinite": "a keyword of the optimizer's constructor",
                             "max_grad_norm": "a keyword of the optimizer's constructor",
                             "lazy": "a keyword of the optimizer's constructor",
                             "master_weights": "a keyword of the optimizer's constructor",
                             "state_dtypes": "a keyword of the optimizer's constructor",
                             "diagnostics": "a keyword of the optimizer's constructor"},
    ("optimizer", "state"): {"step": "a parameter's step count in its state",
                             "master": "the fp32 master copy of a parameter in its state"},
    ("schedule", "hyper"): {"optimizer": "the schedule's first argument",
                            "last_epoch": "a keyword of the schedule's constructor"},
    ("schedule", "group"): {"params": "a param group's list of parameters"},
}


@dataclass(frozen=True)
class CheckedSpec:
    """A spec that passed every check, with its hyper table."""

    spec: S.Spec
    hypers: dict[str, HyperInfo] = field(compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def states(self) -> tuple[S.StateDecl, ...]:
        return self.spec.states


def check(spec: S.Spec) -> CheckedSpec:
    """Run every check in order; raise CheckError listing all problems."""
    diags, hypers = check_declarations(spec)
    diags += check_states(spec, hypers)
    diags += check_groups(spec, hypers)
    diags += check_requires(spec, hypers)
    diags += check_update(spec, hypers)
    if diags:
        raise CheckError(sorted(diags, key=lambda d: (d.span.line, d.span.column)))
    return CheckedSpec(spec, hypers)


class _Fail(Exception):
    def __init__(self, span: Span, message: str, hint: str | None = None):
        self.span, self.message, self.hint = span, message, hint


def _did_you_mean(name: str, candidates) -> str | None:
    """The closest candidate (difflib's ratio >= 0.6); ties go to the one that shares more
    of its start and end with ``name``, since typos tend to keep those: 'bta1' -> 'b1'."""
    def score(candidate: str) -> tuple[float, int]:
        ratio = difflib.SequenceMatcher(None, candidate, name).ratio()
        prefix = len(os.path.commonprefix([name, candidate]))
        suffix = len(os.path.commonprefix([name[::-1], candidate[::-1]]))
        return round(ratio, 6), prefix + suffix

    scored = [(score(c), c) for c in sorted(set(candidates))]
    close = [(sc, c) for sc, c in scored if sc[0] >= 0.6]
    return f"did you mean {max(close)[1]!r}?" if close else None


# --- declarations -------------------------------------------------------------------

def _builtin_names(spec: S.Spec) -> dict[str, Type]:
    return dict(OPTIMIZER_BUILTINS if spec.kind == "optimizer" else SCHEDULE_BUILTINS)


def _functions(spec: S.Spec) -> dict[str, tuple[int, int | None]]:
    """The functions a spec can call: a schedule cannot reduce (it sees no parameter), so
    there the reductions' names are free for hypers and locals (OneCycleLR's ``total``)."""
    if spec.kind == "schedule":
        return {k: v for k, v in FUNCTIONS.items() if k not in REDUCTIONS}
    return FUNCTIONS


def check_declarations(spec: S.Spec) -> tuple[list[Diagnostic], dict[str, HyperInfo]]:
    """Duplicates, reserved names, hyper types, defaults and ranges."""
    diags: list[Diagnostic] = []
    src = spec.source

    def fail(span, message, hint=None):
        diags.append(Diagnostic(src, span, message, hint))

    seen: dict[str, int] = {}
    reserved = set(_builtin_names(spec)) | set(_functions(spec)) | set(CONSTANTS) \
        | set(SCHEDULE_FUNCTIONS)
    hypers: dict[str, HyperInfo] = {}
    for decl in (*spec.hypers, *spec.states, *spec.scalars, *spec.factored, *spec.groups):
        kind = {S.HyperDecl: "hyper", S.GroupDecl: "group"}.get(type(decl), "state")
        if isinstance(decl, S.GroupDecl) and spec.kind != "schedule":
            fail(decl.span, "'group' declarations are for schedules",
                 "an optimizer reads its group's values as hypers")
            continue
        if isinstance(decl, S.GroupDecl) and decl.name in SCHEDULE_GROUP_VALUES:
            fail(decl.span, f"{decl.name!r} is always available in a schedule",
                 "remove this line")
            continue
        if decl.name in seen:
            fail(decl.span, f"duplicate declaration of {decl.name!r}",
                 f"it is already declared at line {seen[decl.name]}")
            continue
        seen[decl.name] = decl.span.line
        if decl.name in KEYWORDS:  # the update block could never name it
            fail(decl.span, f"{kind} {decl.name!r}: {decl.name!r} is a keyword, not a name",
                 "rename it")
            continue
        if decl.name in reserved:
            fail(decl.span, f"{kind} {decl.name!r} shadows a built-in name", "rename it")
            continue
        taken = RUNTIME_NAMES.get((spec.kind, kind), {})
        clash = next((n for n in (decl.name, getattr(decl, "alt", None)) if n in taken), None)
        if clash is not None:
            if kind == "group":
                fail(decl.span, f"{clash!r} cannot be a group value: it is {taken[clash]}")
            else:
                fail(decl.span, f"{clash!r} cannot be a {kind}: it is {taken[clash]}",
                     "rename it")
            continue
        if isinstance(decl, S.HyperDecl):
            try:
                hypers[decl.name] = _hyper_info(decl)
            except _Fail as exc:
                fail(exc.span, exc.message, exc.hint)
    return diags, hypers


def _const_value(expr: S.Expr):
    """The value of a literal default: numbers, booleans, strings, tuples of numbers."""
    if isinstance(expr, (S.Num, S.Str, S.Bool)):
        return expr.value
    if isinstance(expr, S.Name) and expr.id in CONSTANTS:
        return CONSTANTS[expr.id]
    if isinstance(expr, S.Unary) and expr.op == "neg":
        value = _const_value(expr.operand)
        if isinstance(value, float):
            return -value
    if isinstance(expr, S.Binary) and expr.op in ("add", "sub", "mul", "div"):
        a, b = _const_value(expr.left), _const_value(expr.right)
        if isinstance(a, float) and isinstance(b, float):
            if expr.op == "div" and b == 0:
                raise _Fail(expr.span, "division by zero in a default value")
            return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b if b else 0}[expr.op]
    if isinstance(expr, S.Tuple):
        items = tuple(_const_value(i) for i in expr.items)
        if all(isinstance(i, float) for i in items):
            return items
        raise _Fail(expr.span, "a tuple default must hold numbers only")
    raise _Fail(expr.span, "a default must be a literal: a number, True/False, a string or "
                           "a tuple of numbers")


def _hyper_info(decl: S.HyperDecl) -> HyperInfo:
    default = REQUIRED if decl.default is None else _const_value(decl.default)
    if decl.type is not None:
        if decl.type not in HYPER_TYPES:
            raise _Fail(decl.type_span, f"unknown hyper type {decl.type!r}",
                        _did_you_mean(decl.type, HYPER_TYPES) or
                        "use one of " + ", ".join(HYPER_TYPES))
        htype = decl.type
    elif default is REQUIRED:
        htype = "float"
    else:
        htype = {bool: "bool", str: "str", float: "float", tuple: "tuple"}[type(default)]
    # A tuple's length comes from its default; declared ': tuple', it may have any length
    # (and can then only be passed to count(), not unpacked or indexed).
    n = len(default) if isinstance(default, tuple) and decl.type is None else -1
    b = decl.bounds
    info = HyperInfo(decl.name, htype, default, n)
    if b is not None:
        if b.choices is not None:
            if htype != "str":
                raise _Fail(b.span, "a set of choices is for string hypers")
            info = HyperInfo(decl.name, htype, default, n, choices=b.choices)
        else:
            if htype not in ("float", "int", "tuple"):
                raise _Fail(b.span, "a numeric range is for number and tuple hypers")
            if b.lo > b.hi:
                raise _Fail(b.span, "empty range: the lower bound is above the upper")
            info = HyperInfo(decl.name, htype, default, n, b.lo, b.hi, b.lo_closed,
                             b.hi_closed)
    if default is not REQUIRED:
        expected_type = {"float": float, "int": float, "bool": bool, "str": str,
                         "tuple": tuple}[htype]
        if not isinstance(default, expected_type):
            got = {bool: "True/False", str: "a string", float: "a number", tuple: "a tuple"}
            raise _Fail(decl.default.span, f"the default of {decl.name!r} is not of type "
                        f"{htype!r}", f"got {got[type(default)]}")
        if htype == "int" and not float(default).is_integer():
            raise _Fail(decl.default.span, f"the default of {decl.name!r} is not a whole number")
        try:
            coerce(info, default)
        except HyperError:
            what = "not one of the choices" if info.choices else "out of range"
            each = "each item " if htype == "tuple" else ""
            raise _Fail(decl.default.span, f"the default of {decl.name!r} is {what}",
                        f"{each}must be {info.describe_range()}") from None
        if htype == "int":
            info = HyperInfo(**{**info.__dict__, "default": int(default)})
    return info


# --- expressions ----------------------------------------------------------------------

def _conjuncts(expr: S.Expr) -> frozenset:
    if isinstance(expr, S.Binary) and expr.op == "and":
        return _conjuncts(expr.left) | _conjuncts(expr.right)
    return frozenset({expr})


@dataclass
class _Binding:
    type: Type | None  # None: its definition failed to check; don't report it again
    definite: bool = True
    line: int = 0


class _Scope:
    """Typing of expressions and statements, with the names visible at each point."""

    def __init__(self, spec: S.Spec, hypers: dict[str, HyperInfo], allowed: set[str] | None
                 = None):
        self.spec = spec
        self.hypers = hypers
        self.states = {s.name: s for s in spec.states}
        self.scalars = {s.name: s for s in spec.scalars}
        self.factored = {s.name: s for s in spec.factored}
        # Locals whose value is per parameter (it reads a scalar state or a reduction):
        # a host value, but one the runtime knows only while stepping each parameter.
        self.perparam: set[str] = set()
        self.groups = {g.name: g for g in spec.groups if g.name not in SCHEDULE_GROUP_VALUES}
        self.builtins = _builtin_names(spec)
        self.functions = _functions(spec)
        # Hypers including those whose declaration failed (so their uses are not reported
        # again), but not those that shadow a built-in: those names mean the built-in.
        self.declared = {h.name for h in spec.hypers} - set(self.builtins) - set(self.functions) \
            - set(CONSTANTS)
        self.allowed = allowed  # restricts the names an expression may use
        self.env: dict[str, _Binding] = {}
        self.facts: frozenset = frozenset()
        self.tracks: dict[str, int] = {}  # track name -> its line
        # Every local the update block assigns anywhere, with its first line
        self.locals: dict[str, int] = {}

    def visible(self) -> set[str]:
        names = set(self.hypers) | set(CONSTANTS) | set(self.env)
        names |= set(self.builtins) | set(self.states) | set(self.groups) | set(self.scalars)
        names |= set(self.factored)
        if self.allowed is not None:
            names &= self.allowed
        return names

    def lookup(self, node: S.Name) -> Type | None:
        name = node.id
        if self.allowed is not None and name not in self.allowed and (
                name in self.builtins or name in self.states or name in self.env
                or name in self.groups or name in self.scalars or name in self.factored):
            raise _Fail(node.span, f"{name!r} cannot be used here",
                        "only hypers, constants and p are allowed" if "p" in self.allowed
                        else "only hypers, constants and epoch are allowed"
                        if "epoch" in self.allowed else "only hypers and constants are allowed")
        if name in self.env:
            b = self.env[name]
            if not b.definite:
                raise _Fail(node.span, f"{name!r} may be undefined here",
                            "it is assigned only in some branches of an if above; "
                            "assign it before the if or in every branch")
            return b.type
        if name in self.states:
            decl = self.states[name]
            if decl.cond is not None and not _conjuncts(decl.cond) <= self.facts:
                raise _Fail(node.span, f"state {name!r} exists only if "
                            f"{_show(decl.cond)}",
                            f"use it inside 'if {_show(decl.cond)}:'")
            return TENSOR_FLOAT if self.spec.kind == "optimizer" else HOST_FLOAT
        if name in self.scalars:
            return HOST_FLOAT
        if name in self.factored:
            decl = self.factored[name]
            self.need_factored(node.span, f"{decl.kind} state {name!r}")
            return Type(decl.kind, "float")
        if name in self.groups:
            self._check_group_cond(self.groups[name], node.span, "use")
            return HOST_FLOAT
        if name in self.builtins:
            return self.builtins[name]
        if name in self.hypers:
            return self.hypers[name].ir_type
        if name in CONSTANTS:
            return HOST_FLOAT
        if name in self.declared:
            return None  # a hyper whose declaration failed: reported there already
        if name in self.functions:
            raise _Fail(node.span, f"{name!r} is a function", f"call it: {name}(...)")
        if self.spec.kind == "schedule" and name in OPTIMIZER_BUILTINS:
            raise _Fail(node.span, f"{name!r} is not available in a schedule",
                        "a schedule runs on the host once per step and sees epoch, "
                        "base_lr, metric, the group's lr and the group values it declares")
        if name in self.tracks:
            raise _Fail(node.span, f"{name!r} is a track, which binds no name",
                        f"assign the value to a local, track the local (line "
                        f"{self.tracks[name]}) and read the local here")
        hint = _did_you_mean(name, self.visible())
        if hint is None and self.spec.kind == "schedule" and self.allowed is None:
            hint = f"to use the param group's value, declare 'group {name}'"
        raise _Fail(node.span, f"unknown name {name!r}", hint)

    def _check_group_cond(self, decl: S.GroupDecl, span: Span, verb: str) -> None:
        if decl.cond is not None and not _conjuncts(decl.cond) <= self.facts:
            raise _Fail(span, f"group value {decl.name!r} exists only if {_show(decl.cond)}",
                        f"{verb} it inside 'if {_show(decl.cond)}:'")

    def type_of(self, e: S.Expr) -> Type | None:
        """The type of ``e``; None when a name in it already failed (no cascade)."""
        if isinstance(e, S.Num):
            return HOST_FLOAT
        if isinstance(e, S.Bool):
            return HOST_BOOL
        if isinstance(e, S.Str):
            return Type(HOST, "str")
        if isinstance(e, S.Name):
            return self.lookup(e)
        if isinstance(e, S.Tuple):
            # Tuple literals exist only on the right of an unpacking (see _check_assign).
            raise _Fail(e.span, "a tuple can only be unpacked",
                        "assign it to several names, e.g. 'a, b = (x, y)'")
        if isinstance(e, S.Index):
            t = self.type_of(e.value)
            if t is None:
                return None
            if t.elem != "tuple":
                raise _Fail(e.span, "only a tuple can be indexed")
            if t.n < 0:
                raise _Fail(e.span, "a tuple of any length cannot be indexed",
                            "pass it to count(), or give the hyper a default to fix its length")
            if e.index >= t.n:
                raise _Fail(e.span, f"index {e.index} is out of range for a tuple of {t.n}")
            return HOST_FLOAT
        if isinstance(e, S.Call):
            return self._call(e)
        if isinstance(e, S.Unary):
            return self._apply(e, e.op, (e.operand,))
        if isinstance(e, S.Binary):
            return self._apply(e, e.op, (e.left, e.right))
        if isinstance(e, S.Compare):
            kinds = []
            for op, a, b in zip(e.ops, e.operands, e.operands[1:], strict=False):
                t = self._apply(e, op, (a, b))
                if t is None:
                    return None
                kinds.append(t)
            return Type(join_kind(*kinds), "bool")
        if isinstance(e, S.IfExp):
            test = self.condition(e.test, "a conditional expression")
            a, b = self.type_of(e.body), self.type_of(e.orelse)
            if None in (test, a, b):
                return None
            if a.elem != "float" or b.elem != "float":
                raise _Fail(e.span, "'a if c else b' chooses between numbers",
                            f"got {_describe(a)} and {_describe(b)}")
            return Type(join_kind(a, b), "float")
        raise _Fail(e.span, "unsupported expression")  # pragma: no cover

    def _apply(self, node: S.Expr, op: str, operands) -> Type | None:
        types = tuple(self.type_of(o) for o in operands)
        if None in types:
            return None
        try:
            return result_type(op, types)
        except TypeRuleError as exc:
            raise _Fail(node.span, _user_op_names(exc.message, op), exc.hint) from None

    def _call(self, e: S.Call) -> Type | None:
        if e.func in SCHEDULE_FUNCTIONS:
            return self._schedule_call(e)
        if e.func not in self.functions:
            known = self.visible() - set(self.functions)
            if e.func in known:
                raise _Fail(e.func_span, f"{e.func!r} is not a function")
            raise _Fail(e.func_span, f"unknown function {e.func!r}",
                        _did_you_mean(e.func, self.functions) or
                        "available: " + " ".join(sorted(self.functions)))
        lo, hi = FUNCTIONS[e.func]
        n = len(e.args)
        if e.func in REDUCTIONS:
            return self._reduction(e)
        if e.func in FACTORED:
            return self._factored_mean(e)
        if n < lo or (hi is not None and n > hi):
            if lo == hi:
                want = f"{lo} argument" + ("s" if lo != 1 else "")
            else:
                want = f"at least {lo} arguments"
            raise _Fail(e.span, f"{e.func}() takes {want}, got {n}")
        if e.func == "clip":
            return self._apply(e, "min", e.args[:2]) and self._apply(e, "max", e.args[::2]) \
                and self._apply(e, "min", e.args)
        if e.func in ("min", "max"):
            types = [self.type_of(a) for a in e.args]
            if None in types:
                return None
            try:
                for t in types:
                    result_type(e.func, (t, HOST_FLOAT))
            except TypeRuleError as exc:
                raise _Fail(e.span, _user_op_names(exc.message, e.func), exc.hint) from None
            return Type(join_kind(*types), "float")
        if e.func == "where":
            return self._apply(e, "where", e.args)
        return self._apply(e, e.func, e.args)

    def _reduction(self, e: S.Call) -> Type | None:
        """``norm(x)`` and the other reductions: an elementwise number in, one host
        number per parameter out, in an optimizer's update block only."""
        if self.allowed is not None:  # (a schedule does not know these names at all)
            raise _Fail(e.func_span, f"{e.func}() cannot be used in declarations",
                        "a reduction runs over a parameter while it steps: use it in an "
                        "optimizer's update block")
        if len(e.args) != 1:
            raise _Fail(e.span, f"{e.func}() takes 1 argument, got {len(e.args)}")
        t = self.type_of(e.args[0])
        if t is None:
            return None
        if t.elem != "float":
            raise _Fail(e.args[0].span, f"{e.func}() reduces numbers, not {_describe(t)}",
                        "turn a condition into numbers with where(cond, 1, 0)"
                        if t.elem == "bool" else None)
        if t.is_factored:  # over each matrix's rows (columns): a row (column) value
            return t
        if not t.is_tensor:
            raise _Fail(e.args[0].span, f"{e.func}() reduces an elementwise value over the "
                        "parameter, but this is a host scalar",
                        "reduce an expression of p, g or a state, e.g. norm(p)")
        return HOST_FLOAT

    def need_factored(self, span: Span, what: str) -> None:
        if not _conjuncts(FACTORED_FACT) <= self.facts:
            raise _Fail(span, f"{what} exists only for parameters with 2 or more dimensions",
                        "use it inside 'if factored:'")

    def _factored_mean(self, e: S.Call) -> Type | None:
        """``row_mean(x)``, ``col_mean(x)``: an elementwise number in, a row (column)
        value out, for a parameter with 2 or more dimensions."""
        if self.allowed is not None:
            raise _Fail(e.func_span, f"{e.func}() cannot be used in declarations")
        self.need_factored(e.func_span, f"{e.func}()")
        t = self.type_of(e.args[0])
        if t is None:
            return None
        if t.elem != "float" or not t.is_tensor:
            raise _Fail(e.args[0].span, f"{e.func}() takes an elementwise number, not "
                        f"{_describe(t)}")
        return Type(FACTORED[e.func], "float")

    def per_parameter(self, e: S.Expr) -> str | None:
        """What makes ``e`` a per-parameter value (a scalar state, a reduction or a local
        computed from one), or None."""
        for node in S.walk_expr(e):
            if isinstance(node, S.Call) and node.func in REDUCTIONS:
                return f"{node.func}()"
            if isinstance(node, S.Name) and node.id in self.env \
                    and node.id in self.perparam:
                return f"{node.id!r}"
            if isinstance(node, S.Name) and node.id in self.scalars \
                    and node.id not in self.env:
                return f"scalar state {node.id!r}"
            if isinstance(node, S.Name) and node.id == "dtype_eps" and node.id not in self.env:
                return "dtype_eps"
        return None

    def _schedule_call(self, e: S.Call) -> Type | None:
        if self.spec.kind != "schedule":
            raise _Fail(e.func_span, f"{e.func}() is available in schedules only")
        if len(e.args) != 2:
            raise _Fail(e.span, f"{e.func}() takes 2 arguments, got {len(e.args)}")
        items, x = (self.type_of(a) for a in e.args)
        if items is not None and items.elem != "tuple":
            raise _Fail(e.args[0].span, f"count() counts the items of a tuple, not "
                        f"{_describe(items)}")
        if x is not None and x.elem != "float":
            raise _Fail(e.args[1].span, f"count() looks for a number, not {_describe(x)}")
        return HOST_FLOAT if None not in (items, x) else None

    def condition(self, e: S.Expr, what: str) -> Type | None:
        """A host condition (``if``, ``a if c else b``): a host bool, or a host number."""
        t = self.type_of(e)
        if t is None:
            return None
        if t.kind != HOST:
            shown = {ROW: "a row value", COL: "a column value"}.get(t.kind, "elementwise")
            raise _Fail(e.span, f"{what} must be a host value, but this is {shown}",
                        "an 'if' picks one kernel per step; use where(cond, a, b) "
                        "for an elementwise choice")
        if t.elem not in ("bool", "float"):
            shown = e.id if isinstance(e, S.Name) else "value"
            hint = f"compare it, e.g. '{shown} == \"...\"'" if t.elem == "str" else None
            raise _Fail(e.span, f"{what} must be a boolean or a number, got {_describe(t)}",
                        hint)
        return HOST_BOOL


# IR op names as the user writes them, for messages from ir.result_type.
_OP_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "pow": "**", "neg": "-",
               "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _user_op_names(message: str, op: str) -> str:
    """``'mul' needs numbers`` -> ``'*' needs numbers``; ``'sqrt'`` -> ``'sqrt()'``."""
    shown = _OP_SYMBOLS.get(op) or (f"{op}()" if op in FUNCTIONS else op)
    return message.replace(f"'{op}'", f"'{shown}'", 1)


def _describe(t: Type) -> str:
    if t.elem == "tuple":
        return f"a tuple of {t.n}" if t.n >= 0 else "a tuple"
    if t.elem == "str":
        return "a string"
    kind = {TENSOR: "an elementwise", ROW: "a row", COL: "a column"}.get(t.kind, "a host")
    return f"{kind} {t.elem}"


def _show(expr: S.Expr) -> str:
    """Short source-like text of an expression, for messages."""
    if isinstance(expr, S.Name):
        return expr.id
    if isinstance(expr, S.Num):
        value = expr.value
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(expr, S.Bool):
        return repr(expr.value)
    if isinstance(expr, S.Unary) and expr.op == "not":
        return f"not {_show(expr.operand)}"
    if isinstance(expr, S.Binary) and expr.op in ("and", "or"):
        return f"{_show(expr.left)} {expr.op} {_show(expr.right)}"
    if isinstance(expr, S.Compare):
        signs = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
        out = _show(expr.operands[0])
        for op, o in zip(expr.ops, expr.operands[1:], strict=False):
            out += f" {signs[op]} {_show(o)}"
        return out
    return "its condition"


# --- states, requires ------------------------------------------------------------------

def check_states(spec: S.Spec, hypers: dict[str, HyperInfo]) -> list[Diagnostic]:
    """A state's init is a number, a hyper or an expression of p; its condition is host."""
    diags = []
    schedule = spec.kind == "schedule"
    for decl in spec.states:
        allowed = set(hypers) | set(CONSTANTS) | (set() if schedule else {"p"})
        scope = _Scope(spec, hypers, allowed=allowed)
        try:
            t = scope.type_of(decl.init)
            if t is not None and t.elem != "float":
                raise _Fail(decl.init.span, f"state {decl.name!r} must start as a number",
                            f"got {_describe(t)}")
            if schedule and decl.cond is not None:
                raise _Fail(decl.cond.span, "a schedule's state cannot be conditional",
                            "give it a value in every case instead")
            if decl.cond is not None:
                allowed = set(hypers) | set(CONSTANTS) | ({"factored"} if not schedule else set())
                cond_scope = _Scope(spec, hypers, allowed=allowed)
                cond_scope.condition(decl.cond, "a state's condition")
        except _Fail as exc:
            diags.append(Diagnostic(spec.source, exc.span, exc.message, exc.hint))
    for decl in (*spec.scalars, *spec.factored):
        try:
            if schedule:
                raise _Fail(decl.span, "a schedule's states are scalars already",
                            f"write 'state {decl.name} = ...'")
            scope = _Scope(spec, hypers, allowed=set(hypers) | set(CONSTANTS))
            t = scope.type_of(decl.init)
            if t is not None and t.elem != "float":
                what = "scalar" if isinstance(decl, S.ScalarStateDecl) else decl.kind
                raise _Fail(decl.init.span, f"{what} state {decl.name!r} must start as a "
                            f"number, got {_describe(t)}")
        except _Fail as exc:
            diags.append(Diagnostic(spec.source, exc.span, exc.message, exc.hint))
    return diags


def check_groups(spec: S.Spec, hypers: dict[str, HyperInfo]) -> list[Diagnostic]:
    """A group value's condition is a host expression of the hypers."""
    diags = []
    for decl in spec.groups:
        if decl.cond is None:
            continue
        scope = _Scope(spec, hypers, allowed=set(hypers) | set(CONSTANTS))
        try:
            scope.condition(decl.cond, "a group value's condition")
        except _Fail as exc:
            diags.append(Diagnostic(spec.source, exc.span, exc.message, exc.hint))
    return diags


def check_requires(spec: S.Spec, hypers: dict[str, HyperInfo]) -> list[Diagnostic]:
    """Conditions on the hypers; a schedule's may also use ``epoch`` (checked each step)."""
    diags = []
    extra = {"epoch"} if spec.kind == "schedule" else set()
    for decl in spec.requires:
        scope = _Scope(spec, hypers, allowed=set(hypers) | set(CONSTANTS) | extra)
        try:
            scope.condition(decl.cond, "a 'require' condition")
        except _Fail as exc:
            diags.append(Diagnostic(spec.source, exc.span, exc.message, exc.hint))
    return diags


# --- the update block -------------------------------------------------------------------

def check_update(spec: S.Spec, hypers: dict[str, HyperInfo]) -> list[Diagnostic]:
    """Names, types and assignment rules of the update block, statement by statement."""
    diags: list[Diagnostic] = []
    scope = _Scope(spec, hypers)
    for stmt in _walk_assigns(spec.body):
        for name in stmt.targets:
            if name not in scope.states and name not in scope.builtins \
                    and name not in scope.groups:
                scope.locals.setdefault(name, stmt.span.line)
    _check_block(spec.body, scope, diags)
    if spec.kind == "schedule" and not diags:
        diags += _unused_schedule_locals(spec, scope)
    return diags


def _unused_schedule_locals(spec: S.Spec, scope: _Scope) -> list[Diagnostic]:
    """A schedule's only effects are the group values and states it assigns, so a local
    that is never read is a mistake, most often a group value not declared with 'group'."""
    read = {n.id for n in _walk_reads(spec.body)}
    out, seen = [], set()
    for stmt in _walk_assigns(spec.body):
        spans = stmt.target_spans or (stmt.span,) * len(stmt.targets)
        for name, span in zip(stmt.targets, spans, strict=False):
            if name in read or name in seen or name in scope.states or name in scope.groups \
                    or name in scope.builtins:
                continue
            seen.add(name)
            out.append(Diagnostic(spec.source, span, f"{name!r} is assigned but never used",
                                  f"to set the param group's {name}, declare 'group {name}'"))
    return out


def _walk_assigns(stmts):
    for stmt in stmts:
        if isinstance(stmt, S.Assign):
            yield stmt
        elif isinstance(stmt, S.If):
            for _, body in stmt.branches:
                yield from _walk_assigns(body)
            yield from _walk_assigns(stmt.orelse or ())


def _walk_reads(stmts):
    for stmt in stmts:
        if isinstance(stmt, (S.Assign, S.Track)):
            yield from (n for n in S.walk_expr(stmt.value) if isinstance(n, S.Name))
        else:
            for cond, body in stmt.branches:
                yield from (n for n in S.walk_expr(cond) if isinstance(n, S.Name))
                yield from _walk_reads(body)
            yield from _walk_reads(stmt.orelse or ())


def _check_block(stmts, scope: _Scope, diags: list[Diagnostic]) -> None:
    for stmt in stmts:
        try:
            if isinstance(stmt, S.Assign):
                _check_assign(stmt, scope)
            elif isinstance(stmt, S.Track):
                _check_track(stmt, scope)
            else:
                _check_if(stmt, scope, diags)
        except _Fail as exc:
            diags.append(Diagnostic(scope.spec.source, exc.span, exc.message, exc.hint))
            if isinstance(stmt, S.Assign):
                for name in stmt.targets:  # poison the names so later uses don't cascade
                    if name not in scope.states and name not in scope.builtins \
                            and name not in scope.scalars and name not in scope.factored:
                        scope.env[name] = _Binding(None, True, stmt.span.line)


def _check_assign(stmt: S.Assign, scope: _Scope) -> None:
    targets = stmt.targets
    spans = stmt.target_spans or (stmt.span,) * len(targets)
    if len(targets) > 1:
        if isinstance(stmt.value, S.Tuple):
            if len(stmt.value.items) != len(targets):
                n = len(stmt.value.items)
                raise _Fail(stmt.span, f"cannot unpack {n} value{'s' if n != 1 else ''} into "
                            f"{len(targets)} names")
            types = [scope.type_of(i) for i in stmt.value.items]
        else:
            t = scope.type_of(stmt.value)
            if t is None:
                types = [None] * len(targets)
            elif t.elem != "tuple":
                raise _Fail(stmt.value.span, f"cannot unpack {_describe(t)} into "
                            f"{len(targets)} names", "only a tuple can be unpacked")
            elif t.n < 0:
                raise _Fail(stmt.value.span, "a tuple of any length cannot be unpacked",
                            "pass it to count(), or give the hyper a default to fix its length")
            elif t.n != len(targets):
                raise _Fail(stmt.span, f"cannot unpack a tuple of {t.n} into "
                            f"{len(targets)} names",
                            f"write {t.n} names on the left" if t.n else None)
            else:
                types = [HOST_FLOAT] * t.n
    else:
        types = [scope.type_of(stmt.value)]
    perparam = scope.per_parameter(stmt.value) is not None
    for name, span, t in zip(targets, spans, types, strict=False):
        _check_target(name, span, t, scope)
        if name in scope.states or name in scope.builtins or name in scope.groups \
                or name in scope.scalars or name in scope.factored:
            continue
        scope.env[name] = _Binding(t, True, span.line)
        if perparam and t is not None and t.kind == HOST:
            scope.perparam.add(name)
        else:
            scope.perparam.discard(name)


def _check_track(stmt: S.Track, scope: _Scope) -> None:
    """``track NAME = EXPR``: a new name, unique among tracks, and a number. Inside a host
    ``if`` it is an output only of the kernels whose path goes through that branch."""
    name, span = stmt.name, stmt.name_span
    if scope.spec.kind == "schedule":
        raise _Fail(stmt.span, "'track' is for optimizers",
                    "a schedule's values are in the param groups already")
    first = scope.tracks.setdefault(name, span.line)
    if first != span.line:
        raise _Fail(span, f"duplicate track {name!r}", f"it is already tracked at line {first}")
    taken = None
    if name in scope.builtins:
        taken = "a built-in name"
    elif name in scope.functions or name in CONSTANTS:
        taken = "a built-in function" if name in scope.functions else "a built-in constant"
    elif name in scope.states:
        taken = "a state"
    elif name in scope.declared or name in scope.hypers:
        taken = "a hyper"
    elif name in scope.locals:
        taken = f"a local of the update block (line {scope.locals[name]})"
    if taken is not None:
        raise _Fail(span, f"a track cannot be named {name!r}: it is {taken}",
                    f"name what it records, e.g. 'track {name}_value = ...'")
    t = scope.type_of(stmt.value)
    if t is not None and t.elem != "float":
        raise _Fail(stmt.value.span, f"a track must be a number, not {_describe(t)}",
                    "turn a condition into numbers with where(cond, 1, 0)"
                    if t.elem == "bool" else None)


def _check_target(name: str, span: Span, t: Type | None, scope: _Scope) -> None:
    if name == "t" and "t" in scope.builtins:
        raise _Fail(span, "cannot assign to 't'", "t is the step count kept by the runtime; "
                    "use a new local name")
    if scope.spec.kind == "schedule" and name in scope.builtins \
            and name not in SCHEDULE_ASSIGNABLE:
        raise _Fail(span, f"cannot assign to {name!r}", f"{name} is given by the runtime; "
                    "use a new local name")
    if name in scope.declared:
        raise _Fail(span, f"cannot assign to hyper {name!r}",
                    f"hypers are read-only in an update; use a local, e.g. '{name}_t = ...'")
    if name in scope.functions or name in CONSTANTS:
        raise _Fail(span, f"cannot assign to built-in {name!r}", "use another name")
    if name in scope.states:
        decl = scope.states[name]
        if decl.cond is not None and not _conjuncts(decl.cond) <= scope.facts:
            raise _Fail(span, f"state {name!r} exists only if {_show(decl.cond)}",
                        f"assign it inside 'if {_show(decl.cond)}:'")
    if name in scope.groups:
        scope._check_group_cond(scope.groups[name], span, "assign")
    if t is None:
        return
    if name in scope.factored:
        decl = scope.factored[name]
        scope.need_factored(span, f"{decl.kind} state {name!r}")
        if t.elem != "float":
            raise _Fail(span, f"{decl.kind} state {name!r} must hold a number, not "
                        f"{_describe(t)}")
        if t.kind not in (HOST, decl.kind):
            raise _Fail(span, f"{decl.kind} state {name!r} holds a value per "
                        f"{'row' if decl.kind == ROW else 'column'}, but this is "
                        f"{_describe(t)}",
                        "reduce it with row_mean(...)" if decl.kind == ROW
                        else "reduce it with col_mean(...)")
        return
    if name in scope.scalars:
        if t.elem != "float":
            raise _Fail(span, f"scalar state {name!r} must hold a number, not {_describe(t)}")
        if t.kind != HOST:
            raise _Fail(span, f"scalar state {name!r} holds one number per parameter, but "
                        "this value is elementwise",
                        "reduce it to one number first, e.g. mean(...) or norm(...)")
        return
    if scope.spec.kind == "schedule" and (name in scope.states or name in scope.builtins
                                          or name in scope.groups):
        if t.elem != "float":
            raise _Fail(span, f"{name!r} must hold a number, not {_describe(t)}")
        return
    if name in scope.states or name in scope.builtins:
        if t.elem != "float":
            raise _Fail(span, f"{name!r} must hold numbers, not {_describe(t)}",
                        "turn a condition into numbers with where(cond, a, b)"
                        if t.elem == "bool" else None)
        if t.kind == HOST:
            raise _Fail(span, f"{name!r} is elementwise but this value is a host scalar",
                        f"write an expression of p, g or a state, e.g. '{name} = "
                        f"{name} * 0 + value'")


def _check_if(stmt: S.If, scope: _Scope, diags: list[Diagnostic]) -> None:
    before_env, before_facts = scope.env, scope.facts
    outcomes: list[dict[str, _Binding]] = []
    conds = [cond for cond, _ in stmt.branches]
    for cond, body in stmt.branches:
        scope.env, scope.facts = before_env, before_facts
        try:
            scope.condition(cond, "an 'if' condition")
            reason = scope.per_parameter(cond)
            if reason is not None:
                raise _Fail(cond.span, f"an 'if' condition cannot depend on {reason}, a "
                            "value known only while each parameter steps",
                            "an 'if' picks one kernel per step for all parameters; use "
                            "where(cond, a, b) to choose per parameter")
        except _Fail as exc:
            diags.append(Diagnostic(scope.spec.source, exc.span, exc.message, exc.hint))
        scope.env = dict(before_env)
        scope.facts = before_facts | _conjuncts(cond)
        _check_block(body, scope, diags)
        outcomes.append(scope.env)
    scope.env = dict(before_env)
    scope.facts = before_facts
    if len(conds) == 1 and isinstance(conds[0], S.Unary) and conds[0].op == "not":
        scope.facts = before_facts | _conjuncts(conds[0].operand)
    if stmt.orelse is not None:
        if len(conds) == 1:  # the else of 'if c:' knows 'not c' (and of 'if not c:', c)
            negated = conds[0].operand if isinstance(conds[0], S.Unary) \
                and conds[0].op == "not" else S.Unary("not", conds[0])
            scope.facts = before_facts | _conjuncts(negated)
        _check_block(stmt.orelse, scope, diags)
    outcomes.append(scope.env)
    # Merge: a name is definite after the if only if every path defines it.
    merged: dict[str, _Binding] = {}
    for name in set().union(*outcomes):
        bindings = [env.get(name) for env in outcomes]
        present = [b for b in bindings if b is not None]
        types = [b.type for b in present if b.type is not None]
        definite = all(b is not None and b.definite for b in bindings)
        t = types[0] if types else None
        for other in types[1:]:
            if other.elem != t.elem or other.n != t.n:
                diags.append(Diagnostic(scope.spec.source, stmt.span,
                                        f"{name!r} is {_describe(t)} on one branch and "
                                        f"{_describe(other)} on another"))
                t = None
                break
            t = Type(join_kind(t, other), t.elem, t.n)
        merged[name] = _Binding(t if types else None, definite, present[0].line)
    scope.env = merged
    scope.facts = before_facts

