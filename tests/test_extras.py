"""Kernels with extra outputs (optdsl.extras): tracks, the update, and ∂p/∂lr.

Without extras, a spec's kernels are byte for byte those of the same spec without its
``track`` lines, in every backend. With them, each extra is one more output buffer of
the same kernel, and every backend computes what the reference interpreter computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl import cache
from optdsl import hypers as H
from optdsl.api import make_class
from optdsl.backend import cupy_backend
from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.errors import InternalCompilerError, NotAffineError, OptdslError
from optdsl.extras import lower_with_extras, normalize
from optdsl.interp import interpret
from optdsl.optim import Adam, load
from optdsl.render import buffer_ident, quoted_buffer
from tests.doc_blocks import code_blocks, run_blocks
from tests.property.harness import assert_same_bits, run_kernel

ALL = ("track", "update", "dlr:lr")
NUMPY = get_backend("numpy")
CUPY_RENDER = cupy_backend.CupyBackend()  # renders without cupy or a GPU


def _backends():
    """Every backend that renders here: numpy, numba where installed, and cupy's source
    (its backend object renders without cupy; through Cls.source where cupy is installed)."""
    out = [NUMPY, CUPY_RENDER]
    if "numba" in optdsl.backends():
        out.insert(1, get_backend("numba"))
    return out


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")


def _default_path(spec, **hypers):
    return spec.host["decide"](H.resolve(spec.hypers, hypers, spec.name), 1)


# --- the API --------------------------------------------------------------------------

def test_adam_with_every_extra_writes_three_more_buffers():
    spec = Adam._spec
    kernel = spec.kernel(NUMPY, _default_path(spec), ALL)
    assert kernel.buffers == ("p", "g", "exp_avg", "exp_avg_sq", "track:effective_lr",
                              "dlr:lr", "diag:update")
    assert kernel.outputs == ("p", "exp_avg", "exp_avg_sq", "track:effective_lr", "dlr:lr",
                              "diag:update")
    plain = spec.kernel(NUMPY, _default_path(spec))
    assert plain.buffers == ("p", "g", "exp_avg", "exp_avg_sq")


def test_extras_are_normalised_and_part_of_the_cache_keys(tmp_path, monkeypatch):
    assert normalize(("update", "track", "update", "dlr:lr")) == ("dlr:lr", "track", "update")
    assert normalize("track") == ("track",) and normalize(()) == ()
    spec = Adam._spec
    path = _default_path(spec)
    k = spec.kernel(NUMPY, path, ("update", "track", "update"))
    assert spec.kernel(NUMPY, path, ["track", "update"]) is k
    assert (NUMPY.name, path, ("track", "update")) in spec.kernels
    assert spec.kernel(NUMPY, path) is not k
    # On disk: one file per (spec, backend, path, extras).
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path))
    cache.clear_memory()
    fresh = load_spec(spec.text, "adam.opt")
    sources = {fresh.kernel(NUMPY, path, extras).source for extras in ((), ("track",),
                                                                      ("update",))}
    assert len(sources) == 3 and len(list(tmp_path.glob("*.py"))) == 3


@pytest.mark.parametrize("bad", ["tracks", "dlr:", "dlr:1x", "diag:update", "track:lr", 3,
                                 "dlr:lr; import os"])
def test_an_unknown_extra_is_an_error(bad):
    with pytest.raises(OptdslError, match="unknown kernel extra"):
        Adam._spec.kernel(NUMPY, _default_path(Adam._spec), ("track", bad))


def test_dlr_of_a_step_that_is_not_affine_raises_when_compiling():
    spec = Adam._spec
    with pytest.raises(NotAffineError, match="divides by a value that depends on eps"):
        spec.kernel(NUMPY, _default_path(spec), ("dlr:eps",))
    with pytest.raises(NotAffineError, match="no such hyper"):
        spec.kernel(NUMPY, _default_path(spec), ("dlr:momentum",))


def test_buffer_names_render_as_prefixed_identifiers():
    assert buffer_ident("exp_avg", "c_") == "c_exp_avg"
    assert buffer_ident("track:effective_lr", "c_") == "ct_effective_lr"
    assert buffer_ident("diag:update", "b_") == "bd_update"
    assert buffer_ident("dlr:lr", "b_") == "bh_lr"
    assert quoted_buffer("track:x") == "'track:x'"
    for bad in ("track:a b", "track:", "os:system", "track:x:y", "track:x'", "p q", ""):
        with pytest.raises(InternalCompilerError):
            buffer_ident(bad, "c_")
        with pytest.raises(InternalCompilerError):
            quoted_buffer(bad)
    with pytest.raises(InternalCompilerError):
        buffer_ident("track:x", "")  # a prefix without '_' could meet a spec name


# --- zero overhead without extras -------------------------------------------------------

def _without_tracks(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.lstrip().startswith("track "))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_track_lines_change_no_kernel_without_extras(name):
    """The stdlib's track lines come last, so no other line moves: every path's source,
    in every backend, and the host code, are those of the spec without them."""
    spec = load(name)._spec
    assert "    track effective_lr = " in spec.text
    bare = load_spec(_without_tracks(spec.text), spec.filename)
    assert bare.text != spec.text
    assert bare.host_source == spec.host_source
    for backend in _backends():
        for path in spec.paths():
            assert spec.kernel(backend, path).source == bare.kernel(backend, path).source, \
                (backend.name, path)
    if "cupy" in optdsl.backends():
        assert load(name).source("cupy") == make_class(bare).source("cupy")
    assert load(name).source("numpy") == make_class(bare).source("numpy")


def test_a_track_in_the_middle_changes_nothing_either():
    """Tracks are not lowered without extras: a track between two statements (in place of
    a comment, so that lines keep their numbers) leaves every value's number as it was."""
    text = load("Adam")._spec.text.replace(
        "    v = exp_avg_sq\n", "    v = exp_avg_sq\n    # (a comment)\n")
    tracked = text.replace("    # (a comment)\n", "    track second_moment = v * 1\n")
    assert tracked != text
    a, b = load_spec(text, "adam.opt"), load_spec(tracked, "adam.opt")
    for backend in _backends():
        for path in a.paths():
            assert a.kernel(backend, path).source == b.kernel(backend, path).source


