"""Lowering: a CheckedSpec and one path of host decisions -> an IR Program.

Host ``if`` statements are resolved by the *path*: the tuple of branch indices taken, in
the order the ``if`` statements are reached (``len(branches)`` means "no branch": the
``else``, or nothing). :func:`paths` enumerates every possible path; the runtime computes
the path for a step with the generated ``decide`` function (``optdsl.hostcode``).

``track`` statements are lowered only when asked for (``tracks=True``): each one the path
reaches becomes an output ``track:NAME``. Left out, they emit nothing at all, so a kernel
without diagnostics is exactly the kernel of the spec without its track lines.
"""

from __future__ import annotations

from itertools import count

from . import syntax as S
from .checker import CheckedSpec
from .errors import InternalCompilerError, OptdslError
from .ir import (
    CONSTANTS,
    FACTORED,
    HOST_BOOL,
    HOST_FLOAT,
    HOST_STR,
    REDUCTIONS,
    TENSOR_FLOAT,
    Instr,
    Program,
    Type,
    Var,
    result_type,
)

Path = tuple[int, ...]


def paths(spec: S.Spec, limit: int = 4096) -> list[Path]:
    """Every path through the host ifs of the update block, in a stable order."""

    def walk(stmts: tuple[S.Stmt, ...], prefix: list[Path]) -> list[Path]:
        out = prefix
        for stmt in stmts:
            if not isinstance(stmt, S.If):
                continue
            bodies = [body for _, body in stmt.branches] + [stmt.orelse or ()]
            nxt: list[Path] = []
            for p in out:
                for i, body in enumerate(bodies):
                    nxt += walk(body, [p + (i,)])
                    # Checked as the list grows: 2**11 paths times an if whose body has
                    # 2**11 of its own made millions (a gigabyte) before a check after it.
                    if len(nxt) > limit:
                        raise OptdslError(f"{spec.name} has more than {limit} combinations "
                                          "of host if outcomes to enumerate; kernels are "
                                          "still compiled one by one as steps need them")
            out = nxt
        return out

    return walk(spec.body, [()])


class _Builder:
    def __init__(self, checked: CheckedSpec):
        self.checked = checked
        self.instrs: list[Instr] = []
        self.ids = count()
        self.cache: dict[tuple, Var] = {}
        self.tracks: list[tuple[str, Var]] | None = None  # None: tracks are not lowered

    def emit(self, op: str, args: tuple[Var, ...] = (), attr=None, span=None, hint="",
             type_: Type | None = None) -> Var:
        if type_ is None:
            type_ = result_type(op, tuple(a.type for a in args))
        out = Var(next(self.ids), type_, hint)
        self.instrs.append(Instr(out, op, args, attr, span))
        return out

    def leaf(self, op: str, attr, type_: Type, hint: str = "", span=None) -> Var:
        """Leaves are emitted once each (a buffer is loaded once, a hyper read once)."""
        # repr keeps 0.0 and -0.0 apart; the type keeps the string "1.0" and 1.0 apart
        key = (op, attr) if op != "const" else (op, type(attr).__name__, repr(attr))
        if key not in self.cache:
            self.cache[key] = self.emit(op, (), attr, span, hint or str(attr), type_)
        return self.cache[key]


def lower(checked: CheckedSpec, path: Path, *, tracks: bool = False) -> Program:
    """The straight-line program that ``path`` selects; with ``tracks``, each ``track``
    statement on the path adds an output ``track:NAME`` (elementwise, in source order)."""
    b = _Builder(checked)
    if tracks:
        b.tracks = []
    spec = checked.spec
    env: dict[str, Var] = {}
    for name in ("p", "g"):
        env[name] = b.leaf("load", name, TENSOR_FLOAT, name)
    decisions = list(path)
    _lower_block(spec.body, env, decisions, b)
    if decisions:
        raise InternalCompilerError(f"path {path} has unused decisions")
    outputs = []
    for name in ["p"] + [s.name for s in spec.states]:
        var = env.get(name)
        if var is None:
            continue
        loaded = b.cache.get(("load", name))
        if var is not loaded:
            outputs.append((name, var))
    outputs += b.tracks or ()
    scalars, factored = [], []
    for decl in (*spec.scalars, *spec.factored):
        var = env.get(decl.name)
        if var is not None and var is not b.cache.get(("scalar", f"state:{decl.name}")):
            (factored if isinstance(decl, S.FactoredStateDecl) else scalars).append(
                (decl.name, var))
    notes = tuple(sorted(S.statement_lines(spec).items()))
    return Program(spec.name, tuple(b.instrs), tuple(outputs), notes=notes,
                   scalar_outputs=tuple(scalars), factored_outputs=tuple(factored))


def _lower_block(stmts, env: dict[str, Var], decisions: list[int], b: _Builder) -> None:
    for stmt in stmts:
        if isinstance(stmt, S.If):
            if not decisions:
                raise InternalCompilerError("path too short for the spec's ifs")
            choice = decisions.pop(0)
            bodies = [body for _, body in stmt.branches] + [stmt.orelse or ()]
            _lower_block(bodies[choice], env, decisions, b)
            continue
        if isinstance(stmt, S.Track):
            if b.tracks is not None:
                value = _lower_expr(stmt.value, env, b)
                if not value.type.is_tensor:  # a host value is the same in every element
                    value = b.emit("copy", (value,), None, stmt.span, stmt.name, TENSOR_FLOAT)
                b.tracks.append((f"track:{stmt.name}", value))
            continue
        if len(stmt.targets) > 1 and isinstance(stmt.value, S.Tuple):
            values = [_lower_expr(item, env, b) for item in stmt.value.items]
        elif len(stmt.targets) > 1:
            whole = _lower_expr(stmt.value, env, b)
            values = [b.emit("index", (whole,), i, stmt.span, stmt.targets[i], HOST_FLOAT)
                      for i in range(len(stmt.targets))]
        else:
            values = [_lower_expr(stmt.value, env, b)]
        for name, value in zip(stmt.targets, values, strict=True):
            if not value.type.is_tensor and name in _buffer_names(b.checked.spec):
                # The checker types a name by joining every path to it, so a value that is
                # elementwise on some path can be a host scalar on this one. p, g and the
                # states are elementwise on every path: fill them with the scalar here, so
                # what follows computes in the buffers' dtype and every output is a tensor.
                value = b.emit("copy", (value,), None, stmt.span, name, TENSOR_FLOAT)
            env[name] = value


