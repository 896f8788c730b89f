"""Running a generated kernel by hand, the way the runtime does, and comparing bits.

``run_kernel`` mirrors ``optdsl.runtime.Optimizer._step_param``: host arguments come from
the kernel's float64 prologue and are cast to the parameter's dtype; scratch is
``(float slots, chunk)`` and ``(bool slots, chunk)``; the kernel walks flat buffers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np

SPECIALS = (0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e-30, 5e-324, 1.0, -1.0)


def make_buffers(names, shape, dtype, seed: int, specials: bool) -> dict[str, np.ndarray]:
    """Random p, g and states of one shape and dtype; sometimes with inf/nan/zeros mixed in."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        scale = 10.0 ** rng.integers(-3, 3)
        a = (rng.standard_normal(shape) * scale).astype(dtype)
        if specials and a.size:
            k = int(rng.integers(1, min(a.size, 4) + 1))
            a.reshape(-1)[rng.integers(0, a.size, k)] = rng.choice(SPECIALS, k)
        out[name] = a
    return out


def kernel_args(kernel, hypers, t, dtype) -> tuple:
    """The host prologue, cast as the runtime casts it (floats to the buffers' dtype)."""
    with np.errstate(all="ignore"):
        return tuple(np.dtype(dtype).type(a) if isinstance(a, np.floating) else a
                     for a in kernel.host_args(hypers, t))


def run_kernel(kernel, hypers, t, buffers, chunk: int, pieces: int = 1) -> dict:
    """One step on copies of ``buffers``; returns every buffer after the step.

    With ``pieces > 1`` the flat range is cut into that many parts, each run on its own
    thread with its own scratch, as a thread pool would run it.
    """
    dtype = buffers["p"].dtype
    work = {name: np.array(a, copy=True) for name, a in buffers.items()}
    flat = {name: a.reshape(-1) for name, a in work.items()}
    n = flat["p"].size
    args = kernel_args(kernel, hypers, t, dtype)
    n_float, n_bool = kernel.scratch

    def run(start, stop):
        scratch = (np.empty((n_float, chunk), dtype), np.empty((n_bool, chunk), bool))
        with np.errstate(all="ignore"):
            kernel.run(n, *(flat[b] for b in kernel.buffers), args, scratch, chunk,
                       start, stop)

    if pieces <= 1:
        run(0, n)
    else:
        cuts = np.linspace(0, n, pieces + 1).astype(int)
        with ThreadPoolExecutor(pieces) as pool:
            for f in [pool.submit(run, lo, hi) for lo, hi in pairwise(cuts)]:
                f.result()
    return work


def bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bit for bit: equal values (NaN equal to NaN), and the same sign on every zero."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    same = np.array_equal(got, want, equal_nan=True)
    if same:
        both = ~np.isnan(want)
        same = np.array_equal(np.signbit(got[both]), np.signbit(want[both]))
    if not same:
        bad = np.flatnonzero(bits(got).reshape(-1) != bits(want).reshape(-1))
        i = bad[0]
        raise AssertionError(
            f"{what}: {bad.size} of {got.size} elements differ; first at flat index {i}: "
            f"got {got.reshape(-1)[i]!r}, want {want.reshape(-1)[i]!r}")


def ulps_apart(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """How many representable values lie between ``got`` and ``want``, element by element
    (Python ints). The two zeros are 0 apart; an infinity is one step past the largest
    finite value. Meaningless where either is NaN."""
    itemsize = got.dtype.itemsize
    signed = {4: np.int32, 8: np.int64}[itemsize]
    magnitude = (1 << (8 * itemsize - 1)) - 1

    def ordered(a):
        i = np.ascontiguousarray(a).reshape(-1).view(signed).astype(np.int64)
        return [int(x) if x >= 0 else -(int(x) & magnitude) for x in i]

    return np.array([abs(a - b) for a, b in zip(ordered(got), ordered(want), strict=True)],
                    dtype=object)


def assert_within_ulps(got: np.ndarray, want: np.ndarray, ulps: int, what: str) -> None:
    """NaN exactly where ``want`` is NaN; every other value at most ``ulps`` apart."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    nan_got, nan_want = np.isnan(got).reshape(-1), np.isnan(want).reshape(-1)
    if not np.array_equal(nan_got, nan_want):
        i = np.flatnonzero(nan_got != nan_want)[0]
        raise AssertionError(f"{what}: NaN differs at flat index {i}: got "
                             f"{got.reshape(-1)[i]!r}, want {want.reshape(-1)[i]!r}")
    keep = ~nan_want
    apart = ulps_apart(got.reshape(-1)[keep], want.reshape(-1)[keep])
    if apart.size and max(apart) > ulps:
        i = int(np.argmax(apart.astype(float)))
        raise AssertionError(
            f"{what}: {sum(a > ulps for a in apart)} of {apart.size} values more than {ulps} "
            f"ulp apart; worst {apart[i]} ulp: got {got.reshape(-1)[keep][i]!r}, want "
            f"{want.reshape(-1)[keep][i]!r}")
