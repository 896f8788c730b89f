"""Host-side generated code: ``decide`` (which kernel a step runs), ``requires`` (cross-hyper
checks), state conditions and state initialisers, rendered from the checked AST; and
``host_args`` (the hoisted scalar prologue of one kernel), rendered from the IR.

All of it is plain Python over ``numpy.float64`` scalars, using the op table in
:mod:`optdsl.ops`, so it computes exactly what the reference interpreter computes.
"""

from __future__ import annotations

from . import syntax as S
from .checker import CheckedSpec
from .errors import InternalCompilerError
from .ir import CONSTANTS, Program
from .ops import UFUNC
from .render import constant, ident, number, quoted_ident, quoted_scalar
from .syntax import line_comment

_BUILTIN_NAMES = {"t": "_t", "p": "_p", "factored": "_factored"}


class _AstRenderer:
    """AST expression -> Python expression text over ``_np`` and ``_ops``."""

    def __init__(self, checked: CheckedSpec, tensors: set[str] = frozenset()):
        self.checked = checked
        self.tensors = tensors
        self.notes = S.statement_lines(checked.spec)

    def expr(self, e: S.Expr) -> str:
        if isinstance(e, S.Num):
            return f"_f({number(e.value)})"
        if isinstance(e, (S.Bool, S.Str)):
            return constant(e.value)
        if isinstance(e, S.Name):
            if e.id in _BUILTIN_NAMES:
                return _BUILTIN_NAMES[e.id]
            if e.id in CONSTANTS:
                return f"_f({number(CONSTANTS[e.id])})"
            return ident(e.id)
        if isinstance(e, S.Tuple):
            return "(" + "".join(self.expr(i) + ", " for i in e.items) + ")"
        if isinstance(e, S.Index):
            return f"{self.expr(e.value)}[{int(e.index)}]"
        if isinstance(e, S.Unary):
            return self.op(e.op, [e.operand])
        if isinstance(e, S.Binary):
            return self.op(e.op, [e.left, e.right])
        if isinstance(e, S.Compare):
            parts = [self.op(op, [a, b])
                     for op, a, b in zip(e.ops, e.operands, e.operands[1:], strict=False)]
            out = parts[0]
            for part in parts[1:]:
                out = f"_np.logical_and({out}, {part})"
            return out
        if isinstance(e, S.IfExp):
            return (f"_ops.where(_truth({self.expr(e.test)}), {self.expr(e.body)}, "
                    f"{self.expr(e.orelse)})")
        if isinstance(e, S.Call):
            if e.func == "clip":
                x, lo, hi = (self.expr(a) for a in e.args)
                return f"_np.minimum(_np.maximum({x}, {lo}), {hi})"
            if e.func in ("min", "max"):
                out = self.expr(e.args[0])
                for a in e.args[1:]:
                    out = f"_np.{UFUNC[e.func]}({out}, {self.expr(a)})"
                return out
            return self.op(e.func, list(e.args))
        raise InternalCompilerError(f"cannot render {type(e).__name__}")

    def op(self, op: str, operands: list[S.Expr]) -> str:
        args = ", ".join(self.expr(o) for o in operands)
        if op in ("eq", "ne"):
            return f"_ops.apply({op!r}, {args})"
        if op in ("rsqrt", "where", "count"):
            return f"_ops.{op}({args})"
        return f"_np.{UFUNC[op]}({args})"


