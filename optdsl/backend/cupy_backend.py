"""The CuPy backend: one fused CUDA kernel per specialisation, for arrays on a GPU.

The template (``codegen/cupy.py.j2``) renders the update as CUDA C++ twice over the same
body: a ``cupy.ElementwiseKernel`` (one launch over a flat buffer or a single tensor), and
a RawKernel that steps many tensors in one launch through a device table of pointers and
sizes, as torch's ``multi_tensor_apply`` does (the runtime uses it for params that are not
flattened). Host scalars are kernel arguments, so a new learning rate recompiles nothing.

Types: the buffers' storage type ``T`` is the params' dtype (float16, bfloat16, float32
or float64); the math type ``F`` is float32 for float16 and bfloat16, else ``T``: narrow
values are widened when loaded and rounded to nearest-even once, when stored. Constants
are cast to ``F`` as NumPy casts its weak Python-float literals, and the kernels compile
with ``--fmad=false``, so float32 and float64 compute op by op as the NumPy backend does
(CuPy also compiles with ``-ftz=true``: float32 subnormals flush to zero on the GPU; and
the CUDA math library's exp, log, pow, sin, cos and tanh may differ from NumPy's by an
ulp or so).

Extra outputs (``track:NAME``, ``diag:update``, ``dlr:HYPER``: :mod:`optdsl.extras`) are
written buffers like p and the states, only never read; in generated code they are named
``bt_NAME``, ``bd_NAME`` and ``bh_NAME`` (:func:`optdsl.render.buffer_ident`).

``cupy`` is imported when a kernel is first built or a CuPy array is first seen, never
with optdsl. Rendering (``Cls.source("cupy")``) needs no GPU; neither does
:func:`kernel_code`, the exact CUDA source CuPy would compile, which the CPU-only tests
compile with NVRTC for several GPU architectures.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import threading
import types
from typing import Any

import numpy as np

from ..arrays import on_device
from ..errors import InternalCompilerError, OptdslError
from ..hostcode import render_host_args
from ..ir import Program
from ..render import buffer_ident, ident, number
from . import Backend, Kernel, ScalarCode, register, template

# Elements one block of the multi-tensor kernel steps, and its threads (torch's
# multi_tensor_apply uses 65536-element chunks too).
MULTI_CHUNK = 65536
MULTI_THREADS = 512
# Threads per block of the ElementwiseKernel (CuPy's default is 128).
BLOCK_SIZE = 256

_SAFE_COMMENT = re.compile(r"[^A-Za-z0-9_ .,()+\-*/%<>=!:\[\]]")


def _cupy():
    import cupy

    return cupy


def _is_cupy_array(array: Any) -> bool:
    # By module name first, so that NumPy users never import cupy.
    module = type(array).__module__
    if not (module == "cupy" or module.startswith("cupy.")):
        return False
    return isinstance(array, _cupy().ndarray)


def _comment(line: int, notes: dict[int, str]) -> str:
    """``// line 12: exp_avg = ...``: the re-rendered statement, with anything but plain
    expression characters replaced (a CUDA comment must not continue onto the next line)."""
    text = notes.get(line)
    if not text:
        return f"// line {line}"
    return f"// line {line}: {_SAFE_COMMENT.sub('?', text)}"


def _constant(value: Any) -> str:
    """A constant operand, in F as NumPy casts its weak literals (double, then rounded)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = number(value)
    if text == "_NAN":
        return "((F)optdsl_nan())"
    if text == "_INF":
        return "((F)optdsl_inf())"
    if text == "(-_INF)":
        return "((F)(-optdsl_inf()))"
    return f"((F){text})"


# The C++ of each IR op; {0} {1} {2} are the operands, {one} the constant 1 in F.
_FORMAT = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "mod": "optdsl_mod({0}, {1})",
    "pow": "pow({0}, {1})",
    "min": "optdsl_min({0}, {1})",
    "max": "optdsl_max({0}, {1})",
    "neg": "-{0}",
    "sqrt": "sqrt({0})",
    "rsqrt": "{one} / sqrt({0})",  # two roundings, as ops.rsqrt
    "exp": "exp({0})",
    "log": "log({0})",
    "abs": "fabs({0})",
    "sign": "optdsl_sign({0})",
    "floor": "floor({0})",
    "cos": "cos({0})",
    "sin": "sin({0})",
    "tanh": "tanh({0})",
    "lt": "{0} < {1}",
    "le": "{0} <= {1}",
    "gt": "{0} > {1}",
    "ge": "{0} >= {1}",
    "eq": "{0} == {1}",
    "ne": "{0} != {1}",
    "and": "{0} && {1}",
    "or": "{0} || {1}",
    "not": "!{0}",
    "where": "{0} ? {1} : {2}",
    "copy": "{0}",
}

