"""The numba backend through the runtime: the stdlib optimizers bit for bit against the
NumPy backend at any size, dtype and thread count; its generated source holds no user
text; its compiled code is cached on disk for the next process; and backend=None picks it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba "
                    "(pip install 'optdsl[numba]')")

import optdsl  # noqa: E402
from optdsl import cache  # noqa: E402
from optdsl.api import make_class  # noqa: E402
from optdsl.backend import get as get_backend  # noqa: E402
from optdsl.backend import numba_backend, pick  # noqa: E402
from optdsl.compiler import load_spec  # noqa: E402
from optdsl.ir import ARITH_OPS, COMPARE_OPS, LOGIC_OPS  # noqa: E402
from optdsl.optim import STDLIB, Adam, load  # noqa: E402
from tests.backend.stdlib_cases import CASES, case_id  # noqa: E402
from tests.property.harness import assert_same_bits  # noqa: E402
from tests.security.test_injection import (  # noqa: E402
    DOUBLE_PAYLOAD,
    PAYLOAD,
    PROBE,
    _docstrings,
    assert_inert,
    check_generated,
    evil_spec,
    template_comment_patterns,
    with_extras,
)

REPO = Path(__file__).resolve().parents[2]
NUMBA = get_backend("numba")
THRESHOLD = numba_backend.PARALLEL_MIN_ELEMENTS


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")  # these kernels are not worth keeping
    yield
    optdsl.set_num_threads(None)


# --- the stdlib, numba against numpy --------------------------------------------------

# Empty, one, odd, and around the length where the parallel twin takes over.
SIZES = (0, 1, 7, THRESHOLD - 1, THRESHOLD, THRESHOLD + 7)



def trajectory(cls, hypers, backend, n, dtype, threads=None, steps=4):
    """Parameters and state after a few steps on two params (n elements and 2 x 3)."""
    optdsl.set_num_threads(threads)
    rng = np.random.default_rng(n)
    params = [optdsl.Param(rng.standard_normal(shape).astype(dtype)) for shape in ((n,), (2, 3))]
    opt = cls(params, backend=backend, **hypers)
    for step in range(steps):
        for p in params:
            g = np.random.default_rng(step).standard_normal(p.data.shape).astype(dtype)
            g.reshape(-1)[:2] = (0.0, -0.0)[:g.size]  # signed zeros into sqrt, max, where
            p.grad = g
        opt.step()
    state = opt.state_dict()["state"]
    return [p.data for p in params], [state[i] for i in sorted(state)]


def assert_same_trajectory(got, want, what) -> None:
    (got_params, got_state), (want_params, want_state) = got, want
    for k, (a, b) in enumerate(zip(got_params, want_params, strict=True)):
        assert_same_bits(a, b, f"{what}: param {k}")
    for k, (a, b) in enumerate(zip(got_state, want_state, strict=True)):
        assert a.keys() == b.keys(), what
        for name in a:
            if isinstance(a[name], np.ndarray):
                assert_same_bits(a[name], b[name], f"{what}: param {k} {name}")
            else:
                assert a[name] == b[name], f"{what}: param {k} {name}"


EXACT_OPS = set(ARITH_OPS) - {"pow", "exp", "log", "cos", "sin", "tanh"}
EXACT_OPS |= set(COMPARE_OPS) | set(LOGIC_OPS) | {"where", "copy", "load"}


@pytest.mark.parametrize("name", sorted(STDLIB))
def test_stdlib_elementwise_code_uses_only_exact_ops(name):
    """Why the comparisons below can ask for bit-identical results: no stdlib kernel uses
    pow, exp, log, cos, sin or tanh per element (Adam's b1 ** t is a host scalar)."""
    spec = load(name)._spec
    for path in spec.paths():
        used = {ins.op for ins in spec.program(path).body}
        assert used <= EXACT_OPS, f"{name} path {path}: {sorted(used - EXACT_OPS)}"


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float32", "float64"))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_stdlib_matches_numpy_backend_bit_for_bit(case, dtype):
    cls, hypers = case
    for n in SIZES:
        want = trajectory(cls, hypers, "numpy", n, dtype)
        got = trajectory(cls, hypers, "numba", n, dtype, threads=2)
        assert_same_trajectory(got, want, f"{case_id(case)} n={n} {np.dtype(dtype).name}")


@pytest.mark.parametrize("case", [CASES[4], CASES[10], CASES[13]], ids=case_id)
def test_results_are_identical_for_one_and_two_threads(case):
    cls, hypers = case
    n = 3 * THRESHOLD + 5  # each thread's range ends off a vector boundary
    one = trajectory(cls, hypers, "numba", n, np.float32, threads=1)
    two = trajectory(cls, hypers, "numba", n, np.float32, threads=2)
    assert_same_trajectory(two, one, "2 threads vs 1")
    assert_same_trajectory(one, trajectory(cls, hypers, "numpy", n, np.float32), "vs numpy")


def test_the_parallel_twin_runs_above_the_threshold_only():
    """Whole-buffer calls of at least THRESHOLD elements on more than one thread go to the
    parallel twin; shorter ones, one thread, or part of a buffer run serially."""
    spec = load_spec("optimizer Halve\nupdate:\n    p = p * 0.5\n", "halve.opt")
    module = numba_backend._load(spec.kernel(NUMBA, ()).source)
    calls = []

    def spy(twin):
        def called(*args):
            calls.append(twin)
            return getattr(module, twin)(*args)
        called.stats = getattr(module, twin).stats  # numba's cache counters, for Kernel.stats
        return called

    spied = SimpleNamespace(update_parallel=spy("update_parallel"),
                            update_serial=spy("update_serial"),
                            operands=module.operands, BUFFERS=module.BUFFERS)
    run = numba_backend._runner(spied, {"compile_seconds": {}, "cache_hit": False})
    a = np.ones(THRESHOLD, np.float32)
    for threads, n, stop, twin in [(2, THRESHOLD, THRESHOLD, "update_parallel"),
                                   (2, THRESHOLD - 1, THRESHOLD - 1, "update_serial"),
                                   (1, THRESHOLD, THRESHOLD, "update_serial"),
                                   (2, THRESHOLD, THRESHOLD // 2, "update_serial")]:
        optdsl.set_num_threads(threads)
        calls.clear()
        run(n, a[:n], (), None, 0, 0, stop)
        assert calls[-1] == twin, (threads, n, stop)
    half = np.float32(0.5)
    assert np.all(a[: THRESHOLD // 2] == half ** 4)
    assert np.all(a[THRESHOLD // 2: -1] == half ** 3) and a[-1] == half ** 2


# --- what the generated source is made of ---------------------------------------------

COMMENTS = template_comment_patterns("numba.py.j2")
FIXED_DOCSTRINGS = {d.value for d in _docstrings(ast.parse(
    load_spec(PROBE, "probe.opt").kernel(NUMBA, ()).source))}
EVIL = load_spec(evil_spec(Path("/nonexistent/pwned")), "modal.opt")


def numba_sources(spec) -> list[str]:
    """Every path's kernel, without and with every extra output, and their reduce
    stages' kernels."""
    kernels = [k for path in spec.paths()
               for k in (spec.kernel(NUMBA, path), with_extras(spec, NUMBA, path))]
    return [k.source for k in kernels] + [s.kernel.source for k in kernels for s in k.stages
                                          if s.kernel is not None]


def check_numba_source(source: str) -> None:
    check_generated(source, imports=(["math"], ["numba"], ["numpy"], ["ops"]),
                    fixed_docstrings=FIXED_DOCSTRINGS, comments=COMMENTS)


@pytest.mark.parametrize("name", sorted(STDLIB) + ["evil"])
def test_numba_sources_hold_only_identifiers_numbers_and_template_text(name):
    spec = EVIL if name == "evil" else load(name)._spec
    sources = numba_sources(spec)
    assert sources and all("update_parallel" in s for s in sources)
    for source in sources:
        check_numba_source(source)


def test_string_payloads_never_reach_numba_code(tmp_path):
    marker = tmp_path / "pwned"
    spec = load_spec(evil_spec(marker), "modal.opt")
    a, b = PAYLOAD.format(marker=marker), DOUBLE_PAYLOAD.format(marker=marker)
    assert_inert(numba_sources(spec), marker, a, b, a[:12], b[:12], "touch")
    Modal = make_class(spec)
    assert_inert([Modal.source("numba", mode=b), Modal.source("numba", mode="safe", tag=a)],
                 marker, a, b, "touch")
    w = optdsl.Param(np.linspace(-1, 1, 7).astype(np.float32))
    w.grad = np.full(7, 0.5, np.float32)
    Modal([w], backend="numba", mode=b).step()  # the strings still choose their branch
    np.testing.assert_allclose(w.data, np.linspace(-1, 1, 7) + 0.05, rtol=1e-6)
    assert not marker.exists()


def test_the_numba_source_check_would_catch_a_leak():
    with pytest.raises(AssertionError, match="string literal"):
        check_numba_source("x = h['lr']\ny = 'os.system'\n")
    with pytest.raises(AssertionError):
        check_numba_source("x = 1  # touch /tmp/pwned\n")
    with pytest.raises(AssertionError):
        check_numba_source("import os\n")


# --- the disk cache: a second process compiles nothing ---------------------------------

CHILD = """
import json
import sys

import numba
import numpy as np


@numba.njit
def warm(x):
    return x + 1


warm(1)  # numba's own start-up, so that what is timed below is the kernel alone

import optdsl
from optdsl.optim import Adam

optdsl.set_num_threads(2)
for n in (7, 3 * int(sys.argv[1])):  # the serial twin, then (on 2+ cores) the parallel one
    p = optdsl.Param(np.zeros(n, np.float32))
    p.grad = np.ones(n, np.float32)
    Adam([p], backend="numba").step()
(kernel,) = [k for (backend, *_), k in Adam._spec.kernels.items() if backend == "numba"]
print(json.dumps(kernel.stats))
"""


def _child(cache_dir: Path) -> dict:
    env = {**os.environ, "OPTDSL_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(THRESHOLD)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=str(cache_dir.parent))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_second_process_loads_the_compiled_kernel_from_disk(tmp_path):
    directory = tmp_path / "cache"
    first = _child(directory)
    assert first["cache_hit"] is False
    assert list((directory / "numba" / "__pycache__").glob("*.nbi")), "numba cached nothing"
    second = _child(directory)
    assert second["cache_hit"] is True
    # JIT compiling the two twins takes about a second; loading them, milliseconds.
    assert second["compile_seconds"]["<f4"] < first["compile_seconds"]["<f4"] / 4, \
        (first, second)


def test_without_the_disk_cache_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    cache.clear_memory()
    spec = load_spec("optimizer Uncached\nhyper lr = 0.25\nupdate:\n    p = p - lr * g\n")
    kernel = spec.kernel(NUMBA, ())
    p, g = np.ones(5, np.float64), np.full(5, 2.0)
    kernel.run(5, p, g, kernel.host_args({"lr": 0.25}, 1), None, 0, 0, 5)
    assert np.all(p == 0.5)
    assert kernel.stats["cache_hit"] is False and "<f8" in kernel.stats["compile_seconds"]
    assert list(tmp_path.rglob("*")) == []


# --- its place among the backends -------------------------------------------------------

def test_numba_is_listed_first_and_picked_for_float32_and_float64():
    names = optdsl.backends()
    assert names.index("numba") < names.index("numpy")  # best first
    assert NUMBA.parallel and not get_backend("numpy").parallel
    assert pick(np.zeros(3, np.float32)) is NUMBA
    assert pick(np.zeros(3, np.float64)) is NUMBA


def test_other_float_dtypes_stay_with_numpy():
    assert pick(np.zeros(3, np.float16)).name == "numpy"
    p = optdsl.Param(np.ones(4, np.float16))
    p.grad = np.ones(4, np.float16)
    Adam([p], lr=0.5).step()
    assert p.data.dtype == np.float16 and np.all(p.data == np.float16(0.5))


def test_importing_optdsl_does_not_import_numba():
    code = "import sys, optdsl; print('numba' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "False"
