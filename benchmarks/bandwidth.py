"""The machine's memory bandwidth, measured STREAM-style in the same run as the optimizers.

Copy (``b[:] = a``) and triad (``a = b + s * c``) over float32 arrays far larger than the
last-level cache, split into one contiguous part per thread, best of several runs. Bytes
are counted as STREAM counts them: 8 per element for copy (read a, write b) and 12 for
triad (read b and c, write a); the write-allocate read of a destination is not counted.

Two ways to run the threads, reported side by side:

- ``numpy-pool``: a thread pool over contiguous parts, as optdsl's numpy backend runs its
  kernels. NumPy releases the GIL inside a ufunc, so the parts run at once. Copy is one
  ``np.copyto`` per part; triad goes through a cache-sized temporary chunk by chunk, so
  memory sees three streams, not five.
- ``numba-prange``: a ``numba.prange`` loop, when numba is installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# 64 Mi float32 = 256 MiB per array: eight times a 32 MiB L3, so every pass goes to DRAM.
ELEMENTS = 1 << 26
# Elements per triad chunk: 256 KiB of float32, a temporary that stays in L2.
TRIAD_CHUNK = 1 << 16
SCALAR = np.float32(3.0)


def best_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # first touch of the pages, thread start-up, JIT
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _parts(n: int, threads: int) -> list[slice]:
    per = -(-n // threads)
    return [slice(lo, min(lo + per, n)) for lo in range(0, n, per)]


def _numpy_pool(a, b, c, threads: int, repeats: int) -> dict[str, float]:
    parts = _parts(a.size, threads)
    temps = [np.empty(TRIAD_CHUNK, a.dtype) for _ in parts]

    def copy_part(k: int) -> None:
        np.copyto(b[parts[k]], a[parts[k]])

    def triad_part(k: int) -> None:
        part, tmp = parts[k], temps[k]
        for lo in range(part.start, part.stop, TRIAD_CHUNK):
            hi = min(lo + TRIAD_CHUNK, part.stop)
            t = tmp[: hi - lo]
            np.multiply(c[lo:hi], SCALAR, out=t)
            np.add(b[lo:hi], t, out=a[lo:hi])

    with ThreadPoolExecutor(threads) as pool:
        def across(work: Callable[[int], None]) -> Callable[[], None]:
            return lambda: list(pool.map(work, range(len(parts))))

        return {"copy": best_seconds(across(copy_part), repeats),
                "triad": best_seconds(across(triad_part), repeats)}


def _numba_prange(a, b, c, threads: int, repeats: int) -> dict[str, float]:
    import numba

    @numba.njit(parallel=True)
    def copy(src, dst):
        for i in numba.prange(src.size):
            dst[i] = src[i]

    @numba.njit(parallel=True)
    def triad(dst, x, y, s):
        for i in numba.prange(dst.size):
            dst[i] = x[i] + s * y[i]

    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return {"copy": best_seconds(lambda: copy(a, b), repeats),
                "triad": best_seconds(lambda: triad(a, b, c, SCALAR), repeats)}
    finally:
        numba.set_num_threads(previous)


def measure(threads: int, repeats: int, elements: int = ELEMENTS) -> dict:
    """Copy and triad GB/s for each way of threading available here, and the reference:
    the method with the highest copy bandwidth."""
    a = np.full(elements, 1.0, np.float32)
    b = np.full(elements, 2.0, np.float32)
    c = np.full(elements, 0.5, np.float32)
    copy_bytes, triad_bytes = 2 * a.itemsize * elements, 3 * a.itemsize * elements
    methods: dict[str, Callable] = {"numpy-pool": _numpy_pool}
    notes = []
    try:
        import numba  # noqa: F401
    except ImportError:
        notes.append("numba not installed: no numba-prange measurement")
    else:
        methods["numba-prange"] = _numba_prange
    results = {}
    for name, run in methods.items():
        seconds = run(a, b, c, threads, repeats)
        results[name] = {"copy_gbps": copy_bytes / seconds["copy"] / 1e9,
                         "triad_gbps": triad_bytes / seconds["triad"] / 1e9}
    reference = max(results, key=lambda m: results[m]["copy_gbps"])
    return {"threads": threads, "elements": elements, "array_bytes": a.nbytes,
            "repeats": repeats, "methods": results, "reference": reference,
            "copy_gbps": results[reference]["copy_gbps"], "notes": notes}