# --- what the outputs hold -----------------------------------------------------------

def _buffers(kernel, seed: int, dtype, n: int = 500) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for b in kernel.buffers:
        if ":" in b:  # extra outputs: filled with NaN, so an element not written shows
            out[b] = np.full(n, np.nan, dtype)
        elif b in ("p", "g"):
            out[b] = rng.standard_normal(n).astype(dtype)
        else:
            out[b] = (rng.random(n) + 0.01).astype(dtype)
    return out


CASES = [("Adam", {}), ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
         ("AdamW", {"maximize": True}), ("SGD", {"momentum": 0.9, "nesterov": True})]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "hypers"), CASES, ids=lambda x: str(x))
def test_extra_outputs_match_the_interpreter_in_every_cpu_backend(name, hypers, dtype):
    spec = load(name)._spec
    values = H.resolve(spec.hypers, {"lr": 0.01, **hypers}, name)
    t = 3
    path = spec.host["decide"](values, t)
    want_program = lower_with_extras(spec.checked, path, normalize(ALL))
    for backend in _backends():
        if backend is CUPY_RENDER:
            continue
        kernel = spec.kernel(backend, path, ALL)
        before = _buffers(kernel, seed=len(hypers), dtype=np.dtype(dtype))
        want = interpret(want_program, values, t, before)
        got = run_kernel(kernel, values, t, before, chunk=128)
        for out in kernel.outputs:
            assert_same_bits(got[out], want[out], f"{backend.name} {out}")
        # What each output means: the update is the change of p; for Adam (p - lr * B),
        # it is -effective_lr * exp_avg and lr * dlr:lr (up to rounding: p's last digits).
        update = got["diag:update"]
        np.testing.assert_array_equal(update, got["p"] - before["p"])
        assert not np.isnan(got["dlr:lr"]).any() and np.any(update != 0)
        if name == "Adam":
            tol = {"rtol": 1e-5 if dtype == "float32" else 1e-12,
                   "atol": 4 * np.finfo(dtype).eps * np.abs(before["p"]).max()}
            np.testing.assert_allclose(update, -got["track:effective_lr"] * got["exp_avg"],
                                       **tol)
            np.testing.assert_allclose(update, values["lr"] * got["dlr:lr"], **tol)


