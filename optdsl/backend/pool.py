"""Running a chunked CPU kernel over a flat buffer on a small thread pool.

The buffer is cut into one contiguous range per thread, each a whole number of chunks,
and every thread runs the kernel on its range with its own scratch. The ops are
elementwise, so the result is bit-identical whatever the thread count and chunk size.
NumPy releases the GIL inside each ufunc call, which is where the time goes.

The thread count is ``optdsl.set_num_threads(n)``, else ``$OPTDSL_NUM_THREADS``, else the
cores this process may run on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Below this many elements per thread the pool costs more than it gains: a thread
# hand-off costs tens of microseconds, about what one chunk of Adam takes.
MIN_ELEMENTS_PER_THREAD = 1 << 17

_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def num_threads() -> int:
    """The threads CPU kernels use: set_num_threads(n), else $OPTDSL_NUM_THREADS, else
    the cores this process may run on."""
    if _threads is not None:
        return _threads
    env = os.environ.get("OPTDSL_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return _cores()


@functools.cache
def _cores() -> int:
    """The cores this process may run on (asked once: each ask is a system call, and a
    step over many unflattened params asks once per param)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Threads for CPU kernels (None: back to the default)."""
    global _threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads needs a whole number >= 1 (or None), got {n!r}")
    _threads = n


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size < size:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool, _pool_size = ThreadPoolExecutor(size, thread_name_prefix="optdsl"), size
    return _pool


def ranges(n: int, chunk: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous, chunk-aligned ranges covering [0, n), at most ``threads`` of them."""
    if n <= 0:
        return [(0, 0)]
    threads = max(1, min(threads, n // MIN_ELEMENTS_PER_THREAD))
    per = -(-n // threads)
    per = -(-per // chunk) * chunk
    return [(start, min(start + per, n)) for start in range(0, n, per)] or [(0, n)]


def run(kernel_run: Callable[..., None], n: int, buffers: Sequence[np.ndarray], args: tuple,
        scratch: Callable[[int], Any], chunk: int, threads: int | None = None) -> None:
    """Run ``kernel_run`` over ``n`` elements; ``scratch(i)`` is worker i's scratch."""
    parts = ranges(n, chunk, num_threads() if threads is None else threads)

    def work(i: int) -> None:
        start, stop = parts[i]
        with np.errstate(all="ignore"):  # errstate is per thread
            kernel_run(n, *buffers, args, scratch(i), chunk, start, stop)

    if len(parts) == 1:
        work(0)
        return
    for future in [_executor(len(parts)).submit(work, i) for i in range(len(parts))]:
        future.result()