def _names_in(nodes) -> set[str]:
    """Every name read anywhere in ``nodes`` (statements or expressions), but not by
    ``track`` statements: nothing on the host computes a track."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, S.Track):
            continue
        if isinstance(node, S.Assign):
            found |= _names_in([node.value])
        elif isinstance(node, S.If):
            for cond, body in node.branches:
                found |= _names_in([cond, *body])
            found |= _names_in(node.orelse or ())
        elif node is not None:
            found |= {n.id for n in S.walk_expr(node) if isinstance(n, S.Name)}
    return found


def _hyper_prologue(checked: CheckedSpec, indent: str, nodes) -> list[str]:
    """Read the hypers that ``nodes`` use from the group dict ``h``."""
    lines = []
    used = _names_in(nodes)
    if "factored" in used and checked.spec.kind == "optimizer":  # decided per parameter
        lines.append(f"{indent}_factored = bool(h.get('factored', False))")
    for name, info in checked.hypers.items():
        if name not in used:
            continue
        key = quoted_ident(name)
        if info.type in ("float", "int"):
            lines.append(f"{indent}{ident(name)} = _f(h[{key}])")
        elif info.type == "tuple":
            lines.append(f"{indent}{ident(name)} = tuple(map(_f, h[{key}]))")
        else:
            lines.append(f"{indent}{ident(name)} = h[{key}]")
    return lines


def render_requires(checked: CheckedSpec, r: _AstRenderer, extra: tuple[str, ...] = ()
                    ) -> list[str]:
    """``def requires(h)``: the index of the first failing ``require`` line, or -1. A
    schedule's takes ``epoch`` too (``extra``), and is checked every step."""
    conds = [q.cond for q in checked.spec.requires]
    params = "".join(f", {ident(name)}" for name in extra)
    out = [f"def requires(h{params}):",
           '    """Index of the first failing require line, or -1."""']
    out += _hyper_prologue(checked, "    ", conds)
    used = _names_in(conds)
    out += [f"    {ident(name)} = _f({ident(name)})" for name in extra if name in used]
    for k, req in enumerate(checked.spec.requires):
        out.append(f"    if not _truth({r.expr(req.cond)}):  # line {req.span.line}")
        out.append(f"        return {k}")
    out += ["    return -1", ""]
    return out


def render_enabled(checked: CheckedSpec, r: _AstRenderer, name: str, doc: str, decls
                   ) -> list[str]:
    """``def NAME(h)``: for each declaration with an optional ``if COND`` (states, group
    values), whether it is on under these hypers."""
    out = [f"def {name}(h):", f'    """{doc}"""']
    out += _hyper_prologue(checked, "    ", [d.cond for d in decls])
    out.append("    return {")
    for d in decls:
        cond = "True" if d.cond is None else f"_truth({r.expr(d.cond)})"
        out.append(f"        {quoted_ident(d.name)}: {cond},")
    out += ["    }", ""]
    return out


def render_host_module(checked: CheckedSpec) -> str:
    """The per-spec host functions, as Python source."""
    spec = checked.spec
    r = _AstRenderer(checked)
    out = ["def decide(h, t):",
           '    """The path through the host ifs this step takes (see optdsl.lower)."""',
           "    _t = _f(t)"]
    out += _hyper_prologue(checked, "    ", spec.body)
    out.append("    path = []")
    body: list[str] = []
    # Per-parameter values (scalar states, and reductions, which read p, g or a state)
    # cannot decide anything: the checker refuses them in conditions, and here they are
    # kept out of decide() as elementwise values are.
    tensors = {"p", "g", "dtype_eps"} | {s.name for s in spec.states} \
        | {s.name for s in (*spec.scalars, *spec.factored)}
    _render_decide_block(spec.body, r, tensors, body, "    ")
    out += body
    out.append("    return tuple(path)")
    out.append("")
    out += render_requires(checked, r)
    out += render_enabled(checked, r, "state_enabled",
                          "Which conditional states exist under these hypers.", spec.states)
    for s in (*spec.states, *spec.scalars, *spec.factored):
        out.append(f"def {ident(s.name, 'init_')}(h, _p):")
        out += _hyper_prologue(checked, "    ", [s.init])
        out.append(f"    return {r.expr(s.init)}  # line {s.span.line}")
        out.append("")
    return "\n".join(out)


def _mentions(e: S.Expr, names: set[str]) -> bool:
    return any(isinstance(n, S.Name) and n.id in names for n in S.walk_expr(e))


