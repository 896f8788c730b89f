"""Generated host code for a schedule: one Python function per spec, run once per
``sched.step()`` for each param group. Everything in a schedule is a host scalar, so the
whole update block renders as straight Python (``if``/``elif``/``else`` included) over
``numpy.float64``, with the op table of :mod:`optdsl.ops`.

The runtime passes the group values the schedule reads (``lr`` and each ``group``
declaration, already resolved to a key or a tuple element of the param group) as one dict,
and writes back what ``schedule_step`` returns.
"""

from __future__ import annotations

from . import syntax as S
from .checker import SCHEDULE_ASSIGNABLE, SCHEDULE_BUILTINS, SCHEDULE_GROUP_VALUES, CheckedSpec
from .hostcode import (
    _AstRenderer,
    _hyper_prologue,
    _names_in,
    render_enabled,
    render_requires,
)
from .render import ident, quoted_ident
from .syntax import line_comment

# Operators that numpy.float64 scalars compute with the same ufunc as the op table, through
# Python's operator protocol (about ten times cheaper per operation than a ufunc call).
_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "pow": "**",
              "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


class _ScalarRenderer(_AstRenderer):
    """A schedule's expressions: every value is a ``numpy.float64`` (or a bool or string),
    so arithmetic and comparisons are written as operators, which compute exactly what the
    ufuncs do; ``a if c else b`` evaluates only the side it picks."""

    def op(self, op: str, operands: list[S.Expr]) -> str:
        if op in _OPERATORS and len(operands) == 2:
            a, b = (self.expr(o) for o in operands)
            return f"({a} {_OPERATORS[op]} {b})"
        if op == "neg":
            return f"(-{self.expr(operands[0])})"
        return super().op(op, operands)

    def expr(self, e: S.Expr) -> str:
        if isinstance(e, S.IfExp):
            return (f"({self.expr(e.body)} if _truth({self.expr(e.test)}) else "
                    f"{self.expr(e.orelse)})")
        return super().expr(e)


def render_schedule_module(checked: CheckedSpec) -> str:
    spec = checked.spec
    r = _ScalarRenderer(checked)
    used = _names_in(spec.body)
    written = _assigned(spec.body)
    declared = [g.name for g in spec.groups]
    groups = [n for n in (*SCHEDULE_GROUP_VALUES, *declared) if n in used or n in written]
    builtins = [n for n in SCHEDULE_BUILTINS if n in used]
    out = ["USED_BUILTINS = (" + "".join(f"{quoted_ident(n)}, " for n in builtins) + ")",
           "", "",
           "def schedule_step(h, epoch, base_lr, metric, group, state):",
           '    """New group values and schedule state for one step of one group."""']
    out += _hyper_prologue(checked, "    ", spec.body)
    for name in SCHEDULE_BUILTINS:
        if (name in used or name in written) and name not in SCHEDULE_GROUP_VALUES:
            out.append(f"    {ident(name)} = _f({name})")
    for name in groups:
        out.append(f"    {ident(name)} = _f(group[{quoted_ident(name)}])")
    for s in spec.states:
        out.append(f"    {ident(s.name)} = state[{quoted_ident(s.name)}]")
    _render_block(spec.body, r, out, "    ")
    returned = [n for n in (*groups, *SCHEDULE_ASSIGNABLE) if n in written]
    ret_groups = ", ".join(f"{quoted_ident(n)}: {ident(n)}" for n in dict.fromkeys(returned))
    ret_state = ", ".join(f"{quoted_ident(s.name)}: {ident(s.name)}" for s in spec.states)
    out.append(f"    return {{{ret_groups}}}, {{{ret_state}}}")
    out.append("")
    out.append("def schedule_init(h):")
    out.append('    """The schedule state of one group before its first step."""')
    out += _hyper_prologue(checked, "    ", [s.init for s in spec.states])
    items = ", ".join(f"{quoted_ident(s.name)}: _f({r.expr(s.init)})" for s in spec.states)
    out.append(f"    return {{{items}}}")
    out.append("")
    out += render_enabled(checked, r, "group_enabled",
                          "Which declared group values this schedule uses under these hypers.",
                          spec.groups)
    out += render_requires(checked, r, extra=("epoch",))
    return "\n".join(out)


def _assigned(stmts) -> set[str]:
    names: set[str] = set()
    for stmt in stmts:
        if isinstance(stmt, S.Assign):
            names.update(stmt.targets)
        else:
            for _, body in stmt.branches:
                names |= _assigned(body)
            names |= _assigned(stmt.orelse or ())
    return names


def _render_block(stmts, r: _AstRenderer, out: list[str], indent: str) -> None:
    if not stmts:
        out.append(f"{indent}pass")
    for stmt in stmts:
        if isinstance(stmt, S.Assign):
            targets = ", ".join(ident(t) for t in stmt.targets)
            out.append(f"{indent}{targets} = {r.expr(stmt.value)}  "
                       f"{line_comment(stmt.span.line, r.notes)}")
            continue
        for i, (cond, body) in enumerate(stmt.branches):
            word = "if" if i == 0 else "elif"
            out.append(f"{indent}{word} _truth({r.expr(cond)}):  "
                       f"{line_comment(cond.span.line, r.notes)}")
            _render_block(body, r, out, indent + "    ")
        if stmt.orelse is not None:
            out.append(f"{indent}else:")
            _render_block(stmt.orelse, r, out, indent + "    ")
