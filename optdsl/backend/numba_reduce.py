"""Per-tensor reductions (:mod:`optdsl.stages`) for the numba backend, on numba's threads,
bit for bit as :func:`optdsl.stages.reduce_values` computes them.

``reduce_values`` widens the array to float64 a chunk of ``CHUNK`` elements at a time,
sums each chunk with NumPy (pairwise summation), and adds the chunks' sums in order. Here
the chunks are summed in parallel with the same pairwise summation, re-written from
NumPy's ``pairwise_sum`` (numpy/_core/src/umath/loops_utils.h.src: blocks of at most 128
added by eight accumulators, halved at multiples of 8 above that), then added in order:
the same result, whatever the number of threads. Imported only when the numba backend
reduces.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..stages import CHUNK


@njit(cache=True)
def _value(a, i, square):  # pragma: no cover - compiled by numba
    v = np.float64(a[i])
    return v * v if square else v


@njit(cache=True)
def _pairwise(a, lo, n, square):  # pragma: no cover - compiled by numba
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += _value(a, i, square)
        return res
    if n <= 128:
        r0, r1 = _value(a, lo, square), _value(a, lo + 1, square)
        r2, r3 = _value(a, lo + 2, square), _value(a, lo + 3, square)
        r4, r5 = _value(a, lo + 4, square), _value(a, lo + 5, square)
        r6, r7 = _value(a, lo + 6, square), _value(a, lo + 7, square)
        i = 8
        while i < n - (n % 8):
            j = lo + i
            r0 += _value(a, j, square)
            r1 += _value(a, j + 1, square)
            r2 += _value(a, j + 2, square)
            r3 += _value(a, j + 3, square)
            r4 += _value(a, j + 4, square)
            r5 += _value(a, j + 5, square)
            r6 += _value(a, j + 6, square)
            r7 += _value(a, j + 7, square)
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += _value(a, lo + i, square)
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(a, lo, n2, square) + _pairwise(a, lo + n2, n - n2, square)


@njit(parallel=True, cache=True)
def sum_of(x, square):  # pragma: no cover - compiled by numba
    n = x.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    part = np.zeros(chunks)
    for c in prange(chunks):
        lo = c * CHUNK
        part[c] = _pairwise(x, lo, min(n, lo + CHUNK) - lo, square)
    total = 0.0
    for c in range(chunks):
        total += part[c]
    return total


@njit(parallel=True, cache=True)
def maxabs_of(x):  # pragma: no cover - compiled by numba
    n = x.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    part = np.zeros(chunks)
    for c in prange(chunks):
        acc = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            v = abs(np.float64(x[i]))
            if (v > acc or v != v) and acc == acc:  # a nan, once seen, stays (np.max's)
                acc = v
        part[c] = acc
    out = 0.0
    for c in range(chunks):
        v = part[c]
        if (v > out or v != v) and out == out:
            out = v
    return out
