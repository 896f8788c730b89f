"""Every generated kernel agrees with the reference interpreter, bit for bit.

The rules are random (``tests/property/rules.py``); so are shapes (empty, scalar, a few
elements, more than one chunk), dtypes, hyper values and the steps taken. The oracle is
:func:`optdsl.interp.interpret` on the *unoptimised* program of the same path, so these
tests cover lowering, every pass, each backend's rendering and its template, and the
host prologue at once.

Tests taking ``backend`` run once per backend (conftest.py). The NumPy backend computes
every op with the interpreter's own ufuncs, so any rule must match bit for bit; other
backends draw rules whose elementwise code avoids pow, exp, log, cos, sin and tanh (C
library versus NumPy's SIMD code: a few ulp apart), which ``test_ops_per_backend.py``
bounds in ulps.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optdsl
from optdsl import passes
from optdsl._resources import data_dir
from optdsl.api import make_class
from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.errors import InternalCompilerError
from optdsl.hypers import resolve
from optdsl.interp import interpret
from optdsl.runtime import factored_shape
from tests.property.harness import assert_same_bits, make_buffers, run_kernel
from tests.property.rules import hyper_values, rules

NUMPY = get_backend("numpy")
# OPTDSL_PROPERTY_EXAMPLES=2000 for a long hunt; the default keeps the file under a minute
# for numpy. A numba kernel is a JIT compile (a few tenths of a second per rule and dtype),
# so numba draws a quarter as many rules unless OPTDSL_PROPERTY_EXAMPLES_NUMBA says more.
EXAMPLES = int(os.environ.get("OPTDSL_PROPERTY_EXAMPLES", "120"))
EXAMPLES_FOR = {"numpy": EXAMPLES,
                "numba": int(os.environ.get("OPTDSL_PROPERTY_EXAMPLES_NUMBA", EXAMPLES // 4))}
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Backends whose every op is the interpreter's own NumPy call, transcendental ones included.
SAME_UFUNCS = ("numpy",)


def settings_for(backend) -> settings:
    return settings(SETTINGS, max_examples=max(1, EXAMPLES_FOR.get(backend.name, EXAMPLES)))


def rules_for(backend):
    """Random rules whose results ``backend`` must reproduce bit for bit."""
    return rules(exact=backend.name not in SAME_UFUNCS)

# (shape, chunk): empty, a scalar, fewer elements than a chunk, a chunk boundary inside the
# array (7 / 5, 70 / 64, 4100 / 4096), and an exact multiple of the chunk (15 / 5).
CASES = [((0,), 64), ((), 5), ((1,), 5), ((7,), 5), ((7,), 4096), ((3, 5), 5), ((70,), 64),
         ((2, 65), 64), ((4100,), 4096)]
DTYPES = (np.float32, np.float64)
SKIPPABLE = ("fold_constants", "eliminate_common_subexpressions", "eliminate_dead_code")


def _setup(rule, data):
    """The compiled spec, resolved hypers and random buffers for one example."""
    spec = load_spec(rule.text, "R.opt")
    hypers = resolve(spec.hypers, data.draw(hyper_values(rule), label="hypers"), "R")
    shape, chunk = data.draw(st.sampled_from(CASES), label="shape, chunk")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    specials = data.draw(st.booleans(), label="inf/nan/zeros in the data")
    names = ("p", "g") + tuple(s.name for s in spec.spec.states)
    return spec, hypers, make_buffers(names, shape, dtype, seed, specials), chunk


def _decide(spec, hypers, t):
    with np.errstate(all="ignore"):  # host arithmetic may divide by zero; that is allowed
        return spec.host["decide"](hypers, t)


def _check_step(kernel, program, hypers, t, buffers, chunk, what) -> dict:
    """Run ``kernel`` and the interpreter on ``program`` for one step; compare; return the
    kernel's buffers after the step."""
    want = interpret(program, hypers, t, buffers)
    got = run_kernel(kernel, hypers, t, buffers, chunk)
    assert set(kernel.outputs) == set(want), f"{what}: outputs {kernel.outputs} vs {set(want)}"
    for name, before in buffers.items():
        if name in want:
            assert_same_bits(got[name], want[name], f"{what}: output {name}")
        else:  # not an output: the kernel must leave it alone (g is never an output)
            assert_same_bits(got[name], before, f"{what}: untouched input {name}")
    assert "g" not in want
    return got