NARROW = ("float16", "bfloat16")


def math_dtype(dtype: Any) -> np.dtype:
    """The dtype the kernels compute in for buffers of ``dtype``."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.name in NARROW else dtype


@functools.cache
def _installed() -> bool:
    return importlib.util.find_spec("cupy") is not None


class CupyBackend(Backend):
    name = "cupy"
    device_kind = "cuda"
    priority = 20  # the only backend that accepts CuPy arrays
    parallel = True  # one launch over the whole buffer; the GPU spreads it

    def available(self) -> bool:
        # Installed is enough: rendering and compiling need no GPU; running needs CuPy
        # arrays, which need one. Imported (or blocked with None) says so at once; else
        # the finder is asked once (a replanned step asks, and it costs milliseconds).
        if "cupy" in sys.modules:
            return sys.modules["cupy"] is not None
        return _installed()

    def accepts(self, array: Any) -> bool:
        return _is_cupy_array(array) and array.dtype.name in (*NARROW, "float32", "float64")

    def device(self, array: Any) -> Any:
        return ("cuda", int(array.device.id))

    def math_dtype(self, dtype: Any) -> np.dtype:
        return math_dtype(dtype)

    def render(self, program: Program, *, kind: str = "optimizer",
               path: tuple[int, ...] = ()) -> str:
        if not program.hoisted:
            raise InternalCompilerError("cupy backend needs a hoisted IR")
        from .. import __version__

        notes = dict(program.notes)
        code = ScalarCode(program, _constant)
        args, operand = code.args, code.operand

        def op(ins) -> list[str]:
            if ins.op not in _FORMAT:
                raise InternalCompilerError(f"cupy backend cannot render op {ins.op!r}")
            ctype = "bool" if ins.out.type.elem == "bool" else "F"
            expr = _FORMAT[ins.op].format(*(operand(a) for a in ins.args),
                                          one=_constant(1.0))
            return [f"const {ctype} x{ins.out.id} = {expr};"]

        body = code.body(lambda line: _comment(line, notes),
                         lambda ins: [f"const F x{ins.out.id} = "
                                      f"(F){buffer_ident(ins.attr, 'b_')};"],
                         op)
        outputs = [name for name, _ in program.outputs]
        stores = [f"{buffer_ident(name, 'b_')} = (T)({operand(var)});"
                  for name, var in program.outputs]
        buffers = list(program.loads) + [n for n in outputs if n not in program.loads]
        in_buffers = [b for b in buffers if b not in outputs]
        scalar_kinds = ["b" if v.type.elem == "bool" else "f" for v in program.kernel_args]
        scalar_params = [f"{'bool' if k == 'b' else 'S'} {a}"
                         for k, a in zip(scalar_kinds, args.values(), strict=True)]
        in_params = [f"T {buffer_ident(b, 'b_')}" for b in in_buffers] + scalar_params
        out_params = [f"T {buffer_ident(b, 'b_')}" for b in outputs]
        kernel_name = f"optdsl_{ident(program.name, '')}_" + "_".join(
            str(k).replace("-", "m") for k in path)
        return _template().render(
            version=__version__, kind=kind, name=ident(program.name, ""), path=list(path),
            buffers=buffers, outputs=outputs, in_buffers=in_buffers, out_buffers=outputs,
            scalar_kinds=scalar_kinds, host_args="\n".join(render_host_args(program)),
            kernel_name=kernel_name.rstrip("_"), multi_name=kernel_name.rstrip("_") + "_multi",
            in_params=", ".join(in_params), out_params=", ".join(out_params),
            scalar_params=scalar_params, body=body, stores=stores, multi_chunk=MULTI_CHUNK)

    def build(self, source: str, name: str) -> Kernel:
        module = load_module(source, name)
        runner = _Runner(module)
        step = getattr(module, "host_step", None)
        return Kernel(source, _quiet(module.host_args), runner, module.BUFFERS,
                      module.OUTPUTS, module.SCRATCH, runner.stats, many=runner.many,
                      host_step=_quiet(step) if step else None)


def _nothing(args: tuple) -> None:
    """The launcher of an empty set of tensors."""


def _template():
    return template("cupy.py.j2")


def _quiet(fn):
    from ..ops import quiet

    return quiet(fn)


def load_module(source: str, name: str) -> types.ModuleType:
    """The generated module, executed (it imports only NumPy and optdsl)."""
    module = types.ModuleType(f"optdsl.generated.{name}")
    exec(compile(source, f"<optdsl {name}>", "exec"), module.__dict__)  # noqa: S102
    return module


# --- the CUDA source ---------------------------------------------------------------------

# Storage dtype -> (header defining its C++ type, the type's name), as in CuPy's kernels.
_CTYPES = {"float16": ("cupy/float16.cuh", "float16"),
           "bfloat16": ("cupy/bfloat16.cuh", "bfloat16"),
           "float32": (None, "float"), "float64": (None, "double")}


def _typedefs(dtype: Any) -> str:
    """The include for the storage type, and the typedefs T (storage) and S (scalars)."""
    header, storage = _CTYPES[np.dtype(dtype).name]
    scalar = _CTYPES[math_dtype(dtype).name][1]
    include = f'#include "{header}"\n' if header else ""
    return f"{include}typedef {storage} T;\ntypedef {scalar} S;\n"


def kernel_code(module: types.ModuleType, dtype: Any, index_32_bits: bool = True) -> str:
    """The whole CUDA translation unit CuPy compiles for the ElementwiseKernel of
    ``module`` (a loaded generated module) over contiguous 1-D buffers of ``dtype``: with
    32-bit indexing, as for buffers under 2**31 elements, or 64-bit, as for larger ones.

    Uses CuPy's private ``cupy._core._kernel._get_elementwise_kernel_code`` (CuPy is
    pinned for it); needs no GPU."""
    from cupy._core import _carray, _kernel, _scalar

    cupy = _cupy()
    dtype, mdt = np.dtype(dtype), math_dtype(dtype)
    in_params = _kernel._get_param_info(module.IN_PARAMS, True)
    out_params = _kernel._get_param_info(module.OUT_PARAMS, False)
    params = in_params + out_params + _kernel._get_param_info("CIndexer _ind", False)
    n_in = len(module.IN_BUFFERS)
    in_dtypes = (dtype,) * n_in + tuple(mdt if k == "f" else np.dtype(bool)
                                         for k in module.SCALARS)
    _, _, type_map = _kernel._decide_params_type(in_params, out_params, in_dtypes,
                                                  (dtype,) * len(module.OUT_BUFFERS))
    # _ArgInfo(kind, type, dtype, ndim, c_contiguous, index_32_bits): kinds in CuPy 14.2
    # are 1 for an ndarray, 3 for a scalar and 2 for the indexer.
    array = _kernel._ArgInfo(1, cupy.ndarray, dtype, 1, True, index_32_bits)
    arginfos = [array] * n_in
    arginfos += [_kernel._ArgInfo(3, _scalar.CScalar, mdt if k == "f" else np.dtype(bool),
                                  0, True, True) for k in module.SCALARS]
    arginfos += [array] * len(module.OUT_BUFFERS)
    arginfos.append(_kernel._ArgInfo(2, _carray.Indexer, None, 1, True, index_32_bits))
    code = _kernel._get_elementwise_kernel_code(
        tuple(arginfos), type_map, params, module.OPERATION, module.NAME, module.PREAMBLE)
    return "#include <cupy/carray.cuh>\n" + code


def multi_code(module: types.ModuleType, dtype: Any) -> str:
    """The CUDA translation unit of ``module``'s multi-tensor RawKernel for ``dtype``."""
    return "#include <cupy/carray.cuh>\n" + _typedefs(dtype) + module.PREAMBLE + module.MULTI


