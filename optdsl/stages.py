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

**Row and column values** (factored states, ``row_mean`` and ``col_mean``: Adafactor) are
small arrays, not elementwise kernel values. :func:`split` gathers them, with the host
values they need, into a :class:`FactoredProgram` that :class:`FactoredRun` evaluates on
the host's array module as the reduce stages deliver their results (``row_mean`` and
``col_mean`` are reductions, and count in the levels). Where an elementwise value reads a
row or column value, the kernels load it broadcast into a parameter-sized buffer
``fac:eK``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Any

import numpy as np

from .errors import InternalCompilerError
from .ir import HOST_FLOAT, TENSOR_FLOAT, Instr, Program, Var


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


@dataclass(frozen=True)
class FactoredProgram:
    """The row and column values of a step (factored second moments): every host and
    factored instruction they need, in order, each with its level (the reduce stage after
    which it can run), evaluated on the host's array module by :class:`FactoredRun`.

    ``expands``: ``(buffer, var, level)``, a factored value broadcast to the parameter's
    shape, which kernels read as the buffer ``fac:eK``; ``outputs``: the factored states'
    new values; ``keys``: a reduction's result (by its instruction's out id)."""

    instrs: tuple[Instr, ...]
    levels: tuple[tuple[int, int], ...]
    keys: tuple[tuple[int, str], ...]
    expands: tuple[tuple[str, Var, int], ...]
    outputs: tuple[tuple[str, Var], ...]


def split(program: Program) -> tuple[tuple[ReduceStage, ...], Program, FactoredProgram | None]:
    """The reduce stages of an unoptimised (lowered) ``program``, in order, its update
    program and its factored program (None without row or column values). A program
    without either is its own update program."""
    if program.hoisted:
        raise InternalCompilerError("split() takes a lowered program, before the passes")
    level: dict[int, int] = {}
    keys: dict[int, str] = {}  # reduce instr's out id -> its key
    same: dict[tuple, str] = {}  # (kind, argument) -> key: norm(u) and rms(u) share one
    expands: dict[int, str] = {}  # factored var id -> the buffer it is broadcast into
    for ins in program.body:
        lv = max((level.get(a.id, 0) for a in ins.args), default=0)
        if ins.op == "reduce":
            if not ins.args[0].type.is_tensor:
                raise InternalCompilerError("a reduction of a host value survived the checker")
            lv += 1
            keys[ins.out.id] = same.setdefault((ins.attr, ins.args[0].id), f"r{len(same)}")
        level[ins.out.id] = lv
        if ins.out.type.is_tensor:
            for a in ins.args:
                if a.type.is_factored and a.id not in expands:
                    expands[a.id] = f"fac:e{len(expands)}"
    factored = _factored_program(program, level, keys, expands)
    if not keys and factored is None:
        return (), program, None
    depth = max((level[i] for i in keys), default=0)
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
            stage = _live(_kernel_program(program, keys, level, k, expands), tuple(outputs))
        stages.append(ReduceStage(stage, tuple(reductions)))
    final = _kernel_program(program, keys, level, depth + 1, expands)
    return tuple(stages), final, factored


def _kernel_program(program: Program, keys: dict[int, str], level: dict[int, int],
                    below: int, expands: dict[int, str]) -> Program:
    """``program`` as a kernel runs it: each reduction of a level under ``below`` read as
    its result (a ``scalar`` leaf; the others left out: nothing that stage reads needs
    them), row and column values left out, and where an elementwise value reads one, a
    load of the buffer it is broadcast into."""
    body: list[Instr] = []
    loads: dict[int, Var] = {}
    ids = count(max((i.out.id for i in program.body), default=-1) + 1)
    for ins in program.body:
        if ins.out.type.is_factored:
            continue
        if ins.op == "reduce":
            if level[ins.out.id] < below:
                body.append(Instr(Var(ins.out.id, HOST_FLOAT, ins.out.hint), "scalar", (),
                                  f"reduce:{keys[ins.out.id]}", ins.span))
            continue
        args = []
        for a in ins.args:
            if a.id in expands:
                if a.id not in loads:
                    loads[a.id] = Var(next(ids), TENSOR_FLOAT, a.hint)
                    body.append(Instr(loads[a.id], "load", (), expands[a.id], ins.span))
                a = loads[a.id]
            args.append(a)
        body.append(Instr(ins.out, ins.op, tuple(args), ins.attr, ins.span))
    return program.with_(body=tuple(body), factored_outputs=())


def _factored_program(program: Program, level: dict[int, int], keys: dict[int, str],
                      expands: dict[int, str]) -> FactoredProgram | None:
    roots = [v for v in (*expands, *(v.id for _, v in program.factored_outputs))]
    if not roots:
        return None
    live = set(roots)
    needed = []
    for ins in reversed(program.body):
        if ins.out.id in live and not ins.out.type.is_tensor:
            needed.append(ins)
            if ins.op != "reduce":  # a reduction's result comes from the runtime
                live.update(a.id for a in ins.args)
    needed.reverse()
    defined = {ins.out.id: ins.out for ins in program.body}
    return FactoredProgram(
        tuple(needed), tuple((ins.out.id, level[ins.out.id]) for ins in needed),
        tuple((i, k) for i, k in keys.items()),
        tuple((buffer, defined[i], level[i]) for i, buffer in expands.items()),
        program.factored_outputs)


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


