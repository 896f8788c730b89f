"""The CuPy backend's CUDA C++, checked without a GPU.

- NVRTC compiles every stdlib kernel, both the ``cupy.ElementwiseKernel`` translation unit
  (``kernel_code``: CuPy 14.2's own code generator, for 1-D contiguous buffers) and the
  multi-tensor RawKernel (``multi_code``), for sm_80 and sm_90 with CuPy's own options.
  One NVRTC compile costs 0.07 to 0.09 s, most of it fixed per program (an empty kernel
  takes 0.05 s); the calls
  hold the GIL (two threads ran 24 compiles in 2.2 s against 2.3 s serially) and a forked
  process pool hung, so the set is reduced instead. The path chooses which lines the
  body holds and the dtype only which types those lines convert between, so: every path
  in float32, and each optimizer's default path and its longest path (the most IR
  instructions: every optional buffer and branch at once) in float16, bfloat16 and
  float64: 100 cases of four compiles (two codes, two archs), about 28 s on two cores
  (the whole file takes about 42 s there).
- A deliberately broken body fails to compile, while the same text unbroken compiles.
- The same body, built with g++ into a CPU loop (``tests/cuda_cpu.py``), reproduces the
  NumPy backend bit for bit in float32 and float64 over six steps, driven as the runtime
  drives kernels (path per step, scalar arguments, state initialisation).
- The multi-tensor kernel, emulated block by block on the CPU, gives the same bits as the
  loop run on each tensor separately, through a table built as the template documents
  and through the backend's own ``_Runner.many``.
- ``Cls.source("cupy")`` needs no GPU, and hyperparameter values never appear in it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="the CuPy backend's code checks need cupy "
                           "(pip install 'optdsl[cuda]'); no GPU is needed")

import optdsl  # noqa: E402
from optdsl import hypers as H  # noqa: E402
from optdsl.backend import cupy_backend  # noqa: E402
from optdsl.backend import get as get_backend  # noqa: E402
from optdsl.optim import SGD, SPARSE_ONLY, STDLIB, Adam, load  # noqa: E402
from tests import cuda_cpu  # noqa: E402
from tests.backend.stdlib_cases import CASES, case_id  # noqa: E402

try:
    import ml_dtypes
except ImportError:  # optional: only bfloat16 arrays need it
    ml_dtypes = None

CUPY = get_backend("cupy")
ARCHS = ("sm_80", "sm_90")
NEEDS_ML_DTYPES = pytest.mark.skipif(ml_dtypes is None, reason="bfloat16 needs ml_dtypes "
                                     "(pip install 'optdsl[cuda]')")
needs_gxx = pytest.mark.skipif(not cuda_cpu.available(),
                               reason="running the CUDA C++ on the CPU needs g++")


@pytest.fixture(scope="module", autouse=True)
def _no_disk_cache():
    # Module-scoped, so that the module-scoped fixtures' kernels stay off the disk too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPTDSL_CACHE_DIR", "off")
        yield


def storage_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def module_for(spec, path) -> types.ModuleType:
    source = spec.kernel(CUPY, path).source
    return cupy_backend.load_module(source, f"{spec.name}_{'_'.join(map(str, path))}")


def default_path(cls):
    spec = cls._spec
    return spec.host["decide"](H.resolve(spec.hypers, {}, cls.__name__), 1)


def _path_id(path) -> str:
    return "-".join(str(k) for k in path) or "none"


# --- NVRTC ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nvrtc():
    """``compile(code, options, arch)``: NVRTC to a cubin with the options CuPy uses;
    raises ``CompileException`` on errors. Skips the tests when NVRTC cannot be loaded."""
    from cupy._core import core
    from cupy.cuda import compiler

    def compile_cuda(code: str, options: tuple, arch: str) -> bytes:
        # CuPy appends -ftz=true itself, and --device-as-default-execution-space for NVRTC.
        opts = core.assemble_cupy_compiler_options(options) + (
            "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")
        cubin, _ = compiler._NVRTCProgram(code, "/tmp/optdsl_kernel.cu", (), (),
                                          method="cubin").compile(opts)
        return cubin

    probe = 'extern "C" __global__ void optdsl_probe(float* x) { x[0] = 1.0f; }'
    try:
        compile_cuda(probe, (), "sm_80")
    except compiler.CompileException:
        raise  # NVRTC runs, and rejects valid code: a real failure, not a missing library
    except Exception as exc:  # noqa: BLE001 - any failure to load the library skips
        pytest.skip(f"NVRTC cannot be loaded here: {type(exc).__name__}: {exc}")
    return compile_cuda


def _compile_cases() -> list:
    cases = []
    for name in sorted(STDLIB):
        cls = load(name)
        spec = cls._spec
        for path in spec.paths():
            cases.append(pytest.param(name, path, "float32",
                                      id=f"{name}-{_path_id(path)}-float32"))
        longest = max(spec.paths(), key=lambda p: len(spec.program(p).body))
        for path in dict.fromkeys([default_path(cls), longest]):
            for dtype in ("float16", "bfloat16", "float64"):
                marks = NEEDS_ML_DTYPES if dtype == "bfloat16" else ()
                cases.append(pytest.param(name, path, dtype, marks=marks,
                                          id=f"{name}-{_path_id(path)}-{dtype}"))
    return cases


@pytest.mark.parametrize(("name", "path", "dtype"), _compile_cases())
def test_stdlib_kernels_compile_with_nvrtc(nvrtc, name, path, dtype):
    spec = load(name)._spec
    module = module_for(spec, path)
    dtype = storage_dtype(dtype)
    for code, entry in ((cupy_backend.kernel_code(module, dtype), module.NAME),
                        (cupy_backend.multi_code(module, dtype), module.MULTI_NAME)):
        assert f'extern "C" __global__ void {entry}(' in code
        for arch in ARCHS:
            cubin = nvrtc(code, module.OPTIONS, arch)
            assert entry.encode() in cubin, f"{entry} is not in the {arch} cubin"


@pytest.mark.parametrize("name", sorted(STDLIB))
def test_the_64_bit_index_variant_compiles_too(nvrtc, name):
    """CuPy compiles the 32-bit-index variant (above) for buffers under 2**31 elements
    and this one for larger ones, with the same body."""
    spec = load(name)._spec
    longest = max(spec.paths(), key=lambda p: len(spec.program(p).body))
    module = module_for(spec, longest)
    code = cupy_backend.kernel_code(module, np.float32, index_32_bits=False)
    assert "CIndexer<1, 0>" in code and "CIndexer<1, 1>" in cupy_backend.kernel_code(
        module, np.float32)
    for arch in ARCHS:
        assert module.NAME.encode() in nvrtc(code, module.OPTIONS, arch)


def test_the_compile_cases_cover_every_path_in_float32_and_every_dtype():
    """What the reduction above keeps: all paths in float32, and each optimizer in every
    dtype on its default path (and its longest)."""
    ids = {p.id for p in _compile_cases()}
    for name in STDLIB:
        cls = load(name)
        for path in cls._spec.paths():
            assert f"{name}-{_path_id(path)}-float32" in ids
        for dtype in ("float16", "bfloat16", "float64"):
            assert f"{name}-{_path_id(default_path(cls))}-{dtype}" in ids


# A statement the body may not hold, for each kind of mistake.
BROKEN = {
    "undefined name": ("const F x9999 = optdsl_undefined + x0;",
                       'identifier "optdsl_undefined" is undefined'),
    "pointer as float": ("const F x9999 = &b_p;", "cannot be used to initialize"),
}


@pytest.mark.parametrize("kind", ["elementwise", "multi"])
@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_body_does_not_compile(nvrtc, broken, kind):
    from cupy.cuda.compiler import CompileException

    module = module_for(Adam._spec, default_path(Adam))
    line, message = BROKEN[broken]
    first = "const F x0 = (F)b_p;"  # the body's first line, after which the bad one goes
    assert first in module.OPERATION and first in module.MULTI

    def code(m) -> str:
        if kind == "elementwise":
            return cupy_backend.kernel_code(m, np.float32)
        return cupy_backend.multi_code(m, np.float32)

    bad = types.SimpleNamespace(**vars(module))
    bad.OPERATION = module.OPERATION.replace(first, f"{first}\n{line}", 1)
    bad.MULTI = module.MULTI.replace(first, f"{first}\n    {line}", 1)
    assert line in code(bad) and line not in code(module)
    entry = module.NAME if kind == "elementwise" else module.MULTI_NAME
    assert entry.encode() in nvrtc(code(module), module.OPTIONS, "sm_90")  # not vacuous
    with pytest.raises(CompileException) as info:
        nvrtc(code(bad), module.OPTIONS, "sm_90")
    assert message in str(info.value)


# --- the body on the CPU against the NumPy backend -----------------------------------

# The default of each optimizer, and variants that switch on each of its branches and
# optional states, with non-default numbers (as the numba backend's tests do).
STEPS = 6
SIZE = 257
EXACT_DTYPES = ("float32", "float64")



def assert_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal raw bits: -0.0 is not 0.0, and NaNs must carry the same payload."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    a = np.ascontiguousarray(got).reshape(-1).view(uint)
    b = np.ascontiguousarray(want).reshape(-1).view(uint)
    if not np.array_equal(a, b):
        bad = np.flatnonzero(a != b)
        i = bad[0]
        raise AssertionError(f"{what}: {bad.size} of {a.size} elements differ; first at "
                             f"{i}: got {got.reshape(-1)[i]!r}, want {want.reshape(-1)[i]!r}")


def elementwise_loop(module: types.ModuleType, dtype):
    return cuda_cpu.elementwise(module.IN_PARAMS, module.OUT_PARAMS, module.OPERATION,
                                module.PREAMBLE, dtype)


def runtime_args(kernel, module, values: dict, t: int, dtype) -> list:
    """The scalar arguments as the runtime passes them: ``Optimizer._kernel`` casts the
    floats of ``host_args`` to the math dtype, then ``_Runner._scalars`` each argument to
    its kind."""
    scalar = CUPY.math_dtype(dtype).type
    args = tuple(scalar(a) if isinstance(a, np.floating) else a
                 for a in kernel.host_args(values, t))
    return [np.bool_(a) if k == "b" else scalar(a)
            for k, a in zip(module.SCALARS, args, strict=True)]


class CLoop:
    """One param stepped as ``Optimizer._step_group`` steps it, with the CuPy kernels' body
    built by g++: the path of each step from ``decide``, the state each kernel needs (or
    its spec enables) created with the spec's ``init`` when first needed."""

    def __init__(self, cls, hypers: dict, p: np.ndarray):
        self.spec = cls._spec
        self.values = H.resolve(self.spec.hypers, hypers, cls.__name__)
        self.p = p.copy()
        self.state: dict[str, np.ndarray] = {}
        self.t = 0
        self.paths: list[tuple] = []

    def kernel(self, t: int):
        path = self.spec.host["decide"](self.values, t)
        return path, self.spec.kernel(CUPY, path)

    def step(self, g: np.ndarray) -> None:
        t = self.t + 1
        path, kernel = self.kernel(t)
        module = module_for(self.spec, path)
        args = runtime_args(kernel, module, self.values, t, self.p.dtype)
        enabled = self.spec.host["state_enabled"](self.values)
        for s in self.spec.spec.states:
            if s.name not in self.state and (enabled[s.name] or s.name in kernel.buffers):
                init = self.spec.host["init_" + s.name](self.values, self.p)
                self.state[s.name] = np.empty_like(self.p)
                np.copyto(self.state[s.name], init, casting="unsafe")
        buffers = {"p": self.p, "g": g, **self.state}
        run = elementwise_loop(module, self.p.dtype)
        run(*(buffers[b] for b in module.IN_BUFFERS), *args,
            *(buffers[b] for b in module.OUT_BUFFERS))
        self.t = t
        self.paths.append(path)