# --- running -----------------------------------------------------------------------------

class _Runner:
    """Launches one generated module's kernels; compiled per dtype on first use."""

    def __init__(self, module: types.ModuleType):
        self.module = module
        self.stats: dict[str, Any] = {}
        self._elementwise = None
        self._multi: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._n_buffers = len(module.BUFFERS)
        self._in = [module.BUFFERS.index(b) for b in module.IN_BUFFERS]
        self._out = [module.BUFFERS.index(b) for b in module.OUT_BUFFERS]

    def _scalars(self, args: tuple, dtype: np.dtype) -> list:
        mdt = math_dtype(dtype).type
        return [np.bool_(a) if k == "b" else mdt(a)
                for k, a in zip(self.module.SCALARS, args, strict=True)]

    def elementwise(self):
        if self._elementwise is None:
            with self._lock:
                if self._elementwise is None:
                    m = self.module
                    self._elementwise = _cupy().ElementwiseKernel(
                        m.IN_PARAMS, m.OUT_PARAMS, m.OPERATION, name=m.NAME,
                        preamble=m.PREAMBLE, options=m.OPTIONS, no_return=True)
        return self._elementwise

    def __call__(self, n: int, *rest) -> None:
        """``Kernel.run``: one ElementwiseKernel launch over elements [start, stop)."""
        buffers = rest[: self._n_buffers]
        args = rest[self._n_buffers]
        start = rest[self._n_buffers + 3] if len(rest) > self._n_buffers + 3 else 0
        stop = rest[self._n_buffers + 4] if len(rest) > self._n_buffers + 4 else None
        stop = n if stop is None else stop
        if stop <= start or not buffers:
            return
        if start != 0 or stop != buffers[0].size:
            buffers = [b[start:stop] for b in buffers]
        scalars = self._scalars(args, buffers[0].dtype)
        kernel = self.elementwise()
        with on_device(buffers[0]):
            kernel(*(buffers[i] for i in self._in), *scalars,
                   *(buffers[i] for i in self._out), block_size=BLOCK_SIZE)

    def many(self, tensors: list[list[Any]]):
        """A launcher stepping many tensors in one RawKernel launch: ``tensors`` lists,
        for each tensor, its 1-D contiguous buffers in ``BUFFERS`` order (all of one
        dtype, on one device). The pointer table is built and copied to the GPU here,
        once; the launcher, ``launch(args)``, only launches."""
        cupy = _cupy()
        if not tensors:
            return _nothing
        dtype = tensors[0][0].dtype
        device = tensors[0][0].device.id
        sizes, blocks, starts = [], [], []
        for k, bufs in enumerate(tensors):
            if len(bufs) != self._n_buffers:
                raise OptdslError(f"multi-tensor launch: tensor {k} has {len(bufs)} "
                                  f"buffers, the kernel takes {self._n_buffers}")
            size = bufs[0].size
            for b in bufs:
                if b.dtype != dtype or b.size != size or not b.flags.c_contiguous \
                        or b.device.id != device:
                    raise OptdslError(f"multi-tensor launch: tensor {k}'s buffers differ "
                                      "in dtype, size, layout or device")
            sizes.append(size)
            for lo in range(0, size, MULTI_CHUNK):
                blocks.append(k)
                starts.append(lo)
        if not blocks:
            return _nothing
        pointers = [bufs[j].data.ptr for j in range(self._n_buffers) for bufs in tensors]
        host = np.array(sizes + pointers + blocks + starts, dtype=np.int64)
        with cupy.cuda.Device(device):
            table = cupy.asarray(host)
        return _Launch(self, self._multi_kernel(dtype), dtype, table, len(tensors),
                       len(blocks), tensors)

    def _multi_kernel(self, dtype: np.dtype):
        key = np.dtype(dtype).str
        if key not in self._multi:
            with self._lock:
                if key not in self._multi:
                    self._multi[key] = _cupy().RawKernel(
                        multi_code(self.module, dtype), self.module.MULTI_NAME,
                        options=self.module.OPTIONS)
        return self._multi[key]


class _Launch:
    """One multi-tensor launch, ready to repeat: ``launch(args)``. It holds the tensors'
    buffers, whose addresses its device table holds, so they outlive it."""

    def __init__(self, runner: _Runner, kernel: Any, dtype: np.dtype, table: Any,
                 n_tensors: int, n_blocks: int, tensors: list[list[Any]]):
        self.runner, self.kernel, self.dtype, self.table = runner, kernel, dtype, table
        self.n_tensors = np.int64(n_tensors)
        self.grid, self.block = (n_blocks,), (MULTI_THREADS,)
        self.tensors = tensors

    def __call__(self, args: tuple) -> None:
        with on_device(self.table):
            self.kernel(self.grid, self.block,
                        (self.table, self.n_tensors, *self.runner._scalars(args, self.dtype)))


register(CupyBackend())
