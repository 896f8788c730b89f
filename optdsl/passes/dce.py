"""Dead-code elimination: drop every value that neither an output nor the kernel reads."""

from __future__ import annotations

from ..ir import Program


def eliminate_dead_code(program: Program) -> Program:
    live = {v.id for _, v in program.outputs + program.scalar_outputs}
    body = []
    for ins in reversed(program.body):
        if ins.out.id in live:
            body.append(ins)
            live.update(a.id for a in ins.args)
    # A kernel argument that only dead code read is dead too, with its host prologue.
    kernel_args = tuple(v for v in program.kernel_args if v.id in live)
    host = []
    for ins in reversed(program.host):
        if ins.out.id in live:
            host.append(ins)
            live.update(a.id for a in ins.args)
    return program.with_(body=tuple(reversed(body)), host=tuple(reversed(host)),
                         kernel_args=kernel_args)
