"""HypergradientLR on params that live on a GPU, on a machine without one: the CuPy
backend's kernels (its CUDA C++, run on the CPU by tests/fakecupy.py) write the
derivative on the device, the dot products run there, and the lrs and params match a
NumPy run to rounding."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy

import fakecupy  # noqa: E402

import optdsl  # noqa: E402
from optdsl.autotune import HypergradientLR  # noqa: E402
from optdsl.optim import SGD, Adam  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture: cupy is the fake for one test

SHAPES = ((4, 3), (5,), (2, 2))


def _run(optimizer, hypers, beta, cp=None, steps=6):
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s) for s in SHAPES]
    place = (lambda a: a.copy()) if cp is None else cp.asarray
    params = [optdsl.Param(place(v)) for v in values]
    opt = optimizer([{"params": params[:1], "lr": 0.02}, {"params": params[1:], "lr": 0.01}],
                    **hypers)
    tuner = HypergradientLR(opt, beta=beta)
    lrs = []
    for step in range(steps):
        g = np.random.default_rng(step)
        for p, v in zip(params, values, strict=True):
            p.grad = place(g.standard_normal(v.shape) + 0.2)
        opt.step()
        lrs.append([group["lr"] for group in opt.param_groups])
    data = [p.data.get() if cp is not None else p.data for p in params]
    return lrs, data, tuner


@pytest.mark.parametrize(("optimizer", "hypers", "beta"), [
    (SGD, {"momentum": 0.9}, 0.01),
    (Adam, {"weight_decay": 0.1, "decoupled_weight_decay": True}, 1e-3),
], ids=["sgd-momentum", "adamw"])
def test_params_on_a_gpu_tune_as_on_the_host(fake_cupy, optimizer, hypers, beta):
    gpu_lrs, gpu_data, tuner = _run(optimizer, {**hypers, "backend": "cupy"}, beta, fake_cupy)
    cpu_lrs, cpu_data, _ = _run(optimizer, {**hypers, "backend": "numpy"}, beta)
    np.testing.assert_allclose(gpu_lrs, cpu_lrs, rtol=1e-12)
    for a, b in zip(gpu_data, cpu_data, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert gpu_lrs[-1] != gpu_lrs[0]
    assert all(isinstance(h, float) for h in tuner.last_hypergradients)
