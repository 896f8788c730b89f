"""Per-tensor reductions (:mod:`optdsl.stages`) for the numba backend, on numba's threads.

Each reduction splits the array into :data:`CHUNKS` fixed chunks, accumulates each chunk in
float64 on some thread, then combines the partial results in chunk order: the result does
not depend on the number of threads. Imported only when the numba backend reduces.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CHUNKS = 64


@njit(parallel=True, cache=True)
def sum_of(x, square):  # pragma: no cover - compiled by numba
    n = x.shape[0]
    size = (n + CHUNKS - 1) // CHUNKS
    part = np.zeros(CHUNKS)
    for c in prange(CHUNKS):
        acc = 0.0
        for i in range(c * size, min(n, (c + 1) * size)):
            v = np.float64(x[i])
            acc += v * v if square else v
        part[c] = acc
    total = 0.0
    for c in range(CHUNKS):
        total += part[c]
    return total


@njit(parallel=True, cache=True)
def maxabs_of(x):  # pragma: no cover - compiled by numba
    n = x.shape[0]
    size = (n + CHUNKS - 1) // CHUNKS
    part = np.zeros(CHUNKS)
    for c in prange(CHUNKS):
        acc = 0.0
        for i in range(c * size, min(n, (c + 1) * size)):
            v = abs(np.float64(x[i]))
            if v > acc or v != v:  # a nan, once seen, stays (as in NumPy's max)
                if acc == acc:
                    acc = v
        part[c] = acc
    out = 0.0
    for c in range(CHUNKS):
        v = part[c]
        if (v > out or v != v) and out == out:
            out = v
    return out
