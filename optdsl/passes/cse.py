"""Common-subexpression elimination: the same op on the same values is computed once."""

from __future__ import annotations

from ..ir import Instr, Program, Var
from ._rewrite import substitute


def eliminate_common_subexpressions(program: Program) -> Program:
    seen: dict[tuple, Var] = {}
    mapping: dict[int, Var] = {}
    out: list[Instr] = []
    for ins in program.body:
        args = tuple(mapping.get(a.id, a) for a in ins.args)
        # repr keeps 0.0 and -0.0 (and 1 and True) apart as keys
        key = (ins.op, tuple(a.id for a in args), repr(ins.attr), ins.out.type)
        if ins.op != "copy" and key in seen:
            mapping[ins.out.id] = seen[key]
            continue
        seen[key] = ins.out
        out.append(Instr(ins.out, ins.op, args, ins.attr, ins.span))
    body, outputs = substitute(tuple(out), program.outputs, mapping)
    _, scalars = substitute((), program.scalar_outputs, mapping)
    return program.with_(body=body, outputs=outputs, scalar_outputs=scalars)