def test_kernel_matches_interpreter(backend):
    """Several steps of every path the drawn hypers reach: kernel == interpreter."""
    @settings_for(backend)
    @given(rule=rules_for(backend), data=st.data())
    def check(rule, data):
        spec, hypers, buffers, chunk = _setup(rule, data)
        all_paths = set(spec.paths())
        for t in range(1, 5):
            path = _decide(spec, hypers, t)
            assert path in all_paths, f"decide gave {path}, not one of spec.paths()"
            kernel = spec.kernel(backend, path)
            buffers = _check_step(kernel, spec.unoptimized(path), hypers, t, buffers, chunk,
                                  f"t={t} path={path} chunk={chunk}")

    check()


def test_every_path_matches_interpreter(backend):
    """Paths the hypers do not reach still compile to kernels that agree."""
    @settings_for(backend)
    @given(rule=rules_for(backend), data=st.data())
    def check(rule, data):
        spec, hypers, buffers, chunk = _setup(rule, data)
        all_paths = spec.paths()
        chosen = data.draw(st.lists(st.sampled_from(all_paths), min_size=1, max_size=4,
                                    unique=True), label="paths")
        t = data.draw(st.integers(1, 4), label="t")
        for path in chosen:
            _check_step(spec.kernel(backend, path), spec.unoptimized(path), hypers, t,
                        buffers, chunk, f"path={path}")

    check()


@contextmanager
def _parallel_everywhere():
    """numba's parallel twin on 2 threads for any buffer length, not only long ones."""
    from optdsl.backend import numba_backend

    saved = numba_backend.PARALLEL_MIN_ELEMENTS
    numba_backend.PARALLEL_MIN_ELEMENTS = 0
    optdsl.set_num_threads(2)
    try:
        yield
    finally:
        numba_backend.PARALLEL_MIN_ELEMENTS = saved
        optdsl.set_num_threads(None)


def test_chunk_size_and_threads_do_not_change_bits(backend):
    """One kernel, chunk sizes 1, 3, 4096 and 16384, and the range split across threads
    (and for numba its parallel twin on the whole range): the same bits every time."""
    # A kernel is compared with itself, so transcendental ops must agree too, unless numba
    # vectorizes them with Intel's SVML, which differs from the C library that the loop's
    # remainder calls: then where a thread's range ends would show in the bits.
    exact = backend.name == "numba" and _numba_uses_svml()

    @settings_for(backend)
    @given(rule=rules(exact=exact), data=st.data())
    def check(rule, data):
        spec, hypers, buffers, _ = _setup(rule, data)
        if buffers["p"].size > 300:  # chunk size 1 on 4100 elements is slow and adds nothing
            buffers = {k: v.reshape(-1)[:300].copy() for k, v in buffers.items()}
        t = data.draw(st.integers(1, 4), label="t")
        path = _decide(spec, hypers, t)
        kernel = spec.kernel(backend, path)
        first = run_kernel(kernel, hypers, t, buffers, 1)
        runs = [(f"chunk={c}", run_kernel(kernel, hypers, t, buffers, c))
                for c in (3, 4096, 16384)]
        pieces = data.draw(st.integers(2, 4), label="threads")
        chunk = data.draw(st.sampled_from((3, 64, 4096)), label="threaded chunk")
        runs.append((f"{pieces} threads, chunk={chunk}",
                     run_kernel(kernel, hypers, t, buffers, chunk, pieces)))
        if backend.name == "numba":
            with _parallel_everywhere():
                runs.append(("numba's parallel twin", run_kernel(kernel, hypers, t, buffers, 1)))
        for what, other in runs:
            for name in first:
                assert_same_bits(other[name], first[name], f"{what}: {name}")

    check()


def _numba_uses_svml() -> bool:
    import numba

    return bool(getattr(numba.config, "USING_SVML", False))


@SETTINGS
@given(rule=rules(), data=st.data())
def test_each_pass_preserves_meaning(rule, data):
    """Switching off any optional pass (or all of them) gives the same bits."""
    spec, hypers, buffers, chunk = _setup(rule, data)
    t = data.draw(st.integers(1, 4), label="t")
    path = _decide(spec, hypers, t)
    skips = [(name,) for name in SKIPPABLE] + [SKIPPABLE]
    for skip in skips:
        program = spec.program(path, skip=skip)
        source = NUMPY.render(program, path=path)
        kernel = NUMPY.build(source, "R_without_" + "_".join(skip))
        _check_step(kernel, spec.unoptimized(path), hypers, t, buffers, chunk,
                    f"without {', '.join(skip)}")


STDLIB = sorted(p.name for p in data_dir("stdlib").glob("*.opt"))


