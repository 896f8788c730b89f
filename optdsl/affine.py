"""Affine in a hyper: the proof, and the derivative of p by that hyper.

Hypergradient descent (Baydin et al., 2018) needs ``∂p/∂lr`` of each step. On one path of
a spec (its host ``if`` decisions taken), this module decides from the lowered, unoptimised
IR whether the step's final ``p`` is an affine function of one float hyper,
``p = A + lr * B`` with ``A`` and ``B`` free of ``lr``, and whether no state depends on it
(else ``∂p/∂lr`` would depend on past steps through the state). If so, ``B`` is the
derivative, and :func:`add_derivative` emits it into the program by forward-mode rules,
each rule's instructions right after the value it differentiates, so the passes fold, CSE
and hoist it like any other value and the backends render it as one more output.

Every value is one of:

- independent: it does not depend on the hyper;
- affine: it does, affinely; its derivative is a value of the program (or the constant 1);
- nonlinear: it depends on the hyper some other way; it remembers the operation that made
  it so, which the error names.

The rules (docs/language.md, "Affine in a hyper"): the hyper itself is affine with
derivative 1; ``+``, ``-``, negation and copies of independent and affine values are
affine; a product with one independent factor; a quotient by an independent divisor;
``where(c, a, b)`` with an independent condition. Any other operation on a dependent value
is nonlinear: a product of two, a division by one, a comparison, ``min``, ``max``, ``**``,
``sqrt`` and the other functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from .checker import CheckedSpec, _did_you_mean
from .errors import InternalCompilerError, NotAffineError
from .ir import COMPARE_OPS, HOST_FLOAT, LOGIC_OPS, TENSOR_FLOAT, Instr, Program, Var, result_type
from .lower import Path, lower

# The derivative of the hyper itself: the constant 1, materialised only where an
# operation needs it as an operand (``c * lr`` differentiates to ``c`` without it).
_ONE = "one"


@dataclass(frozen=True)
class _Why:
    """The operation that made a value depend on the hyper nonlinearly."""

    instr: Instr
    reason: str


def affine_report(checked: CheckedSpec, path: Path, hyper: str) -> None:
    """Prove that on ``path`` the final p is affine in ``hyper`` and no state depends on it;
    raise :class:`~optdsl.errors.NotAffineError` saying why not, otherwise return None."""
    add_derivative(lower(checked, path), checked, hyper)


def add_derivative(program: Program, checked: CheckedSpec, hyper: str) -> Program:
    """``program`` (lowered, not yet through the passes) with one more output,
    ``dlr:HYPER``: ∂(final p)/∂hyper, elementwise. Raises NotAffineError if the step is not
    affine in ``hyper`` (see the module docstring)."""
    if program.hoisted:
        raise InternalCompilerError("add_derivative needs the IR before the passes")
    _check_hyper(checked, hyper)
    return _Differentiate(program, hyper).run()


def _check_hyper(checked: CheckedSpec, hyper: str) -> None:
    name = checked.spec.name
    info = checked.hypers.get(hyper)
    if info is None:
        hint = _did_you_mean(hyper, checked.hypers) if isinstance(hyper, str) else None
        raise NotAffineError(f"cannot differentiate by {hyper!r}: {name} has no such hyper"
                             + (f"; {hint}" if hint else ""), hyper=hyper)
    if info.type != "float":
        raise NotAffineError(f"cannot differentiate by {hyper!r}: it is a {info.type} hyper, "
                             "not a float", hyper=hyper)


class _Differentiate:
    def __init__(self, program: Program, hyper: str):
        self.program = program
        self.hyper = hyper
        self.notes = dict(program.notes)
        self.ids = count(max((i.out.id for i in program.body), default=-1) + 1)
        self.body: list[Instr] = []
        # var id -> its derivative (a Var, or _ONE); absent: independent
        self.deriv: dict[int, Var | str] = {}
        self.nonlinear: dict[int, _Why] = {}
        self.defined: dict[int, Instr] = {}

    # --- emitting ------------------------------------------------------------------------
    def emit(self, op: str, args: tuple[Var, ...], span, attr=None, type_=None) -> Var:
        type_ = type_ or result_type(op, tuple(a.type for a in args))
        out = Var(next(self.ids), type_, f"d_{self.hyper}")
        self.body.append(Instr(out, op, args, attr, span))
        return out

    def const(self, value: float) -> Var:
        return self.emit("const", (), None, value, HOST_FLOAT)

    def value(self, d: Var | str) -> Var:
        return self.const(1.0) if d is _ONE else d

    # --- the walk -----------------------------------------------------------------------
    def run(self) -> Program:
        for ins in self.program.body:
            self.body.append(ins)
            self.defined[ins.out.id] = ins
            self.visit(ins)
        outputs = dict(self.program.outputs)
        for name, var in self.program.outputs + self.program.scalar_outputs:
            if ":" not in name and name != "p" and self.depends(var):
                line = self.defined[var.id].span.line if self.defined[var.id].span else None
                where = f" (line {line})" if line is not None else ""
                raise NotAffineError(f"state {name} depends on {self.hyper}{where}, so "
                                     f"∂p/∂{self.hyper} would depend on past steps",
                                     hyper=self.hyper, line=line)
        final = outputs.get("p")
        if final is not None and final.id in self.nonlinear:
            why = self.nonlinear[final.id]
            line = why.instr.span.line if why.instr.span is not None else None
            text = self.notes.get(line)
            at = f"line {line}" + (f" '{text}'" if text else "") if line is not None \
                else "an operation"
            raise NotAffineError(f"p is not affine in {self.hyper}: {at} {why.reason}",
                                 hyper=self.hyper, line=line)
        d = self.deriv.get(final.id) if final is not None else None
        span = self.defined[final.id].span if final is not None else None
        d = self.const(0.0) if d is None else self.value(d)
        if not d.type.is_tensor:  # a slope that is the same in every element
            d = self.emit("copy", (d,), span, type_=TENSOR_FLOAT)
        return self.program.with_(body=tuple(self.body),
                                  outputs=(*self.program.outputs, (f"dlr:{self.hyper}", d)))

    def depends(self, v: Var) -> bool:
        return v.id in self.deriv or v.id in self.nonlinear

    def visit(self, ins: Instr) -> None:
        out, op, args, h = ins.out, ins.op, ins.args, self.hyper
        if op == "hyper" and ins.attr == h:
            self.deriv[out.id] = _ONE
            return
        dependent = [a for a in args if self.depends(a)]
        if not dependent:
            return
        if op == "where" and self.depends(args[0]):
            self.fail(ins, f"chooses between values with a condition that depends on {h}")
            return
        bad = next((a for a in args if a.id in self.nonlinear), None)
        if bad is not None:  # the first cause travels on
            self.nonlinear[out.id] = self.nonlinear[bad.id]
            return
        d = [self.deriv.get(a.id) for a in args]
        if op in ("add", "sub"):
            a, b = d
            if a is not None and b is not None:
                self.deriv[out.id] = self.emit(op, (self.value(a), self.value(b)), ins.span)
            elif a is not None:
                self.deriv[out.id] = a
            else:
                self.deriv[out.id] = b if op == "add" else \
                    self.emit("neg", (self.value(b),), ins.span)
        elif op == "neg":
            self.deriv[out.id] = self.emit("neg", (self.value(d[0]),), ins.span)
        elif op == "copy":
            self.deriv[out.id] = d[0]
        elif op == "mul":
            if len(dependent) == 2:
                self.fail(ins, f"multiplies two values that depend on {h}")
            elif d[0] is not None:
                self.deriv[out.id] = args[1] if d[0] is _ONE else \
                    self.emit("mul", (d[0], args[1]), ins.span)
            else:
                self.deriv[out.id] = args[0] if d[1] is _ONE else \
                    self.emit("mul", (args[0], d[1]), ins.span)
        elif op == "div":
            if d[1] is not None:
                self.fail(ins, f"divides by a value that depends on {h}")
            else:
                self.deriv[out.id] = self.emit("div", (self.value(d[0]), args[1]), ins.span)
        elif op == "where":
            branches = [self.const(0.0) if x is None else self.value(x) for x in d[1:]]
            self.deriv[out.id] = self.emit("where", (args[0], *branches), ins.span)
        else:
            self.fail(ins, _reason(op, args, self.depends, h))

    def fail(self, ins: Instr, reason: str) -> None:
        self.nonlinear[ins.out.id] = _Why(ins, reason)


_SYMBOLS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _reason(op: str, args: tuple[Var, ...], depends, hyper: str) -> str:
    """Why ``op`` of a dependent value is not affine in ``hyper``, in the user's words."""
    if op in COMPARE_OPS:
        return f"compares ('{_SYMBOLS[op]}') a value that depends on {hyper}"
    if op in LOGIC_OPS:
        return f"combines conditions that depend on {hyper}"
    if op == "pow":
        if depends(args[1]):
            return f"raises to a power that depends on {hyper}"
        return f"raises a value that depends on {hyper} to a power"
    if op == "mod":
        return f"takes '%' of a value that depends on {hyper}"
    if op == "reduce":
        return f"reduces a value that depends on {hyper} over the parameter"
    return f"takes {op}() of a value that depends on {hyper}"