def test_a_host_track_is_broadcast_and_a_branch_track_is_on_its_paths_only():
    text = '''optimizer Rule
"""A rule for the extras tests."""

hyper lr = 0.1
hyper nesterov = False

update:
    track lr_doubled = lr * 2
    if nesterov:
        step = lr * (g + p)
        track step_size = step
    else:
        step = lr * g
    p = p - step
'''
    spec = load_spec(text, "rule.opt")
    on, off = (0,), (1,)
    k_on, k_off = spec.kernel(NUMPY, on, ("track",)), spec.kernel(NUMPY, off, ("track",))
    assert k_on.outputs == ("p", "track:lr_doubled", "track:step_size")
    assert k_off.outputs == ("p", "track:lr_doubled")
    values = H.resolve(spec.hypers, {}, "Rule")
    before = {"p": np.arange(4, dtype=np.float32), "g": np.ones(4, np.float32),
              "track:lr_doubled": np.zeros(4, np.float32),
              "track:step_size": np.zeros(4, np.float32)}
    got = run_kernel(k_on, values, 1, {b: before[b] for b in k_on.buffers}, chunk=3)
    np.testing.assert_array_equal(got["track:lr_doubled"], np.float32(0.2))
    np.testing.assert_array_equal(got["track:step_size"],
                                  np.float32(0.1) * (np.float32(1) + before["p"]))


def test_update_is_exactly_zero_where_the_path_leaves_p_alone():
    text = ('optimizer Late\n"""Moves after step 100 only."""\nhyper lr = 0.1\n'
            "update:\n    if t > 100:\n        p = p - lr * g\n")
    spec = load_spec(text, "late.opt")
    kernel = spec.kernel(NUMPY, (1,), ("update", "dlr:lr"))
    assert kernel.outputs == ("dlr:lr", "diag:update")
    p = np.array([np.inf, np.nan, -1.0], np.float32)
    before = {"p": p, "g": np.ones(3, np.float32), "diag:update": np.full(3, 7, np.float32),
              "dlr:lr": np.full(3, 7, np.float32)}
    got = run_kernel(kernel, H.resolve(spec.hypers, {}, "Late"), 1, before, chunk=8)
    np.testing.assert_array_equal(got["diag:update"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(got["dlr:lr"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(got["p"], p)


def test_the_language_pages_diagnostics_example_prints_what_it_says(capsys):
    page = Path(__file__).parents[1] / "docs" / "language.md"
    blocks = [b for b in code_blocks(page, "python") if '"dlr:lr"' in b]
    assert len(blocks) == 1
    run_blocks(blocks, "language.md", capsys)


def test_an_exported_module_refuses_extras_clearly():
    """``optdsl compile -o`` modules hold the plain kernels only."""
    import types

    from optdsl.export import render_module

    module = types.ModuleType("exported_adam")
    exec(compile(render_module(Adam._spec), "exported_adam.py", "exec"), module.__dict__)  # noqa: S102
    spec = module.Adam._spec
    path = next(iter(spec.factories))
    assert spec.kernel(NUMPY, path, ()).buffers == spec.kernel(NUMPY, path).buffers
    with pytest.raises(OptdslError, match="without extra outputs"):
        spec.kernel(NUMPY, path, ("track",))
