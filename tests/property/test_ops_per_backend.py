"""Each elementwise op, on every backend, against the interpreter, on the values where
implementations part ways: signed zeros, infinities, NaN, subnormals, huge and tiny
numbers, halves (floor, remainders), and whatever hypothesis adds.

Exact ops (+ - * / % neg abs sqrt rsqrt min max floor sign where, comparisons, and/or/not,
constants and host scalars meeting float32 buffers) must match bit for bit. exp, log, pow,
cos, sin and tanh may come from the C library in a compiled backend where the interpreter
uses NumPy's own SIMD code: they must agree on which results are NaN, and within
``MAX_ULPS`` elsewhere (infinities counted as one step past the largest finite value).
Measured with NumPy 2.4 on AVX2 against glibc 2.x through numba: at most 4 ulp (float32
log), 3 (float32 exp and tanh, float64 tanh), 1 (float32 cos and sin), 0 (pow, float64
exp, log, cos, sin); the bound leaves room for other CPUs and libraries.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optdsl.compiler import load_spec
from optdsl.interp import interpret
from tests.property.harness import assert_same_bits, assert_within_ulps, run_kernel

MAX_ULPS = 8

# Rule bodies over p, g (elementwise) and lr (a host scalar, 0.3 by default).
EXACT = (
    "p = p + g", "p = p - g", "p = p * g", "p = p / g", "p = p % g", "p = -g",
    "p = abs(g)", "p = sqrt(g)", "p = rsqrt(g)", "p = floor(g)", "p = sign(g)",
    "p = min(p, g)", "p = max(p, g)", "p = min(g, -0.0)", "p = max(0.0, g)",
    "p = where(p < g, p, g)", "p = where(p <= g, 1, 0)", "p = where(p > g, 1, 0)",
    "p = where(p >= g, 1, 0)", "p = where(p == g, 1, 0)", "p = where(p != g, 1, 0)",
    "p = where((p < g) and (g < 1), p, g)", "p = where((p < g) or (g != g), p, g)",
    "p = where(not (p < g), p, g)",
    # float literals and host scalars are the buffers' type where they meet a tensor
    "p = p * 0.1 + g * lr", "p = 0.1 - g / 3", "p = p % -2.5", "p = 7 % g",
    "p = g * (lr - 1 / 3)", "p = where(g < lr, lr, g)",
)
INEXACT = (
    "p = exp(g)", "p = log(g)", "p = cos(g)", "p = sin(g)", "p = tanh(g)", "p = p ** g",
    "p = g ** 2", "p = 0.5 ** g", "p = abs(p) ** 0.5", "p = exp(p) * log(abs(g))",
)

EDGES = (0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, -0.5, 1.5, -2.5, 3.0, -7.0,
         0.1, 2.0 ** 0.5, 1e-30, -1e-30, 1e30, -1e30, 5e-324, -1e-310, 1e-40, 3.4e38,
         1.7e308, 88.72, -103.9, 709.7, -745.1, 1e4, -1e6, 0.3)
DTYPES = (np.float32, np.float64)


@cache
def _spec(body: str):
    return load_spec(f"optimizer Op\nhyper lr = 0.3\nupdate:\n    {body}\n", "op.opt")


def _grid(dtype, extra_p, extra_g) -> dict[str, np.ndarray]:
    """Every pair of edge values, then the drawn ones."""
    with np.errstate(over="ignore"):
        edges = np.array(EDGES, dtype=dtype)
    p, g = np.meshgrid(edges, edges)
    return {"p": np.concatenate([p.reshape(-1), np.array(extra_p, dtype)]),
            "g": np.concatenate([g.reshape(-1), np.array(extra_g, dtype)])}


def _drawn(width: int):
    return st.lists(st.tuples(st.floats(width=width), st.floats(width=width)), max_size=40)


def _check(backend, body: str, dtype, pairs, lr, exact: bool) -> None:
    spec = _spec(body)
    (path,) = spec.paths()
    kernel = spec.kernel(backend, path)
    buffers = _grid(dtype, [a for a, _ in pairs], [b for _, b in pairs])
    hypers = {"lr": lr}
    with np.errstate(all="ignore"):  # a huge lr overflows float32: inf, as intended
        want = interpret(spec.unoptimized(path), hypers, 1, buffers)["p"]
    got = run_kernel(kernel, hypers, 1, buffers, 64)["p"]
    what = f"{backend.name} {np.dtype(dtype).name}: {body}"
    if exact:
        assert_same_bits(got, want, what)
    else:
        assert_within_ulps(got, want, MAX_ULPS, what)


SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("body", EXACT)
def test_exact_op_is_bit_identical(backend, body, dtype):
    @SETTINGS
    @given(pairs=_drawn(np.dtype(dtype).itemsize * 8),
           lr=st.sampled_from((0.3, -0.0, 1e-8, 1e300)) | st.floats(width=64))
    def check(pairs, lr):
        _check(backend, body, dtype, pairs, lr, exact=True)

    check()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("body", INEXACT)
def test_transcendental_op_is_within_ulps(backend, body, dtype):
    @SETTINGS
    @given(pairs=_drawn(np.dtype(dtype).itemsize * 8))
    def check(pairs):
        _check(backend, body, dtype, pairs, 0.3, exact=backend.name == "numpy")

    check()


def test_ulp_check_is_not_vacuous():
    """The ulp comparison catches a NaN in the wrong place and a value one step too far."""
    from tests.property.harness import ulps_apart

    one = np.array([1.0], np.float32)
    assert list(ulps_apart(np.nextafter(one, 2), one)) == [1]
    assert list(ulps_apart(np.array([-0.0]), np.array([0.0]))) == [0]
    assert list(ulps_apart(np.array([np.inf], np.float32),
                           np.array([np.finfo(np.float32).max], np.float32))) == [1]
    assert list(ulps_apart(np.array([-1e-45], np.float32), np.array([1e-45], np.float32))) == [2]
    with pytest.raises(AssertionError, match="NaN differs"):
        assert_within_ulps(np.array([np.nan, 1.0]), np.array([1.0, 1.0]), 8, "x")
    far = np.array([1.0 + 9 * np.finfo(np.float64).eps])
    with pytest.raises(AssertionError, match="more than 8 ulp"):
        assert_within_ulps(far, np.array([1.0]), 8, "x")
    assert_within_ulps(np.array([1.0 + 8 * np.finfo(np.float64).eps]), np.array([1.0]), 8, "x")