def _buffer_names(spec: S.Spec) -> set[str]:
    return {"p", "g"} | {s.name for s in spec.states}


def _truth(var: Var, b: _Builder, span) -> Var:
    if var.type.elem == "bool":
        return var
    zero = b.leaf("const", 0.0, HOST_FLOAT)
    return b.emit("ne", (var, zero), span=span)


def _lower_expr(e: S.Expr, env: dict[str, Var], b: _Builder) -> Var:
    spec = b.checked.spec
    if isinstance(e, S.Num):
        return b.leaf("const", float(e.value), HOST_FLOAT)
    if isinstance(e, S.Bool):
        return b.leaf("const", bool(e.value), HOST_BOOL)
    if isinstance(e, S.Str):
        return b.leaf("const", e.value, HOST_STR)
    if isinstance(e, S.Name):
        name = e.id
        if name in env:
            return env[name]
        if name == "t":
            return b.leaf("step", None, HOST_FLOAT, "t")
        if any(s.name == name for s in spec.states):
            env[name] = b.leaf("load", name, TENSOR_FLOAT, name)
            return env[name]
        if any(s.name == name for s in spec.scalars):
            return b.leaf("scalar", f"state:{name}", HOST_FLOAT, name)
        for decl in spec.factored:
            if decl.name == name:
                return b.leaf("scalar", f"state:{name}", Type(decl.kind, "float"), name)
        if name in ("factored", "dtype_eps"):  # per-parameter built-ins
            return b.leaf("scalar", name, HOST_BOOL if name == "factored" else HOST_FLOAT,
                          name)
        if name in b.checked.hypers:
            return b.leaf("hyper", name, b.checked.hypers[name].ir_type, name)
        if name in CONSTANTS:
            return b.leaf("const", CONSTANTS[name], HOST_FLOAT)
        raise InternalCompilerError(f"unresolved name {name!r} survived the checker")
    if isinstance(e, S.Index):
        value = _lower_expr(e.value, env, b)
        return b.emit("index", (value,), e.index, e.span, type_=HOST_FLOAT)
    if isinstance(e, S.Tuple):
        raise InternalCompilerError("tuple literal outside an unpacking")
    if isinstance(e, S.Unary):
        return b.emit(e.op, (_lower_expr(e.operand, env, b),), span=e.span)
    if isinstance(e, S.Binary):
        left, right = _lower_expr(e.left, env, b), _lower_expr(e.right, env, b)
        return b.emit(e.op, (left, right), span=e.span)
    if isinstance(e, S.Compare):
        operands = [_lower_expr(o, env, b) for o in e.operands]
        result = None
        for op, x, y in zip(e.ops, operands, operands[1:], strict=False):
            part = b.emit(op, (x, y), span=e.span)
            result = part if result is None else b.emit("and", (result, part), span=e.span)
        return result
    if isinstance(e, S.IfExp):
        cond = _truth(_lower_expr(e.test, env, b), b, e.span)
        a, c = _lower_expr(e.body, env, b), _lower_expr(e.orelse, env, b)
        return b.emit("where", (cond, a, c), span=e.span)
    if isinstance(e, S.Call):
        args = [_lower_expr(a, env, b) for a in e.args]
        if e.func in REDUCTIONS:
            return _lower_reduction(e, args[0], b)
        if e.func in FACTORED:  # row_mean / col_mean: a reduction to a row (column) value
            return b.emit("reduce", (args[0],), e.func.replace("_", ""), e.span, e.func,
                          Type(FACTORED[e.func], "float"))
        if e.func == "clip":
            x, lo, hi = args
            return b.emit("min", (b.emit("max", (x, lo), span=e.span), hi), span=e.span)
        if e.func in ("min", "max"):
            result = args[0]
            for a in args[1:]:
                result = b.emit(e.func, (result, a), span=e.span)
            return result
        return b.emit(e.func, tuple(args), span=e.span)
    raise InternalCompilerError(f"cannot lower {type(e).__name__}")


def _lower_reduction(e: S.Call, x: Var, b: _Builder) -> Var:
    """A reduction as a primitive ``reduce`` op and host arithmetic (see ir.REDUCTIONS);
    of a row or column value, an ``areduce`` op over each matrix's rows (columns)."""
    if x.type.is_factored:
        return b.emit("areduce", (x,), e.func, e.span, e.func, x.type)
    kind = {"norm": "sumsq", "rms": "sumsq", "total": "sum", "mean": "sum",
            "maxabs": "maxabs"}[e.func]
    reduced = b.emit("reduce", (x,), kind, e.span, e.func, HOST_FLOAT)
    if e.func in ("mean", "rms"):
        numel = b.leaf("scalar", "numel", HOST_FLOAT, "numel")
        reduced = b.emit("div", (reduced, numel), span=e.span)
    if e.func in ("norm", "rms"):
        reduced = b.emit("sqrt", (reduced,), span=e.span)
    return reduced
