"""Reduce-then-update: splitting a program with per-tensor reductions into passes.

A reduction (``norm(x)``, ``total(x)``, ``mean(x)``, ``maxabs(x)``, ``rms(x)``) lowers to a
``reduce`` op: an elementwise value in, one host number per parameter out. Nothing after it
can run until the whole parameter has been read, so :func:`split` cuts the program at its
reductions into the fewest passes over memory:

- each reduction gets a *level*: 1 + the highest level of the reductions its argument
  depends on (``norm(g)`` is level 1; ``norm(g / norm(g))`` level 2);
- **reduce stage k** computes, in one fused kernel, every value that the level-k reductions
  reduce, and writes each to a scratch buffer ``red:rK`` that the runtime then reduces in
  float64. A reduction of a buffer as it is loaded (``norm(p)``, ``norm(g)``) needs no
  kernel: the runtime reduces the buffer itself. Reduce stages store nothing else;
- the **update** kernel is the whole rule, each reduction replaced by its result: a
  ``scalar`` leaf ``reduce:rK`` that the runtime passes in like a hyper.

Each reduce stage recomputes from the loaded buffers what it needs (a weight decay applied
to p before ``norm(p)``, Adam's moments before LAMB's ``norm(update)``), so no stage writes
a state, and a step with L levels of reductions reads the buffers L + 1 times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InternalCompilerError
from .ir import HOST_FLOAT, Instr, Program, Var


@dataclass(frozen=True)
class Reduction:
    """Reduction ``key`` (``rK``): ``kind`` (sum, sumsq or maxabs) of buffer ``source``,
    a loaded buffer (p, g, a state) or the reduce stage's output ``red:rK``."""

    key: str
    kind: str
    source: str


@dataclass(frozen=True)
class ReduceStage:
    """One pass before the update: ``program`` (None when every reduction in it reads a
    buffer as loaded) writes the values ``reductions`` reduce. After compilation
    ``kernel`` holds the built kernel of ``program``."""

    program: Program | None
    reductions: tuple[Reduction, ...]
    kernel: object = None


def has_reductions(program: Program) -> bool:
    return any(ins.op == "reduce" for ins in program.body)


def split(program: Program) -> tuple[tuple[ReduceStage, ...], Program]:
    """The reduce stages of an unoptimised (lowered) ``program``, in order, and its update
    program. A program without reductions is its own update program."""
    if program.hoisted:
        raise InternalCompilerError("split() takes a lowered program, before the passes")
    level: dict[int, int] = {}
    keys: dict[int, str] = {}  # reduce instr's out id -> its key
    same: dict[tuple, str] = {}  # (kind, argument) -> key: norm(u) and rms(u) share one
    for ins in program.body:
        lv = max((level.get(a.id, 0) for a in ins.args), default=0)
        if ins.op == "reduce":
            if not ins.args[0].type.is_tensor:
                raise InternalCompilerError("a reduction of a host value survived the checker")
            lv += 1
            keys[ins.out.id] = same.setdefault((ins.attr, ins.args[0].id), f"r{len(same)}")
        level[ins.out.id] = lv
    if not keys:
        return (), program
    depth = max(level[i] for i in keys)
    defined = {ins.out.id: ins for ins in program.body}
    stages = []
    for k in range(1, depth + 1):
        outputs: list[tuple[str, Var]] = []
        sources: dict[int, str] = {}
        reductions = []
        for ins in program.body:
            if ins.op != "reduce" or level[ins.out.id] != k:
                continue
            arg = ins.args[0]
            source = sources.get(arg.id)
            if source is None:
                loaded = defined.get(arg.id)
                if loaded is not None and loaded.op == "load":
                    source = loaded.attr
                else:
                    source = f"red:{keys[ins.out.id]}"  # named after its first reduction
                    outputs.append((source, arg))
                sources[arg.id] = source
            reduction = Reduction(keys[ins.out.id], ins.attr, source)
            if reduction not in reductions:
                reductions.append(reduction)
        stage = None
        if outputs:
            stage = _live(_replace_reductions(program, keys, level, below=k), tuple(outputs))
        stages.append(ReduceStage(stage, tuple(reductions)))
    final = _replace_reductions(program, keys, level, depth + 1)
    return tuple(stages), final


def _replace_reductions(program: Program, keys: dict[int, str], level: dict[int, int],
                        below: int) -> Program:
    """``program`` with each reduction of a level under ``below`` read as its result (a
    ``scalar`` leaf), and the others left out (nothing that stage reads needs them)."""
    body = []
    for ins in program.body:
        if ins.op != "reduce":
            body.append(ins)
        elif level[ins.out.id] < below:
            body.append(Instr(Var(ins.out.id, HOST_FLOAT, ins.out.hint), "scalar", (),
                              f"reduce:{keys[ins.out.id]}", ins.span))
    return program.with_(body=tuple(body))


def _live(program: Program, outputs: tuple[tuple[str, Var], ...]) -> Program:
    """A reduce stage: ``outputs`` only, and only the code they need (no stores, no scalar
    state updates, no tracks)."""
    live = {v.id for _, v in outputs}
    body = []
    for ins in reversed(program.body):
        if ins.out.id in live:
            if ins.op == "reduce":  # pragma: no cover - levels make this impossible
                raise InternalCompilerError("a reduce stage needs a later reduction")
            body.append(ins)
            live.update(a.id for a in ins.args)
    return program.with_(body=tuple(reversed(body)), outputs=outputs, scalar_outputs=())


# Elements a NumPy reduction widens to float64 at a time (optdsl.backend.numba_reduce
# sums the same chunks, for the same result).
CHUNK = 131072


def reduce_values(kind: str, x: Any) -> float:
    """A reduction (optdsl.stages) of the 1-D array ``x``, accumulated in float64: ``sum``,
    ``sumsq`` (the sum of squares) or ``maxabs``. NumPy arrays are read a chunk at a time
    (no parameter-sized float64 copy); CuPy arrays are reduced on their device."""
    n = x.shape[0]
    if n == 0:
        return 0.0
    if not isinstance(x, np.ndarray):  # CuPy: one reduction kernel on the device
        from . import arrays

        xp = arrays.module(x)
        if kind == "maxabs":
            return float(xp.abs(x).max())
        wide = x.astype(xp.float64)
        return float(wide.sum() if kind == "sum" else wide.dot(wide))
    if kind == "maxabs":
        return float(np.max(np.abs(x)))
    # No BLAS (ndarray.dot): OpenBLAS's threads spin after a call, and on a small
    # machine they then slow the next numba kernel's threads down several times over.
    total = 0.0
    for lo in range(0, n, CHUNK):
        part = x[lo:lo + CHUNK].astype(np.float64)  # a copy: squared in place below
        if kind == "sumsq":
            np.multiply(part, part, out=part)
        total += float(part.sum())
    return total