# CLoop runs one kernel per step; a rule with reductions or scalar states runs reduce
# stages and per-param host code first (optdsl.stages). Those run their CUDA C++ on g++
# through the stand-in CuPy, stages included, in tests/runtime/test_device_runtime.py and
# tests/test_reductions.py.
LOOP_CASES = [case for case in CASES if not case[0]._spec.per_parameter]


def _data(dtype, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A param and a gradient per step: normal, with both signs and both zeros."""
    rng = np.random.default_rng(seed)
    p = (rng.standard_normal(SIZE) * 2).astype(dtype)
    p[:3] = (0.0, -0.0, -1.5)
    grads = []
    for _ in range(STEPS):
        g = (rng.standard_normal(SIZE) * rng.choice([1e-3, 1.0, 30.0], SIZE)).astype(dtype)
        g[:2] = (-0.0, 0.0)  # signed zeros into sqrt, max, negation and divisions
        grads.append(g)
    return p, grads


@pytest.fixture(scope="module")
def prebuilt_loops():
    """Build every C loop the bit-exact and multi-tensor tests run, in parallel: each g++
    build takes about 0.3 s and runs outside the GIL. ``cuda_cpu`` then finds each one
    built when a test asks for it."""
    if not cuda_cpu.available():
        return
    wanted = [(case, t, dtype) for case in LOOP_CASES for t in range(1, STEPS + 1)
              for dtype in EXACT_DTYPES]
    wanted += [(p.values[0], MULTI_STEP, p.values[1]) for p in MULTI_PARAMS]
    sources = {}
    for (cls, hypers), t, dtype in wanted:
        path, _ = CLoop(cls, hypers, np.zeros(1)).kernel(t)
        m = module_for(cls._spec, path)
        text = cuda_cpu.elementwise_source(m.IN_PARAMS, m.OUT_PARAMS, m.OPERATION,
                                           m.PREAMBLE, dtype)
        sources.setdefault(text, None)

    def build(text: str) -> None:
        # A source g++ rejects is built again, and reported, by the test that runs it.
        with contextlib.suppress(subprocess.CalledProcessError):
            cuda_cpu.build(text)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(build, sources))


@needs_gxx
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
@pytest.mark.parametrize("case", LOOP_CASES, ids=case_id)
def test_c_loop_matches_numpy_backend_bit_for_bit(prebuilt_loops, case, dtype):
    cls, hypers = case
    p0, grads = _data(dtype, seed=len(CASES) * EXACT_DTYPES.index(dtype) + CASES.index(case))
    w = optdsl.Param(p0.copy())
    opt = cls([w], backend="numpy", **hypers)
    loop = CLoop(cls, hypers, p0)
    assert loop.values == opt._group_hypers(0)  # the runtime resolves the hypers alike
    for t, g in enumerate(grads, start=1):
        w.grad, g_loop = g.copy(), g.copy()
        opt.step()
        loop.step(g_loop)
        what = f"{case_id(case)} {dtype} step {t} (path {loop.paths[-1]})"
        assert_bits(loop.p, w.data, f"{what}: p")
        assert_bits(g_loop, g, f"{what}: g (read only)")
        assert_bits(w.grad, g, f"{what}: the reference's g")
        state = opt.state[w]
        assert state["step"] == t
        assert set(state) - {"step"} == set(loop.state), what
        for name, value in loop.state.items():
            assert_bits(value, state[name], f"{what}: {name}")
    assert not np.array_equal(loop.p, p0)  # it moved


def test_the_bit_exact_cases_reach_every_branch_of_every_optimizer():
    """The cases above switch on each optimizer's optional states and branches: every
    stdlib optimizer is there, and together they reach at least two paths of each."""
    reached: dict[str, set] = {}
    for cls, hypers in CASES:
        loop = CLoop(cls, hypers, np.zeros(1))
        reached.setdefault(cls.__name__, set()).update(loop.kernel(t)[0]
                                                       for t in range(1, STEPS + 1))
    # SparseAdam steps only RowSparse gradients: NVRTC compiles its kernels above, and
    # tests/sparse runs them on the stand-in GPU.
    assert set(reached) == set(STDLIB) - SPARSE_ONLY
    for name, paths in reached.items():
        assert len(paths) >= 2, (name, paths)
        assert default_path(load(name)) in paths
        states = {s.name for s in load(name)._spec.spec.states}
        used = {b for path in paths for b in load(name)._spec.kernel(CUPY, path).buffers}
        assert states <= used, f"{name}: no case uses {states - used}"


# --- many tensors in one launch ------------------------------------------------------

MULTI_CASES = [CASES[1], CASES[4], CASES[10], CASES[13]]  # SGD, Adam, RMSprop, Adagrad
MULTI_STEP = 3
# float16 (storage; float math) on one case: each (case, dtype) is a g++ build.
MULTI_PARAMS = [pytest.param(case, dtype, id=f"{case_id(case)}-{dtype}")
                for case in MULTI_CASES for dtype in EXACT_DTYPES]
MULTI_PARAMS.append(pytest.param(CASES[4], "float16", id=f"{case_id(CASES[4])}-float16"))
TENSOR_SIZES = [(2 * cupy_backend.MULTI_CHUNK + 3, 1, 1000),
                (cupy_backend.MULTI_CHUNK + 1, 0, 129)]


def multi_table(sizes: list[int], tensors: list[list[np.ndarray]]) -> np.ndarray:
    """The table as codegen/cupy.py.j2 describes it, in 64-bit integers: the sizes; then
    each buffer's pointers, BUFFERS order, one per tensor; then each block's tensor; then
    each block's start (a block steps MULTI_CHUNK elements)."""
    n_buffers = len(tensors[0])
    pointers = [tensors[k][j].ctypes.data for j in range(n_buffers) for k in range(len(sizes))]
    blocks = [(k, lo) for k, n in enumerate(sizes) for lo in range(0, n, cupy_backend.MULTI_CHUNK)]
    return np.array([*sizes, *pointers, *(k for k, _ in blocks), *(lo for _, lo in blocks)],
                    dtype=np.int64)


class _FakeCupyArray:
    """What ``_Runner.many`` reads of a CuPy array, over host memory."""

    def __init__(self, array: np.ndarray):
        self.dtype, self.size, self.flags = array.dtype, array.size, array.flags
        self.device = types.SimpleNamespace(id=0)
        self.data = types.SimpleNamespace(ptr=array.ctypes.data)


@needs_gxx
@pytest.mark.parametrize("sizes", TENSOR_SIZES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize(("case", "dtype"), MULTI_PARAMS)
def test_multi_tensor_kernel_matches_elementwise_per_tensor(prebuilt_loops, monkeypatch,
                                                            case, dtype, sizes):
    cls, hypers = case
    t = MULTI_STEP
    loop = CLoop(cls, hypers, np.zeros(1))
    path, kernel = loop.kernel(t)
    module = module_for(cls._spec, path)
    args = runtime_args(kernel, module, loop.values, t, np.dtype(dtype))
    rng = np.random.default_rng(sum(sizes))

    def buffers(n: int) -> list[np.ndarray]:
        # p and g of both signs; states non-negative (square averages go into sqrt).
        return [(rng.standard_normal(n) if b in ("p", "g") else rng.random(n)).astype(dtype)
                for b in module.BUFFERS]

    original = [buffers(n) for n in sizes]
    want = [[b.copy() for b in bufs] for bufs in original]
    run = elementwise_loop(module, dtype)
    for bufs in want:
        named = dict(zip(module.BUFFERS, bufs, strict=True))
        run(*(named[b] for b in module.IN_BUFFERS), *args,
            *(named[b] for b in module.OUT_BUFFERS))

    # The table built from the template's description, launched as the runtime does.
    got = [[b.copy() for b in bufs] for bufs in original]
    table = multi_table(list(sizes), got)
    n_blocks = sum(-(-n // cupy_backend.MULTI_CHUNK) for n in sizes)
    launch = cuda_cpu.raw_kernel(cupy_backend.multi_code(module, dtype), module.MULTI_NAME)
    launch((n_blocks,), (cupy_backend.MULTI_THREADS,), (table, np.int64(len(sizes)), *args))

    # The backend's own launcher: _Runner.many and _Launch with CuPy's calls standing in
    # for host memory (the table stays a NumPy array, for which on_device does nothing),
    # the RawKernel emulated.
    compiled = []

    def raw_kernel(code, name, options):
        compiled.append((code, name, options))
        return cuda_cpu.raw_kernel(code, name)  # called as a RawKernel is: (grid, block, args)

    fake = types.SimpleNamespace(
        asarray=np.asarray, RawKernel=raw_kernel,
        cuda=types.SimpleNamespace(Device=lambda device: contextlib.nullcontext()))
    monkeypatch.setattr(cupy_backend, "_cupy", lambda: fake)
    runtime = [[b.copy() for b in bufs] for bufs in original]
    runner = cupy_backend._Runner(module)
    launcher = runner.many([[_FakeCupyArray(b) for b in bufs] for bufs in runtime])
    assert launcher.grid == (n_blocks,) and launcher.block == (cupy_backend.MULTI_THREADS,)
    raw_args = tuple(CUPY.math_dtype(dtype).type(a) if isinstance(a, np.floating) else a
                     for a in kernel.host_args(loop.values, t))
    launcher(raw_args)
    assert compiled == [(cupy_backend.multi_code(module, np.dtype(dtype)), module.MULTI_NAME,
                         module.OPTIONS)]
    np.testing.assert_array_equal(launcher.table[: len(sizes)], sizes)
    mine = multi_table(list(sizes), runtime)
    assert np.array_equal(launcher.table, mine), "_Runner.many's table differs from the " \
        "template's description"

    for k in range(len(sizes)):
        for name, a, b, c in zip(module.BUFFERS, got[k], runtime[k], want[k], strict=True):
            assert_bits(a, c, f"tensor {k} ({sizes[k]} elements) {name}, table by hand")
            assert_bits(b, c, f"tensor {k} ({sizes[k]} elements) {name}, _Runner.many")
    big = sizes.index(max(sizes))
    assert not np.array_equal(want[big][0], original[big][0])  # p moved, past the 1st chunk
    assert not np.array_equal(want[big][0][-10:], original[big][0][-10:])


# --- the source, without a GPU -------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STDLIB))
def test_source_needs_no_gpu_and_holds_elementwise_kernel_strings(name):
    cls = load(name)
    source = cls.source("cupy")
    module = cupy_backend.load_module(source, name)
    assert f"NAME = '{module.NAME}'" in source and module.NAME.startswith(f"optdsl_{name}_")
    assert f"MULTI_NAME = '{module.MULTI_NAME}'" in source
    # CuPy takes the strings as they are (it parses the parameters without a device).
    kernel = cupy.ElementwiseKernel(module.IN_PARAMS, module.OUT_PARAMS, module.OPERATION,
                                    name=module.NAME, preamble=module.PREAMBLE,
                                    options=module.OPTIONS, no_return=True)
    assert kernel.nin == len(module.IN_BUFFERS) + len(module.SCALARS)
    assert kernel.nout == len(module.OUT_BUFFERS)
    assert set(module.BUFFERS) == {*module.IN_BUFFERS, *module.OUT_BUFFERS}
    assert f'extern "C" __global__ void {module.NAME}(' in cupy_backend.kernel_code(
        module, np.float32)


# Values no stdlib default has, in every hyper's range, whose digits would show if the
# source held them.
ODD_VALUES = {float: 0.0123456789, tuple: (0.8123456789, 0.9123456789, 0.9923456789)}


@pytest.mark.parametrize("name", sorted(STDLIB))
def test_hyper_values_are_arguments_not_source(name):
    """A new lr (or eps, beta, ...) that selects the same path leaves the source as it
    was: the value reaches the kernel as a scalar argument."""
    cls = load(name)
    spec = cls._spec
    base = cls.source("cupy")
    default = spec.host["decide"](H.resolve(spec.hypers, {}, name), 1)
    changed = []
    for hyper, info in spec.hypers.items():
        value = ODD_VALUES.get(type(info.default))
        if value is None or isinstance(info.default, bool):
            continue
        if isinstance(value, tuple):
            value = value[:len(info.default)]  # betas of two, AdEMAMix's of three
        if info.hi is not None and info.hi <= 0:
            value = -value  # Adafactor's beta2_decay is at most 0
        elif info.lo is not None and info.lo >= 1:
            value = info.lo + value  # and its d at least 1
        values = H.resolve(spec.hypers, {hyper: value}, name)
        if spec.host["decide"](values, 1) != default:
            continue  # e.g. a weight_decay of 0 and one that is not are different paths
        source = cls.source("cupy", **{hyper: value})
        assert source == base, hyper
        assert "123456789" not in source, hyper
        changed.append(hyper)
    assert "lr" in changed


def test_a_new_lr_keeps_the_source_of_a_later_step():
    """SGD with momentum at step 2 (its second path) takes a new lr as an argument too."""
    assert SGD.source("cupy", t=2, momentum=0.9, lr=0.0123456789) == \
        SGD.source("cupy", t=2, momentum=0.9)
    assert SGD.source("cupy", t=2, momentum=0.9) != SGD.source("cupy", t=1, momentum=0.9)


# --- kernels with extra outputs (optdsl.extras) ----------------------------------------

EXTRAS = ("track", "update", "dlr:lr")
# Adam and AdamW track effective_lr; SGD has no track but an update and a slope; the
# variants take every optional state and branch.
EXTRA_CASES = [CASES[1], CASES[3], CASES[4], CASES[7], CASES[10], CASES[15]]


def _extras_module(cls, path):
    source = cls._spec.kernel(CUPY, path, EXTRAS).source
    return cupy_backend.load_module(source, f"{cls.__name__}_extras_{_path_id(path)}")


@pytest.mark.parametrize(("name", "dtype"), [("Adam", "float32"), ("Adam", "float16"),
                                             ("AdamW", "float64"), ("SGD", "float32")])
def test_kernels_with_extra_outputs_compile_with_nvrtc(nvrtc, name, dtype):
    """Both kernels, with the extra outputs among the written buffers (stored in T: half
    precision for float16 params), on the path with the most instructions."""
    cls = load(name)
    spec = cls._spec
    longest = max(spec.paths(), key=lambda p: len(spec.program(p).body))
    module = _extras_module(cls, longest)
    assert {"diag:update", "dlr:lr"} <= set(module.OUT_BUFFERS)
    assert ("track:effective_lr" in module.OUT_BUFFERS) == (name != "SGD")
    assert "T bd_update" in module.OUT_PARAMS and "bh_lr = (T)(" in module.OPERATION
    for code, entry in ((cupy_backend.kernel_code(module, storage_dtype(dtype)), module.NAME),
                        (cupy_backend.multi_code(module, storage_dtype(dtype)),
                         module.MULTI_NAME)):
        assert entry.encode() in nvrtc(code, module.OPTIONS, "sm_90")


@needs_gxx
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
@pytest.mark.parametrize("case", EXTRA_CASES, ids=case_id)
def test_c_loop_extras_match_numpy_backend_bit_for_bit(case, dtype):
    """One step at t = 3 with every extra: the CUDA body run by g++ (the elementwise loop,
    and the multi-tensor kernel over two tensors) writes the NumPy backend's bits into
    every buffer, extra outputs included."""
    from tests.property.harness import run_kernel

    cls, hypers = case
    t = 3
    values = H.resolve(cls._spec.hypers, hypers, cls.__name__)
    path = cls._spec.host["decide"](values, t)
    module = _extras_module(cls, path)
    kernel = cls._spec.kernel(CUPY, path, EXTRAS)
    args = runtime_args(kernel, module, values, t, np.dtype(dtype))
    rng = np.random.default_rng(EXTRA_CASES.index(case))
    sizes = (SIZE, 70)

    def buffers(n: int) -> dict[str, np.ndarray]:
        out = {}
        for b in module.BUFFERS:
            if ":" in b:
                out[b] = np.full(n, np.nan, dtype)
            elif b in ("p", "g"):
                out[b] = rng.standard_normal(n).astype(dtype)
            else:  # square averages above the square of centered RMSprop's grad_avg
                big = any(word in b for word in ("sq", "square", "sum"))
                out[b] = (rng.random(n) * 0.1 + (2.0 if big else 0.01)).astype(dtype)
        return out

    original = [buffers(n) for n in sizes]
    want = [run_kernel(cls._spec.kernel(get_backend("numpy"), path, EXTRAS), values, t, bufs,
                       chunk=64) for bufs in original]
    run = elementwise_loop(module, dtype)
    got = [{b: a.copy() for b, a in bufs.items()} for bufs in original]
    for named in got:
        run(*(named[b] for b in module.IN_BUFFERS), *args,
            *(named[b] for b in module.OUT_BUFFERS))
    multi = [[bufs[b].copy() for b in module.BUFFERS] for bufs in original]
    n_blocks = sum(-(-n // cupy_backend.MULTI_CHUNK) for n in sizes)
    launch = cuda_cpu.raw_kernel(cupy_backend.multi_code(module, dtype), module.MULTI_NAME)
    launch((n_blocks,), (cupy_backend.MULTI_THREADS,),
           (multi_table(list(sizes), multi), np.int64(len(sizes)), *args))
    for k in range(len(sizes)):
        for j, b in enumerate(module.BUFFERS):
            assert_bits(got[k][b], want[k][b], f"{case_id(case)} tensor {k} {b}, elementwise")
            assert_bits(multi[k][j], want[k][b], f"{case_id(case)} tensor {k} {b}, multi")
        assert not np.isnan(got[k]["dlr:lr"]).any()
