"""The numpy backend's thread pool: same bits for any thread count, and sane settings."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl.backend import pool
from optdsl.optim import Adam, RMSprop


@pytest.fixture(autouse=True)
def restore_threads():
    yield
    optdsl.set_num_threads(None)


def trajectory(cls, threads, n=pool.MIN_ELEMENTS_PER_THREAD * 5 + 123, **hypers):
    optdsl.set_num_threads(threads)
    rng = np.random.default_rng(0)
    p = optdsl.Param(rng.standard_normal(n).astype(np.float32))
    opt = cls([p], **hypers)
    for step in range(3):
        p.grad = np.random.default_rng(step).standard_normal(n).astype(np.float32)
        opt.step()
    return p.data, opt.state_dict()["state"][0]


@pytest.mark.parametrize("cls,hypers", [(Adam, {"amsgrad": True}),
                                        (RMSprop, {"centered": True, "momentum": 0.9})])
def test_results_are_bit_identical_for_any_thread_count(cls, hypers):
    reference, ref_state = trajectory(cls, 1, **hypers)
    for threads in (2, 3, 8):
        data, state = trajectory(cls, threads, **hypers)
        np.testing.assert_array_equal(data, reference)
        for key, value in ref_state.items():
            np.testing.assert_array_equal(state[key], value)


def test_ranges_cover_the_buffer_in_whole_chunks():
    n, chunk = pool.MIN_ELEMENTS_PER_THREAD * 7 + 5, 1000
    parts = pool.ranges(n, chunk, 3)
    assert len(parts) == 3
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    assert all(start % chunk == 0 for start, _ in parts)
    assert pool.ranges(10, chunk, 8) == [(0, 10)]  # small buffers stay on one thread


def test_thread_settings():
    optdsl.set_num_threads(3)
    assert optdsl.num_threads() == 3
    optdsl.set_num_threads(None)
    assert optdsl.num_threads() >= 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="whole number"):
            optdsl.set_num_threads(bad)


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("OPTDSL_NUM_THREADS", "5")
    assert optdsl.num_threads() == 5


@pytest.mark.parametrize("cls,hypers", [(Adam, {"amsgrad": True}),
                                        (RMSprop, {"centered": True, "momentum": 0.9})])
def test_results_are_bit_identical_for_any_chunk_size(cls, hypers, monkeypatch):
    import optdsl.backend.numpy_backend as numpy_backend

    reference, ref_state = trajectory(cls, 2, backend="numpy", **hypers)
    for chunk in (1000, 4096, 1 << 20):
        monkeypatch.setattr(numpy_backend, "CHUNK", chunk)
        data, state = trajectory(cls, 2, backend="numpy", **hypers)
        np.testing.assert_array_equal(data, reference)
        for key, value in ref_state.items():
            np.testing.assert_array_equal(state[key], value)
