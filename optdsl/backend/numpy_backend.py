"""The NumPy backend: a fused, chunked function of in-place ufunc calls.

Each chunk of ``CHUNK`` elements runs the whole update before the next chunk starts, so
temporaries live in chunk-sized scratch that stays in cache and nothing parameter-sized
is ever allocated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InternalCompilerError
from ..hostcode import render_host_args
from ..ir import Program
from ..ops import UFUNC, quiet
from ..render import buffer_ident, ident, number
from ..syntax import line_comment
from . import Backend, Kernel, register, template

# Elements per chunk. Each ufunc call costs about a microsecond of Python, and with
# several threads that part holds the GIL, so chunks must be long; past a few hundred
# KiB per view they fall out of cache. Measured for Adam on 16M float32 parameters on a
# 2-core machine (one run, 1 / 2 threads): 16Ki 56 / 89 ms, 64Ki 45 / 34 ms,
# 128Ki 44 / 26 ms, 512Ki 41 / 25 ms, 1Mi 52 / 46 ms. benchmarks/bench_chunks.py re-measures.
CHUNK = 131072


def _template():
    return template("numpy.py.j2")


def _format(op: str, out: str, args: list[str]) -> str:
    """One IR op as one line of in-place NumPy, writing into ``out``."""
    if op == "copy":
        return f"_np.copyto({out}, {args[0]})"
    if op == "rsqrt":
        return f"_np.sqrt({args[0]}, out={out}); _np.divide(1.0, {out}, out={out})"
    if op == "where":
        cond, a, b = args
        first = "" if b == out else f"_np.copyto({out}, {b}); "
        return f"{first}_np.copyto({out}, {a}, where={cond})"
    if op in UFUNC:
        return f"_np.{UFUNC[op]}({', '.join(args)}, out={out})"
    raise InternalCompilerError(f"numpy backend cannot render op {op!r}")


def _slot_name(slot: str) -> str:
    if ":" in slot:  # in:NAME, out:NAME (NAME may be an extra output's KIND:NAME)
        return buffer_ident(slot.split(":", 1)[1], "c_")
    return slot


class NumpyBackend(Backend):
    name = "numpy"
    priority = 0

    def available(self) -> bool:
        return True

    def accepts(self, array: Any) -> bool:
        return isinstance(array, np.ndarray)

    def render(self, program: Program, *, kind: str = "optimizer",
               path: tuple[int, ...] = ()) -> str:
        if not program.hoisted or program.slots is None:
            raise InternalCompilerError("numpy backend needs a hoisted, buffer-assigned IR")
        from .. import __version__

        slots = dict(program.slots)
        notes = dict(program.notes)
        consts = {i.out.id: i.attr for i in program.host if i.op == "const"}
        args = {v.id: f"a{k}" for k, v in enumerate(program.kernel_args)}

        def operand(v) -> str:
            if v.type.is_tensor:
                return _slot_name(slots[v.id])
            if v.id in consts:
                value = consts[v.id]
                return repr(bool(value)) if isinstance(value, bool) else number(value)
            return args[v.id]

        body, last = [], None
        for ins in program.body:
            if ins.op == "load":
                continue
            if ins.span is not None and ins.span.line != last:
                body.append(line_comment(ins.span.line, notes))  # heads its group of ops
                last = ins.span.line
            body.append(_format(ins.op, _slot_name(slots[ins.out.id]),
                                [operand(a) for a in ins.args]))
        for name, var in program.outputs:
            target = f"out:{name}"
            if slots[var.id] != target:
                body.append(f"_np.copyto({buffer_ident(name, 'c_')}, "
                            f"{_slot_name(slots[var.id])})")
        outputs = [name for name, _ in program.outputs]
        buffers = list(program.loads) + [n for n in outputs if n not in program.loads]
        n_float = len({s for s in slots.values() if s[:1] == "f" and s[1:].isdigit()})
        n_bool = len({s for s in slots.values() if s[:1] == "b" and s[1:].isdigit()})
        return _template().render(
            version=__version__, kind=kind, name=ident(program.name, ""), path=list(path),
            buffers=buffers, outputs=outputs, n_float=n_float, n_bool=n_bool,
            host_args="\n".join(render_host_args(program)),
            args=list(args.values()), body=body)

    def build(self, source: str, name: str) -> Kernel:
        namespace: dict[str, Any] = {"__name__": f"optdsl.generated.{name}"}
        exec(compile(source, f"<optdsl {name}>", "exec"), namespace)  # noqa: S102
        run = namespace["kernel"]
        step = namespace.get("host_step")
        return Kernel(source, quiet(namespace["host_args"]), run, namespace["BUFFERS"],
                      namespace["OUTPUTS"], namespace["SCRATCH"],
                      host_step=quiet(step) if step else None)


register(NumpyBackend())
