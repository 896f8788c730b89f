"""Checkpoints of params and state on a GPU, on a machine without one (tests/fakecupy.py):
saved through host copies, loaded back onto the GPU each param lives on, in place, and
the resumed run carries on bit for bit; a NumPy run's checkpoint loads onto a GPU too."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy, cuda_cpu

import fakecupy  # noqa: E402

import optdsl  # noqa: E402
from optdsl import Param  # noqa: E402
from optdsl.optim import Adam  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture


def _params(cp, seed, device=1):
    rng = np.random.default_rng(seed)
    values = {"w": rng.standard_normal((4, 3)).astype(np.float32),
              "b": rng.standard_normal(5).astype(np.float32)}
    if cp is None:
        return [Param(v, name=k) for k, v in values.items()]
    with cp.cuda.Device(device):
        return [Param(cp.asarray(v), name=k) for k, v in values.items()]


def _train(opt, params, first, last, cp=None):
    for step in range(first, last + 1):
        for i, p in enumerate(params):
            host = p.data.get() if cp is not None else p.data
            g = (0.5 * host + np.random.default_rng(10 * step + i).standard_normal(
                host.shape)).astype(host.dtype)
            if cp is None:
                p.grad = g
            else:
                with cp.cuda.Device(p.data.device.id):
                    p.grad = cp.asarray(g)
        opt.step()


def _host(a):
    return a.get() if isinstance(a, fakecupy.ndarray) else np.asarray(a)


def test_gpu_state_round_trips_onto_its_gpu_and_resumes_exactly(fake_cupy, tmp_path):
    params = _params(fake_cupy, 0)
    opt = Adam(params, lr=0.01, amsgrad=True)
    _train(opt, params, 1, 3, fake_cupy)
    path = tmp_path / "gpu.safetensors"
    optdsl.save(path, optimizer=opt, params=params)
    fresh = _params(fake_cupy, 1)
    arrays_before = [p.data for p in fresh]
    opt2 = Adam(fresh, lr=0.01, amsgrad=True)
    optdsl.load(path, optimizer=opt2, params=fresh)
    for p, q, a in zip(params, fresh, arrays_before, strict=True):
        assert q.data is a and q.data.device.id == 1  # written in place, on GPU 1
        assert _host(q.data).tobytes() == _host(p.data).tobytes()
        for name, value in opt.state[p].items():
            if name == "step":
                assert opt2.state[q][name] == value
                continue
            got = opt2.state[q][name]
            assert isinstance(got, fakecupy.ndarray) and got.device.id == 1
            assert _host(got).tobytes() == _host(value).tobytes()
    _train(opt, params, 4, 6, fake_cupy)
    _train(opt2, fresh, 4, 6, fake_cupy)
    for p, q in zip(params, fresh, strict=True):
        assert _host(q.data).tobytes() == _host(p.data).tobytes()


def test_a_numpy_checkpoint_loads_onto_a_gpu(fake_cupy, tmp_path):
    cpu = _params(None, 0)
    opt = Adam(cpu, lr=0.01, backend="numpy")
    _train(opt, cpu, 1, 2)
    path = tmp_path / "cpu.safetensors"
    optdsl.save(path, optimizer=opt, params=cpu)
    gpu = _params(fake_cupy, 3, device=0)
    opt2 = Adam(gpu, lr=0.01)
    optdsl.load(path, optimizer=opt2, params=gpu)
    for p, q in zip(cpu, gpu, strict=True):
        assert isinstance(q.data, fakecupy.ndarray)
        assert _host(q.data).tobytes() == p.data.tobytes()
        assert _host(opt2.state[q]["exp_avg"]).tobytes() == opt.state[p]["exp_avg"].tobytes()
