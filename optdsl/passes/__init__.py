"""IR -> IR passes. Each is a pure function; :data:`PIPELINE` lists them in order.

``run(program, skip=("eliminate_common_subexpressions",))`` switches passes off by name,
which the tests use to show each pass preserves results.
"""

from __future__ import annotations

from ..ir import Program
from .buffers import reuse_buffers
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .fold import fold_constants
from .hoist import hoist_host_scalars

PIPELINE = (
    fold_constants,                   # constant host arithmetic -> one constant
    eliminate_common_subexpressions,  # the same op on the same values -> computed once
    hoist_host_scalars,               # host scalars -> a float64 prologue, once per step
    eliminate_dead_code,              # values nothing reads -> gone
    reuse_buffers,                    # tensor values -> scratch slots / output buffers
)

PASSES = {p.__name__: p for p in PIPELINE}


def run(program: Program, skip: tuple[str, ...] = ()) -> Program:
    """Run the pipeline, leaving out the passes named in ``skip``."""
    for name in skip:
        if name not in PASSES:
            raise ValueError(f"unknown pass {name!r}; passes: {', '.join(PASSES)}")
    for p in PIPELINE:
        if p.__name__ not in skip:
            program = p(program)
    return program


__all__ = ["PIPELINE", "PASSES", "run", "fold_constants", "eliminate_common_subexpressions",
           "hoist_host_scalars", "eliminate_dead_code", "reuse_buffers"]
