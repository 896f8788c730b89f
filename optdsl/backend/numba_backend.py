"""The numba backend: one compiled loop per kernel, each element's whole update in registers.

The template (``codegen/numba.py.j2``) renders the update as scalar code in a loop over
``[start, stop)`` (``update_serial``, which LLVM vectorizes), and ``update_parallel``, a
``numba.prange`` over one contiguous range per thread, each running that loop. Short
buffers run the serial one (:data:`PARALLEL_MIN_ELEMENTS`). Nothing parameter-sized or
chunk-sized is allocated, and each element of each buffer is read and written once.

Numerics match the NumPy backend bit for bit for every op but the transcendental ones
(exp, log, pow, cos, sin, tanh, which call the C library where NumPy may use its own
SIMD code: a few ulp apart). Float constants and host arguments reach the loop as
operands of the buffers' type, so float32 buffers compute in float32, as they do in NumPy
with its weak Python-float literals; each op below is written to give NumPy's ufunc's
result, signed zeros and NaN included (the ufunc names are in :data:`optdsl.ops.UFUNC`).

numba is imported on first use, not with optdsl. Compiled code is cached on disk by
numba (``cache=True``) next to the module's file in the optdsl cache directory, so a
second process pays no JIT time. ``Kernel.stats["compile_seconds"][dtype.str]`` adds up
the first call of each twin for that dtype, made on an empty range before the work: JIT
compiling, or loading from numba's cache (plus numba's own start-up, some tenths of a
second, when it is the process's first numba call); ``stats["cache_hit"]`` says whether
every twin compiled so far came from the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import textwrap
import threading
import time
import types
from functools import cache
from typing import Any

import numpy as np

from .. import cache as disk_cache
from ..errors import InternalCompilerError
from ..hostcode import render_host_args
from ..ir import Program
from ..ops import quiet
from ..render import buffer_ident, ident, number
from ..syntax import line_comment
from . import Backend, Kernel, ScalarCode, pool, register, template

# Below this many elements the serial twin runs even when threads are free: waking
# numba's threads (its OpenMP layer here) costs 10-15 us, more than a second core saves on
# a short loop. Measured for Adam on float32 on a 2-core machine, best of 1000 whole-buffer
# calls, serial / 2 threads: 8Ki 8 / 16 us, 16Ki 12-17 / 16-27, 32Ki 21-30 / 22-26,
# 64Ki 36-37 / 34, 128Ki 68-74 / 50-52, 256Ki 132-146 / 77-89 (two runs).
PARALLEL_MIN_ELEMENTS = 1 << 16

# The statement (or statements) of each IR op, computing in the operands' type as NumPy's
# ufunc does. {o} is the result's name, {0} {1} {2} the operands', {zero} {one} constants
# of the buffers' type. Where NumPy's result depends on more than the C operator (signed
# zeros, NaN), the expression spells out NumPy's rule.
_FORMAT = {
    "add": "{o} = {0} + {1}",
    "sub": "{o} = {0} - {1}",
    "mul": "{o} = {0} * {1}",
    "div": "{o} = {0} / {1}",
    # np.remainder: fmod (exact), moved into the divisor's sign; a zero takes its sign.
    "mod": ("{o} = _np.fmod({0}, {1})",
            "{o} = {o} + {1} if {o} != {zero} and ({1} < {zero}) != ({o} < {zero}) else "
            "({o} if {o} != {zero} else _math.copysign({zero}, {1}))"),
    "pow": "{o} = {0} ** {1}",
    # np.minimum / np.maximum: NaN if either is NaN; of two equal values, the second
    # (so minimum(0.0, -0.0) is -0.0, as NumPy gives).
    "min": "{o} = {0} if {0} < {1} or {0} != {0} else {1}",
    "max": "{o} = {0} if {0} > {1} or {0} != {0} else {1}",
    "neg": "{o} = -{0}",
    "sqrt": "{o} = _math.sqrt({0})",
    "rsqrt": "{o} = {one} / _math.sqrt({0})",  # two roundings, as ops.rsqrt
    "exp": "{o} = _math.exp({0})",
    "log": "{o} = _math.log({0})",
    "abs": "{o} = abs({0})",
    # np.sign: +0.0 for both zeros, NaN for NaN.
    "sign": "{o} = {one} if {0} > {zero} else (-{one} if {0} < {zero} else "
            "({zero} if {0} == {zero} else {0}))",
    "floor": "{o} = _np.floor({0})",
    "cos": "{o} = _math.cos({0})",
    "sin": "{o} = _math.sin({0})",
    "tanh": "{o} = _math.tanh({0})",
    "lt": "{o} = {0} < {1}",
    "le": "{o} = {0} <= {1}",
    "gt": "{o} = {0} > {1}",
    "ge": "{o} = {0} >= {1}",
    "eq": "{o} = {0} == {1}",
    "ne": "{o} = {0} != {1}",
    "and": "{o} = {0} and {1}",
    "or": "{o} = {0} or {1}",
    "not": "{o} = not {0}",
    "where": "{o} = {1} if {0} else {2}",
    "copy": "{o} = {0}",
}


def _template():
    return template("numba.py.j2")


class _Constants:
    """The float constants the loop uses, each passed once as an operand ``kN``."""

    def __init__(self):
        self.names: dict[str, str] = {}  # rendered value -> operand name

    def __call__(self, value: float) -> str:
        text = number(value)  # "-0.0" and "0.0" stay apart; NaN is one constant
        if text not in self.names:
            self.names[text] = f"k{len(self.names)}"
        return self.names[text]


def _wrap(names: list[str], indent: int) -> str:
    """Arguments, a few to a line, below a ``def`` or a call that opens a parenthesis."""
    return "\n".join(textwrap.wrap(", ".join(names), 90 - indent, initial_indent=" " * indent,
                                   subsequent_indent=" " * indent))


def _numba():
    import numba

    return numba


@cache
def _importable() -> bool:
    try:
        _numba()
    except Exception:  # not installed, or built for another NumPy: the backend is off
        return False
    return True


class NumbaBackend(Backend):
    name = "numba"
    priority = 10  # above numpy: backend=None takes numba for NumPy arrays when installed
    parallel = True

    def available(self) -> bool:
        return _importable()

    def accepts(self, array: Any) -> bool:
        # float16 and long double have no fast scalar arithmetic in numba: NumPy's backend
        # keeps them.
        return isinstance(array, np.ndarray) and array.dtype in (np.float32, np.float64)

    def reduce(self, kind: str, x: Any) -> float:
        """A reduction of a float32 or float64 buffer on numba's threads
        (:mod:`optdsl.backend.numba_reduce`); other dtypes and small buffers as the
        default does."""
        if not self.accepts(x) or x.shape[0] < PARALLEL_MIN_ELEMENTS:
            return super().reduce(kind, x)
        from . import numba_reduce

        threads = min(pool.num_threads(), _numba().config.NUMBA_NUM_THREADS)
        with _PARALLEL_LOCK:
            _numba().set_num_threads(threads)
            if kind == "maxabs":
                return float(numba_reduce.maxabs_of(x))
            return float(numba_reduce.sum_of(x, kind == "sumsq"))

    def render(self, program: Program, *, kind: str = "optimizer",
               path: tuple[int, ...] = ()) -> str:
        if not program.hoisted:
            raise InternalCompilerError("numba backend needs a hoisted IR")
        from .. import __version__

        notes = dict(program.notes)
        constant = _Constants()
        code = ScalarCode(program, lambda value: repr(bool(value))
                          if isinstance(value, bool) else constant(value))
        args, operand = code.args, code.operand

        def op(ins) -> list[str]:
            if ins.op not in _FORMAT:
                raise InternalCompilerError(f"numba backend cannot render op {ins.op!r}")
            lines = _FORMAT[ins.op]
            lines = (lines,) if isinstance(lines, str) else lines
            named = {"o": f"x{ins.out.id}"}
            if any("{zero}" in line for line in lines):
                named["zero"] = constant(0.0)
            if any("{one}" in line for line in lines):
                named["one"] = constant(1.0)
            operands = [operand(a) for a in ins.args]
            return [line.format(*operands, **named) for line in lines]

        body = code.body(lambda line: line_comment(line, notes),
                         lambda ins: [f"x{ins.out.id} = {buffer_ident(ins.attr, 'c_')}[i]"], op)
        outputs = [name for name, _ in program.outputs]
        stores = [f"{buffer_ident(name, 'c_')}[i] = {operand(var)}"
                  for name, var in program.outputs]
        buffers = list(program.loads) + [n for n in outputs if n not in program.loads]
        floats = [args[v.id] for v in program.kernel_args if v.type.elem == "float"]
        ops = [f"T({a})" if a in floats else a for a in args.values()]
        ops += [f"T({text})" for text in constant.names]
        scalars = [*args.values(), *constant.names.values()]
        params = ["start", "stop", *(buffer_ident(b, "b_") for b in buffers), *scalars]
        call = ["lo", "min(lo + per, stop)", *(buffer_ident(b, "b_") for b in buffers),
                *scalars]
        return _template().render(
            version=__version__, kind=kind, name=ident(program.name, ""), path=list(path),
            buffers=buffers, outputs=outputs, host_args="\n".join(render_host_args(program)),
            args=list(args.values()), operands=ops, body=body, stores=stores,
            params=_wrap(params, 8), parallel_params=_wrap(["parts", *params], 8),
            call=_wrap(call, 12))

    def build(self, source: str, name: str) -> Kernel:
        module = _load(source)
        stats: dict[str, Any] = {"compile_seconds": {}, "cache_hit": False}
        step = getattr(module, "host_step", None)
        return Kernel(source, quiet(module.host_args), _runner(module, stats), module.BUFFERS,
                      module.OUTPUTS, module.SCRATCH, stats,
                      host_step=quiet(step) if step else None)


# --- loading: from a file numba can cache against, else from text ------------------------

_MODULES: dict[tuple[str, bool], types.ModuleType] = {}


def _load(source: str) -> types.ModuleType:
    """The generated module, imported from ``<cache dir>/numba/<digest>.py`` so numba's
    ``cache=True`` has a file to key on, or executed from text when the disk cache is off
    or unwritable. Loaded once per process for each source."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:32]
    directory = disk_cache.cache_dir()
    path = directory / "numba" / f"k{digest}.py" if directory is not None else None
    if path is not None and not _holds(path, source):
        # Only a missing or different file is written: numba's cache is keyed on the
        # file's mtime, so rewriting an identical file would throw the compiled code away.
        disk_cache.write_atomically(path, source)
    on_disk = path is not None and _holds(path, source)
    if path is not None and not on_disk:
        try:  # a failed write leaves nothing behind, not even our directory
            path.parent.rmdir()
        except OSError:
            pass
    key = (digest, on_disk)
    if key in _MODULES:
        return _MODULES[key]
    # A fixed name per source: numba's cache refers to the module by name, and the next
    # process registers the same name before it loads from the cache.
    modname = f"optdsl.generated.numba_{digest}"
    if on_disk:
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[modname]
            raise
    else:
        module = types.ModuleType(modname)
        exec(compile(source, f"<optdsl {modname}>", "exec"), module.__dict__)  # noqa: S102
    _MODULES[key] = module
    return module


