"""The CuPy backend's CUDA C++, run on the CPU: built with g++ and called through ctypes.

CI has no GPU. The generated kernel bodies are plain C++ over a few helpers, so g++ can
build them into a loop over host memory (``elementwise``), and the multi-tensor RawKernel
into a loop over its blocks and threads (``raw_kernel``), with a few lines standing in for
CUDA's keywords. Built with ``-O2 -ffp-contract=off`` and no fast-math, float32 and float64
code rounds op by op as NumPy does. float16 storage maps to GCC's ``_Float16``.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

GXX = shutil.which("g++")

# CUDA's keywords and built-in variables, for code run by the loops below.
PROLOGUE = """
#include <math.h>
#include <stdint.h>
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__ __restrict
struct optdsl_dim3 { unsigned int x, y, z; };
static optdsl_dim3 blockIdx, threadIdx, blockDim, gridDim;
typedef _Float16 float16;
"""

_CTYPE = {"float16": "float16", "float32": "float", "float64": "double"}
_BUILD_DIR = Path(tempfile.mkdtemp(prefix="optdsl-cuda-cpu-"))
_LIBS: dict[str, ctypes.CDLL] = {}


def available() -> bool:
    return GXX is not None


def build(source: str) -> ctypes.CDLL:
    """``source`` as a shared library, built once per process for each text."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    if digest not in _LIBS:
        cpp, lib = _BUILD_DIR / f"k{digest}.cpp", _BUILD_DIR / f"k{digest}.so"
        cpp.write_text(source)
        subprocess.run([GXX, "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC",
                        "-o", str(lib), str(cpp)], check=True, capture_output=True, text=True)
        _LIBS[digest] = ctypes.CDLL(str(lib))
    return _LIBS[digest]


def _params(text: str) -> list[tuple[str, str]]:
    """``'T b_g, S a0'`` -> [('T', 'b_g'), ('S', 'a0')]."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        ctype, name = item.split()
        out.append((ctype, name))
    return out


def _scalar_ctype(ctype: str, dtype: np.dtype) -> str:
    if ctype in ("T", "S"):
        return ctype
    return {"bool": "bool", "float32": "float", "float64": "double"}[ctype]


def _ctypes_arg(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, (bool, np.bool_)):
        return ctypes.c_bool(bool(value))
    if isinstance(value, np.float32):
        return ctypes.c_float(float(value))
    if isinstance(value, (float, np.float64)):
        return ctypes.c_double(float(value))
    if isinstance(value, (int, np.integer)):
        return ctypes.c_longlong(int(value))
    raise TypeError(f"cannot pass {type(value).__name__} to a C loop")


def elementwise_source(in_params: str, out_params: str, operation: str, preamble: str,
                       dtype: Any, name: str = "optdsl_loop") -> str:
    """A C++ loop running ``operation`` once per element, as an ElementwiseKernel does:
    each array parameter is a reference to element i, scalars are values."""
    dtype = np.dtype(dtype)
    math = "float" if dtype.itemsize < 4 else _CTYPE[dtype.name]
    args, refs = ["long long n"], []
    for const, params in ((True, _params(in_params)), (False, _params(out_params))):
        for ctype, pname in params:
            if ctype == "T":  # an array: element i by reference
                qual = "const " if const else ""
                args.append(f"{qual}T* _raw_{pname}")
                refs.append(f"    {qual}T &{pname} = _raw_{pname}[i];")
            else:
                args.append(f"{_scalar_ctype(ctype, dtype)} {pname}")
    return (PROLOGUE + f"typedef {_CTYPE[dtype.name]} T;\ntypedef {math} S;\n" + preamble
            + f'\nextern "C" void {name}({", ".join(args)}) {{\n'
            + "  for (long long i = 0; i < n; ++i) {\n" + "\n".join(refs) + "\n"
            + operation + "\n  }\n}\n")


def elementwise(in_params: str, out_params: str, operation: str, preamble: str,
                dtype: Any):
    """``run(*in_args, *out_arrays)``: the loop over contiguous 1-D arrays of ``dtype``
    (all of one size), with ``operation`` applied in place, as an ElementwiseKernel call
    with its arguments in the same order."""
    lib = build(elementwise_source(in_params, out_params, operation, preamble, dtype))
    fn = lib.optdsl_loop
    fn.restype = None

    def run(*args: Any) -> None:
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        n = arrays[0].size if arrays else 0
        for a in arrays:
            if a.dtype != np.dtype(dtype) or a.size != n or not a.flags.c_contiguous:
                raise ValueError("the C loop takes contiguous arrays of one dtype and size")
        fn(ctypes.c_longlong(n), *map(_ctypes_arg, args))

    return run


_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(')


def raw_kernel(code: str, name: str):
    """``launch(grid, block, args)``: a CUDA ``__global__`` function run on the CPU, block
    by block and thread by thread (only for code without barriers or shared memory).
    ``#include`` lines of CuPy's headers are dropped; the code's own typedefs stay."""
    lines = [ln for ln in code.splitlines() if not ln.lstrip().startswith("#include")]
    body = "\n".join(lines)
    if name not in _KERNEL.findall(body):
        raise ValueError(f"no kernel named {name!r}")
    cache: dict[tuple, Any] = {}

    def launch(grid: tuple, block: tuple, args: tuple) -> None:
        signature = tuple(_ctypes_arg(a)._type_ for a in args)
        if signature not in cache:
            ctypes_names = {"P": "void*", "?": "bool", "f": "float", "d": "double",
                            "q": "long long", "l": "long long"}
            params = [f"{ctypes_names[c]} a{k}" for k, c in enumerate(signature)]
            # The kernel takes typed pointers; each void* is cast to what it declares.
            call = ", ".join(f"(decltype(optdsl_arg<{k}>({name})))a{k}"
                             if c == "P" else f"a{k}" for k, c in enumerate(signature))
            source = (PROLOGUE + body + "\n#include <tuple>\n"
                      "template <int K, typename... A> typename std::tuple_element<K, "
                      "std::tuple<A...>>::type optdsl_arg(void (*)(A...));\n"
                      f'extern "C" void optdsl_launch(unsigned int grid, unsigned int block'
                      f'{"".join(", " + p for p in params)}) {{\n'
                      "  gridDim.x = grid; blockDim.x = block;\n"
                      "  for (unsigned int b = 0; b < grid; ++b)\n"
                      "    for (unsigned int t = 0; t < block; ++t) {\n"
                      "      blockIdx.x = b; threadIdx.x = t;\n"
                      f"      {name}({call});\n"
                      "    }\n}\n")
            fn = build(source).optdsl_launch
            fn.restype = None
            cache[signature] = fn
        cache[signature](ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]),
                         *map(_ctypes_arg, args))

    return launch
