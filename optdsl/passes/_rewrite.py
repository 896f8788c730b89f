"""A helper for passes that replace values: substitute vars in instrs and outputs."""

from __future__ import annotations

from ..ir import Instr, Var


def substitute(instrs, outputs, mapping: dict[int, Var]):
    def sub(v: Var) -> Var:
        while v.id in mapping:
            v = mapping[v.id]
        return v

    new_instrs = tuple(
        Instr(i.out, i.op, tuple(sub(a) for a in i.args), i.attr, i.span) for i in instrs)
    new_outputs = tuple((name, sub(v)) for name, v in outputs)
    return new_instrs, new_outputs