class FactoredRun:
    """One parameter's :class:`FactoredProgram`, evaluated as its results come in: host
    values in float64, row and column values as arrays of ``xp`` (NumPy or CuPy) in the
    shapes of the factored states; see :meth:`advance`."""

    def __init__(self, program: FactoredProgram, h: dict, t: int, states: dict, xp: Any,
                 dtype: Any, shape: tuple[int, ...]):
        self.program, self.h, self.t, self.states = program, h, t, states
        self.xp, self.dtype, self.shape = xp, dtype, shape
        self.levels = dict(program.levels)
        self.keys = dict(program.keys)
        self.values: dict[int, Any] = {}
        self.buffers: dict[str, Any] = {}  # the fac:eK buffers made so far
        self.done = 0  # instructions evaluated so far, in order

    def advance(self, level: int, results: dict[str, Any]) -> None:
        """Evaluate every instruction of level ``level`` or below not yet evaluated
        (``results``: the reductions' results so far, by key)."""
        instrs = self.program.instrs
        while self.done < len(instrs) and self.levels[instrs[self.done].out.id] <= level:
            ins = instrs[self.done]
            self.values[ins.out.id] = self._value(ins, results)
            self.done += 1

    def expanded(self, level: int) -> dict[str, Any]:
        """The ``fac:eK`` buffers of level ``level`` or below: flat, contiguous, the
        parameter's size, in ``dtype``."""
        for buffer, var, lv in self.program.expands:
            if lv <= level and buffer not in self.buffers:  # each made once a step
                full = self.xp.empty(self.shape, self.dtype)
                full[...] = self.values[var.id]  # broadcast, and cast once
                self.buffers[buffer] = full.reshape(-1)
        return self.buffers

    def outputs(self) -> dict[str, Any]:
        return {name: self.values[var.id] for name, var in self.program.outputs}

    def _value(self, ins: Instr, results: dict[str, Any]) -> Any:
        from . import ops

        op = ins.op
        args = [self.values[a.id] for a in ins.args] if op != "reduce" else []
        if op == "const":
            return ins.attr if isinstance(ins.attr, (bool, str)) else np.float64(ins.attr)
        if op == "hyper":
            raw = self.h[ins.attr]
            return tuple(map(np.float64, raw)) if ins.out.type.elem == "tuple" else (
                np.float64(raw) if ins.out.type.elem == "float" else raw)
        if op == "step":
            return np.float64(self.t)
        if op == "scalar":
            key = ins.attr
            if key.startswith("state:") and key[6:] in self.states:
                return self.states[key[6:]]
            return self.h[key]
        if op == "reduce":
            return results[self.keys[ins.out.id]]
        if op == "index":
            return args[0][ins.attr]
        if op == "copy":
            return args[0]
        if not any(a.type.is_factored for a in ins.args):
            value = ops.apply(op, *args)  # host values, as the kernels' prologue computes
            return value[()] if isinstance(value, np.ndarray) else value  # not 0-d arrays
        return factored_op(ins, args)


def factored_op(ins: Instr, args: list) -> Any:
    """An operation on row or column values (arrays of ``xp``), as the runtime and the
    reference interpreter both compute it."""
    from . import ops

    if ins.op == "areduce":
        return _reduce_within(ins.attr, args[0], -2 if ins.out.type.kind == "row" else -1)
    if ins.op == "copy":
        return args[0]
    if ins.op == "where" and np.ndim(args[0]) == 0:  # a host choice: one of the two
        return args[1] if args[0] else args[2]
    # NumPy's functions: CuPy arrays take them too (__array_ufunc__, __array_function__)
    return ops.apply(ins.op, *args)


def factored_mean(kind: str, x: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """``row_mean`` / ``col_mean`` (``kind`` rowmean / colmean) of a param-sized value:
    its mean over the last (the second-to-last) dimension, accumulated in float64, in
    ``dtype``."""
    axis = -1 if kind == "rowmean" else -2
    return x.reshape(shape).mean(axis=axis, dtype=np.float64, keepdims=True).astype(dtype)


def _reduce_within(func: str, x: Any, axis: int) -> Any:
    """A reduction of a row (``axis`` -2) or column (-1) value within each matrix."""
    if func == "total":
        return x.sum(axis=axis, keepdims=True)
    if func == "mean":
        return x.mean(axis=axis, keepdims=True)
    if func == "maxabs":
        return np.abs(x).max(axis=axis, keepdims=True)
    squares = (x * x).sum(axis=axis, keepdims=True)
    if func == "rms":
        squares = squares / x.shape[axis]
    return np.sqrt(squares)
