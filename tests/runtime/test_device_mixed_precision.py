"""Master weights and state dtypes on a GPU, run through the stand-in CuPy of
tests/fakecupy.py (the generated CUDA C++, built by g++): the staged GPU path must give
the NumPy backend's numbers bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

import fakecupy  # noqa: E402

import optdsl  # noqa: E402
from optdsl import Param  # noqa: E402
from optdsl.optim import Adam  # noqa: E402

fake_cupy = fakecupy.fake_cupy
SHAPES = ((4, 3), (7,))


def _values(dtype):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in SHAPES]


def _grads(step, dtype):
    rng = np.random.default_rng(50 + step)
    return [(0.1 * rng.standard_normal(s)).astype(np.float32).astype(dtype) for s in SHAPES]


def _host(a):
    return a.get() if isinstance(a, fakecupy.ndarray) else np.asarray(a)


@pytest.mark.parametrize("flatten", [False, True], ids=["separate", "flat"])
@pytest.mark.parametrize("kwargs", [
    {"master_weights": True},
    {"state_dtypes": {"exp_avg": "float16"}},
    {"master_weights": True, "state_dtypes": {"exp_avg_sq": "float16"}},
], ids=["master", "state-dtype", "both"])
def test_gpu_mixed_precision_matches_the_numpy_backend(fake_cupy, kwargs, flatten):
    cp = fake_cupy
    host = [Param(v) for v in _values(np.float16)]
    gpu = [Param(cp.asarray(v)) for v in _values(np.float16)]
    if flatten:
        optdsl.flatten(host)
        optdsl.flatten(gpu)
    a = Adam(host, lr=1e-2, backend="numpy", **kwargs)
    b = Adam(gpu, lr=1e-2, **kwargs)
    for step in range(5):
        for p, q, g in zip(host, gpu, _grads(step, np.float16), strict=True):
            if flatten:
                p.grad[...] = g
                q.grad[...] = cp.asarray(g)
            else:
                p.grad, q.grad = g, cp.asarray(g)
        a.step()
        b.step()
    for p, q in zip(host, gpu, strict=True):
        assert isinstance(q.data, fakecupy.ndarray)
        np.testing.assert_array_equal(_host(q.data).view(np.uint16), p.data.view(np.uint16))
        assert set(a.state[p]) == set(b.state[q])
        for key, value in a.state[p].items():
            if key != "step":
                got = b.state[q][key]
                assert isinstance(got, fakecupy.ndarray) and got.dtype == value.dtype
                np.testing.assert_array_equal(_host(got), value)