@pytest.mark.parametrize("filename", STDLIB)
def test_stdlib_kernels_match_interpreter(filename, backend):
    """Every path of every stdlib optimizer, with random values for its number hypers.
    (Their elementwise code uses only exact ops, so every backend must match bit for bit.)"""
    spec = load_spec((data_dir("stdlib") / filename).read_text(), filename)

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        given_values = {}
        for name, info in spec.hypers.items():
            if info.type == "float" and data.draw(st.booleans()):
                lo = 0.0 if info.lo is not None and info.lo >= 0 else -1.0
                lo = max(lo, info.lo) if info.lo is not None else lo  # Adafactor's d >= 1
                hi = min(lo + 0.99, info.hi) if info.hi is not None else lo + 0.99
                open_low = info.lo is not None and info.lo >= 0 and not info.lo_closed
                given_values[name] = data.draw(st.floats(lo, hi, exclude_min=open_low,
                                                         exclude_max=not info.hi_closed),
                                               label=name)
        hypers = resolve(spec.hypers, given_values, filename)
        shape, chunk = data.draw(st.sampled_from(CASES), label="shape, chunk")
        dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
        names = ("p", "g") + tuple(s.name for s in spec.spec.states)
        buffers = make_buffers(names, shape, dtype, data.draw(st.integers(0, 2**32 - 1)),
                               False)
        buffers = {k: np.abs(v) if k != "p" and k != "g" else v for k, v in buffers.items()}
        t = data.draw(st.integers(1, 5), label="t")
        if spec.per_parameter:  # reduce stages and scalar states: through the runtime
            for decl in spec.spec.scalars:
                buffers[decl.name] = np.float64(data.draw(st.floats(0, 2), label=decl.name))
            if len(shape) >= 2:  # row and column states; the elementwise ones it lacks
                enabled = spec.host["state_enabled"]({**hypers, "factored": True})
                for decl in spec.spec.states:
                    if not enabled[decl.name]:
                        del buffers[decl.name]
                for decl in spec.spec.factored:
                    buffers[decl.name] = np.abs(make_buffers(
                        ("x",), factored_shape(decl.kind, shape), dtype,
                        data.draw(st.integers(0, 2**32 - 1)), False)["x"])
            _check_runtime_step(spec, backend, hypers, t, buffers, f"{filename} t={t}")
            return
        for path in spec.paths():
            _check_step(spec.kernel(backend, path), spec.unoptimized(path), hypers, t,
                        buffers, chunk, f"{filename} path={path}")

    check()


def _check_runtime_step(spec, backend, hypers, t, buffers, what) -> None:
    """Step ``t`` of a one-parameter optimizer that starts from ``buffers`` (loaded as
    its state after step t - 1) against the interpreter, bit for bit: the reduce stages,
    the reductions and the scalar states' updates too."""
    decided = {**hypers, "factored": np.ndim(buffers["p"]) >= 2}
    want = interpret(spec.unoptimized(spec.host["decide"](decided, t)), hypers, t, buffers)
    w = optdsl.Param(np.array(buffers["p"]))
    w.grad = np.array(buffers["g"])
    opt = make_class(spec)([w], backend=backend.name, **hypers)
    state = {k: np.array(v) for k, v in buffers.items() if k not in ("p", "g")}
    opt.load_state_dict({"state": {0: {"step": t - 1, **state}},
                         "param_groups": [{**hypers, "params": [0]}]})
    with np.errstate(all="ignore"):
        opt.step()
    assert_same_bits(w.data, want.get("p", buffers["p"]), f"{what}: p")
    for name, before in state.items():
        got = np.asarray(opt.state[w][name])
        expect = np.asarray(want.get(name, before))
        assert_same_bits(got, expect.astype(got.dtype), f"{what}: state {name}")


def test_skippable_passes_are_the_optional_ones():
    """The backend needs hoisting and buffer reuse; everything else can be switched off."""
    assert set(passes.PASSES) == set(SKIPPABLE) | {"hoist_host_scalars", "reuse_buffers"}
    spec = load_spec("optimizer R\nupdate:\n    p = p - g\n")
    with pytest.raises(InternalCompilerError, match="hoisted"):
        NUMPY.render(spec.program((), skip=("hoist_host_scalars",)), path=())


@settings(max_examples=EXAMPLES, deadline=None)
@given(rule=rules(), data=st.data())
def test_passes_are_pure(rule, data):
    """No pass modifies its input; every intermediate program can be kept and printed."""
    spec = load_spec(rule.text, "R.opt")
    path = data.draw(st.sampled_from(spec.paths()), label="path")
    program = spec.unoptimized(path)
    for p in passes.PIPELINE:
        kept, text = copy.deepcopy(program), str(program)
        out = p(program)
        assert program == kept, f"{p.__name__} modified its input"
        assert str(program) == text, f"{p.__name__} modified its input's printed form"
        # (printed, because a folded 0 / 0 is a NaN constant, and nan != nan)
        assert str(p(kept)) == str(out), f"{p.__name__} is not deterministic"
        assert str(out).startswith("program R")
        program = out
    assert str(program) == str(spec.program(path))
