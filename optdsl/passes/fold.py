"""Constant folding: host operations on constants become one constant.

Folding computes with :func:`optdsl.ops.apply` in float64, the same arithmetic the host
prologue would run, so folding never changes a result. ``where`` with a constant
condition picks its branch, for tensors too (a host branch of an elementwise ``where``
becomes a ``copy`` that fills the tensor, so the value keeps its type).
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ir import Instr, Program, Var
from ._rewrite import substitute


def fold_constants(program: Program) -> Program:
    consts: dict[int, object] = {}
    mapping: dict[int, Var] = {}
    out: list[Instr] = []
    for ins in program.body:
        args = tuple(mapping.get(a.id, a) for a in ins.args)
        if ins.op == "const":
            consts[ins.out.id] = ins.attr
        elif ins.op == "where" and args[0].id in consts:
            chosen = args[1] if consts[args[0].id] else args[2]
            if chosen.type == ins.out.type:
                mapping[ins.out.id] = chosen
                continue
            # where(True, lr, p) is elementwise: keep it so, filled with the host value
            out.append(Instr(ins.out, "copy", (chosen,), None, ins.span))
            continue
        elif (ins.op not in ("load", "hyper", "step", "index", "copy") and args
              and all(a.id in consts for a in args) and not ins.out.type.is_tensor):
            value = ops.apply(ins.op, *(_host(consts[a.id]) for a in args))
            value = bool(value) if ins.out.type.elem == "bool" else float(value)
            consts[ins.out.id] = value
            out.append(Instr(ins.out, "const", (), value, ins.span))
            continue
        out.append(Instr(ins.out, ins.op, args, ins.attr, ins.span))
    body, outputs = substitute(tuple(out), program.outputs, mapping)
    _, scalars = substitute((), program.scalar_outputs, mapping)
    return program.with_(body=body, outputs=outputs, scalar_outputs=scalars)


def _host(value):
    if isinstance(value, (bool, str)):
        return value
    return np.float64(value)