def _render_decide_block(stmts, r: _AstRenderer, tensors: set[str], out: list[str],
                         indent: str) -> None:
    """Host statements and ifs only: elementwise values cannot influence a decision, and
    tracks influence nothing."""
    for stmt in stmts:
        if isinstance(stmt, S.Track):
            continue
        if isinstance(stmt, S.Assign):
            if len(stmt.targets) > 1 and isinstance(stmt.value, S.Tuple):
                pairs = list(zip(stmt.targets, stmt.value.items, strict=True))
            else:
                pairs = [(", ".join(stmt.targets), stmt.value)]
            # Items are judged one by one: in `a, b = g, lr` only b is a host value.
            host = [(t, v) for t, v in pairs if not _mentions(v, tensors)]
            for target, value in pairs:
                names = target.split(", ")
                if (target, value) in host:
                    tensors.difference_update(names)
                else:
                    tensors.update(names)
            if host:
                targets = ", ".join(", ".join(ident(n) for n in t.split(", ")) for t, _ in host)
                values = ", ".join(r.expr(v) for _, v in host)
                out.append(f"{indent}{targets} = {values}  "
                           f"{line_comment(stmt.span.line, r.notes)}")
            continue
        n = len(stmt.branches)
        before = set(tensors)
        after: set[str] = set()
        for i, (cond, body) in enumerate(stmt.branches):
            word = "if" if i == 0 else "elif"
            out.append(f"{indent}{word} _truth({r.expr(cond)}):  "
                       f"{line_comment(cond.span.line, r.notes)}")
            out.append(f"{indent}    path.append({i})")
            branch = set(before)
            _render_decide_block(body, r, branch, out, indent + "    ")
            after |= branch
        out.append(f"{indent}else:")
        out.append(f"{indent}    path.append({n})")
        branch = set(before)
        _render_decide_block(stmt.orelse or (), r, branch, out, indent + "    ")
        after |= branch
        tensors.clear()
        tensors.update(after)


def render_host_args(program: Program) -> list[str]:
    """The lines of ``def host_args(h, t)`` for a hoisted program; with scalar states,
    also ``def host_step(h, t)``: the same arguments and the scalar states' new values, in
    one pass over the prologue (``h`` holds the per-parameter values: see optdsl.stages)."""
    out = _host_function(program, "host_args",
                         "The kernel's scalar arguments for this step, in float64.",
                         program.kernel_args, None)
    if program.scalar_outputs:
        names = tuple(name for name, _ in program.scalar_outputs)
        out += [""] + _host_function(program, "host_step",
                                     "The kernel's scalar arguments, and the scalar states' "
                                     "new values, in float64.",
                                     tuple(v for _, v in program.scalar_outputs), names)
    return out


def _host_function(program: Program, name: str, doc: str, returns, keys) -> list[str]:
    """``def NAME(h, t)``: the host prologue, returning ``returns`` as a tuple; with
    ``keys`` (scalar state names), the kernel arguments and a dict of ``returns``."""
    notes = dict(program.notes)
    out = [f"def {name}(h, t):", f'    """{doc}"""']
    names, last = {}, None
    # Inputs (hypers, t, constants) first, then the arithmetic grouped by source line.
    leaves = [i for i in program.host if not i.args]
    for ins in leaves + [i for i in program.host if i.args]:
        v = f"x{ins.out.id}"
        names[ins.out.id] = v
        a = [names[x.id] for x in ins.args]
        if ins.span is not None and ins.span.line != last:
            out.append("    " + line_comment(ins.span.line, notes))
            last = ins.span.line
        if ins.op == "const":
            rhs = f"_f({number(ins.attr)})" if isinstance(ins.attr, float) \
                else constant(ins.attr)
        elif ins.op == "hyper":
            info_key = quoted_ident(ins.attr)
            if ins.out.type.elem == "tuple":
                rhs = f"tuple(map(_f, h[{info_key}]))"
            elif ins.out.type.elem == "float":
                rhs = f"_f(h[{info_key}])"
            else:
                rhs = f"h[{info_key}]"
        elif ins.op == "step":
            rhs = "_f(t)"
        elif ins.op == "scalar":  # a per-parameter value the runtime puts in h
            wrap = "bool" if ins.out.type.elem == "bool" else "_f"
            rhs = f"{wrap}(h[{quoted_scalar(ins.attr)}])"
        elif ins.op == "index":
            rhs = f"{a[0]}[{int(ins.attr)}]"
        elif ins.op == "where":
            rhs = f"({a[1]} if {a[0]} else {a[2]})"
        elif ins.op in ("eq", "ne"):
            rhs = f"_ops.apply({ins.op!r}, {', '.join(a)})"
        elif ins.op == "rsqrt":
            rhs = f"_ops.rsqrt({a[0]})"
        else:
            rhs = f"_np.{UFUNC[ins.op]}({', '.join(a)})"
        out.append(f"    {v} = {rhs}")
    if keys is None:
        ret = "".join(f"{names[v.id]}, " for v in returns)
        out.append(f"    return ({ret})")
    else:
        args = "".join(f"{names[v.id]}, " for v in program.kernel_args)
        ret = "".join(f"{quoted_ident(k)}: {names[v.id]}, " for k, v in zip(keys, returns,
                                                                           strict=True))
        out.append(f"    return ({args}), {{{ret}}}")
    return out