def _holds(path, source: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == source
    except (OSError, UnicodeDecodeError):
        return False


# --- running -----------------------------------------------------------------------------

# numba's workqueue threading layer aborts the process if two threads launch parallel
# loops at once; whole-buffer launches take turns (each uses every thread anyway).
_PARALLEL_LOCK = threading.Lock()
_FIRST_CALL_LOCK = threading.Lock()


def _runner(module: types.ModuleType, stats: dict[str, Any]):
    """``Kernel.run``: ``run(n, *buffers, args, scratch, chunk, start=0, stop=None)``.

    A call over the whole buffer (the runtime's, since this backend is ``parallel``) runs
    the parallel twin on ``optdsl.num_threads()`` of numba's threads once ``n`` reaches
    :data:`PARALLEL_MIN_ELEMENTS`. A call over part of it comes from a caller that splits
    the work across its own threads (``pool.run``), so it runs serially, without the GIL.
    ``scratch`` and ``chunk`` are ignored.
    """
    parallel, serial, operands = module.update_parallel, module.update_serial, module.operands
    n_buffers = len(module.BUFFERS)
    compiled: set[tuple[str, bool]] = set()
    numba = _numba()
    max_threads = numba.config.NUMBA_NUM_THREADS

    def first_call(fn, buffers, scalars) -> None:
        # Compile (or load from numba's cache) on an empty range, timed apart from the work.
        with _FIRST_CALL_LOCK:
            key = (buffers[0].dtype.str, fn is parallel)
            if key in compiled:
                return
            begin = time.perf_counter()
            fn(*((1,) if fn is parallel else ()), 0, 0, *buffers, *scalars)
            seconds = time.perf_counter() - begin
            per_dtype = stats["compile_seconds"]
            per_dtype[key[0]] = per_dtype.get(key[0], 0.0) + seconds
            hits = sum(sum(f.stats.cache_hits.values()) for f in (parallel, serial))
            misses = sum(sum(f.stats.cache_misses.values()) for f in (parallel, serial))
            stats["cache_hit"] = hits > 0 and misses == 0
            compiled.add(key)

    def run(n: int, *rest) -> None:
        buffers = rest[:n_buffers]
        start = rest[n_buffers + 3] if len(rest) > n_buffers + 3 else 0
        stop = rest[n_buffers + 4] if len(rest) > n_buffers + 4 else None
        stop = n if stop is None else stop
        if stop <= start or not buffers:
            return
        dtype = buffers[0].dtype
        scalars = operands(rest[n_buffers], dtype.type)
        threads = 1
        if start == 0 and stop == n and n >= PARALLEL_MIN_ELEMENTS:
            threads = min(pool.num_threads(), max_threads)
        if (dtype.str, threads > 1) not in compiled:
            first_call(parallel if threads > 1 else serial, buffers, scalars)
        if threads == 1:
            serial(start, stop, *buffers, *scalars)
            return
        with _PARALLEL_LOCK:
            numba.set_num_threads(threads)  # per launching thread, so set at every launch
            parallel(threads, start, stop, *buffers, *scalars)

    return run


if importlib.util.find_spec("numba") is not None:  # found, not imported
    register(NumbaBackend())
