"""Host-scalar hoisting: everything that does not touch p, g or a state moves to a host
prologue, computed once per step in float64; the kernel receives the results as arguments.

``lr / (1 - b1 ** t)`` thus becomes one kernel argument. Constants stay inline in the
kernel as re-rendered literals instead of arguments.
"""

from __future__ import annotations

from ..ir import Program


def hoist_host_scalars(program: Program) -> Program:
    if program.hoisted:
        return program
    host = tuple(i for i in program.body if not i.out.type.is_tensor)
    body = tuple(i for i in program.body if i.out.type.is_tensor)
    consts = {i.out.id for i in host if i.op == "const"}
    args, seen = [], set()
    for ins in body:
        for a in ins.args:
            if not a.type.is_tensor and a.id not in consts and a.id not in seen:
                seen.add(a.id)
                args.append(a)
    return program.with_(host=host, body=body, kernel_args=tuple(args), hoisted=True)
