"""Extra kernel outputs: diagnostics a step can ask its kernel to write in the same pass.

``CompiledSpec.kernel(backend, path, extras)`` takes a tuple of requests:

- ``"track"``: every ``track NAME = EXPR`` statement the path reaches, as the output
  ``track:NAME``;
- ``"update"``: ``diag:update``, the step's change of the parameter, final p - loaded p;
- ``"dlr:HYPER"``: ``dlr:HYPER``, ∂(final p)/∂HYPER, for a float hyper the step is affine
  in (:mod:`optdsl.affine`), e.g. ``"dlr:lr"`` for hypergradient descent.

Each output is elementwise and parameter-shaped (a host value is broadcast), stored in the
parameter's dtype, and named ``KIND:NAME``: never a spec name, so the runtime can tell
them from states, and rendered into generated code by :func:`optdsl.render.buffer_ident`.
Without extras nothing here runs, and the kernel is exactly the one without diagnostics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .affine import add_derivative
from .checker import CheckedSpec
from .errors import OptdslError
from .ir import HOST_FLOAT, TENSOR_FLOAT, Instr, Program, Var
from .lower import Path, lower

Extras = tuple[str, ...]
_REQUEST = re.compile(r"(track|update|dlr:[A-Za-z_][A-Za-z0-9_]*)\Z")


def normalize(extras: Iterable[str] | str) -> Extras:
    """The requests sorted and without repeats (a cache key); a lone string is one
    request. Raises OptdslError for a request that is none of the above."""
    if isinstance(extras, str):
        extras = (extras,)
    out = set()
    for request in extras:
        if not isinstance(request, str) or not _REQUEST.match(request):
            raise OptdslError(f"unknown kernel extra {request!r}; the extras are 'track', "
                              "'update' and 'dlr:HYPER' (e.g. 'dlr:lr')")
        out.add(request)
    return tuple(sorted(out))


def lower_with_extras(checked: CheckedSpec, path: Path, extras: Extras) -> Program:
    """``lower(checked, path)`` with the outputs ``extras`` (normalised) ask for."""
    program = lower(checked, path, tracks="track" in extras)
    for request in extras:
        if request.startswith("dlr:"):
            program = add_derivative(program, checked, request[4:])
    if "update" in extras:
        program = add_update(program)
    return program


def add_update(program: Program) -> Program:
    """``program`` with the output ``diag:update`` = final p - loaded p (exactly 0 where
    the path leaves p as it is, even where p is inf or nan)."""
    body = list(program.body)
    ids = max((i.out.id for i in body), default=-1) + 1
    final = dict(program.outputs).get("p")
    if final is None:
        zero = Var(ids, HOST_FLOAT)
        body.append(Instr(zero, "const", (), 0.0))
        update = Instr(Var(ids + 1, TENSOR_FLOAT, "update"), "copy", (zero,))
    else:
        loaded = next(i.out for i in body if i.op == "load" and i.attr == "p")
        span = next(i.span for i in body if i.out.id == final.id)
        update = Instr(Var(ids, TENSOR_FLOAT, "update"), "sub", (final, loaded), None, span)
    body.append(update)
    return program.with_(body=tuple(body),
                         outputs=(*program.outputs, ("diag:update", update.out)))
