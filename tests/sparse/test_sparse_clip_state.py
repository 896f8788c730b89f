"""Row-sparse gradients with clipping (``optdsl.clip_grad_norm_`` / ``clip_grad_value_``
and ``max_grad_norm``), ``skip_nonfinite``, ``zero_grad``, the state_dict, checkpoints,
and on a (fake) GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sparse_util import dense, sparse_grad

import optdsl
from optdsl import Param, RowSparse, optim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy, cuda_cpu

import fakecupy  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture: cupy is the fake for one test

SHAPES = ((12, 3), (9,), (10, 3, 2))


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return [Param(rng.uniform(-1, 1, s)) for s in SHAPES]


def test_clip_grad_norm_reads_and_scales_the_dense_equivalent():
    params = _params()
    twins = _params()
    for k, (p, q) in enumerate(zip(params, twins, strict=True)):
        p.grad = sparse_grad(1, p.data, k)
        q.grad = dense(p.grad, p.data.shape)
    norm = optdsl.clip_grad_norm_(params, 0.5)
    want = optdsl.clip_grad_norm_(twins, 0.5)
    np.testing.assert_allclose(norm, want, rtol=1e-12)
    assert norm > 0.5  # it did clip
    for p, q in zip(params, twins, strict=True):
        assert p.grad.is_coalesced()
        np.testing.assert_allclose(p.grad.to_dense(p.data.shape), q.grad, rtol=1e-12)
    for norm_type in (1.0, 3.0, np.inf, 0.0):
        a = optdsl.clip_grad_norm_(params, 100.0, norm_type=norm_type)
        b = optdsl.clip_grad_norm_(twins, 100.0, norm_type=norm_type)
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=str(norm_type))


def test_clip_grad_value_clamps_the_summed_rows():
    """Row 1 twice at 0.4 is 0.8 in the dense gradient: clamped to 0.5, not left at 0.8."""
    p = Param(np.zeros((3, 2)), grad=RowSparse([1, 2, 1], np.full((3, 2), 0.4)))
    optdsl.clip_grad_value_([p], 0.5)
    np.testing.assert_array_equal(p.grad.to_dense((3, 2)), [[0, 0], [0.5, 0.5], [0.4, 0.4]])


def test_an_empty_row_sparse_gradient_has_norm_zero():
    p = Param(np.zeros((3, 2)), grad=RowSparse([], np.zeros((0, 2))))
    assert optdsl.clip_grad_norm_([p], 1.0, norm_type="inf") == 0


@pytest.mark.parametrize("lazy", [False, True])
def test_max_grad_norm_clips_row_sparse_gradients_as_dense_ones(lazy):
    """Default semantics: the same as stepping on clipped dense equivalents. Lazy: the
    same norm (so the same clipped values) as the dense equivalents have."""
    params, twins = _params(), _params()
    a = optim.Adam([{"params": params[:2]}, {"params": params[2:], "max_grad_norm": 2.0}],
                   lr=0.01, max_grad_norm=1.0, lazy=lazy)
    b = optim.Adam([{"params": twins[:2]}, {"params": twins[2:], "max_grad_norm": 2.0}],
                   lr=0.01, max_grad_norm=1.0)
    for step in range(1, 11):
        for k, (p, q) in enumerate(zip(params, twins, strict=True)):
            p.grad = sparse_grad(step, p.data, k)
            q.grad = dense(p.grad, p.data.shape)
        a.step()
        b.step()
        np.testing.assert_allclose(a.last_grad_norm, b.last_grad_norm, rtol=1e-12)
        np.testing.assert_allclose(a.last_group_grad_norms[1], b.last_group_grad_norms[1],
                                   rtol=1e-12)
        assert a.last_grad_norm > 1.0 and a.last_group_grad_norms[1] > 2.0  # both clip
        for p, q in zip(params, twins, strict=True):  # clipped in place alike
            np.testing.assert_allclose(p.grad.to_dense(p.data.shape), q.grad, rtol=1e-12)
    if not lazy:
        for p, q in zip(params, twins, strict=True):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_skip_nonfinite_skips_a_step_with_a_nan_row(lazy):
    params = _params()
    opt = optim.Adam(params, lr=0.01, skip_nonfinite=True, lazy=lazy)
    for k, p in enumerate(params):
        p.grad = sparse_grad(1, p.data, k)
    opt.step()
    before = [p.data.copy() for p in params], opt.state_dict()
    for k, p in enumerate(params):
        p.grad = sparse_grad(2, p.data, k)
    params[2].grad.values[1, 0, 1] = np.nan
    opt.step()
    assert opt.last_step_skipped and opt.skipped_steps == 1
    for p, data in zip(params, before[0], strict=True):
        np.testing.assert_array_equal(p.data, data)
    assert all(opt.state[p]["step"] == 1 for p in params)
    params[2].grad = sparse_grad(2, params[2].data, 2)
    opt.step()
    assert not opt.last_step_skipped and opt.state[params[2]]["step"] == 2


def test_skip_nonfinite_with_max_grad_norm_and_an_inf_row():
    params = _params()
    opt = optim.SGD(params, lr=0.1, skip_nonfinite=True, max_grad_norm=1.0)
    for k, p in enumerate(params):
        p.grad = sparse_grad(1, p.data, k)
    params[0].grad.values[0] = np.inf
    opt.step()
    assert opt.last_step_skipped and not opt.state


def test_zero_grad_drops_row_sparse_gradients_even_without_set_to_none():
    p, q = Param(np.ones((3, 2))), Param(np.ones((3, 2)))
    opt = optim.SGD([p, q], lr=0.1)
    p.grad, q.grad = RowSparse([1], np.ones((1, 2))), np.ones((3, 2))
    kept = q.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is None and q.grad is kept and not kept.any()


def _trained(lazy_steps, params, opt, first=1):
    for step in range(first, first + lazy_steps):
        for k, p in enumerate(params):
            p.grad = sparse_grad(step, p.data, k)
        opt.step()


@pytest.mark.parametrize("name", ["SparseAdam", "Adagrad", "SGD"])
def test_state_dict_round_trip_after_lazy_steps(name):
    cls = optim.load(name)
    hypers = {"SGD": {"momentum": 0.9, "lr": 0.1}}.get(name, {"lr": 0.05})
    a_params, b_params = _params(), _params()
    a = cls([{"params": a_params[:2], "lazy": True}, {"params": a_params[2:]}], **hypers)
    _trained(8, a_params, a)
    sd = a.state_dict()
    assert sd["param_groups"][0]["lazy"] is True and "lazy" not in sd["param_groups"][1]
    for p, q in zip(a_params, b_params, strict=True):
        q.data[...] = p.data
    b = cls([{"params": b_params[:2]}, {"params": b_params[2:]}], **hypers)
    b.load_state_dict(sd)
    assert b.param_groups[0]["lazy"] is True
    _trained(8, a_params, a, first=9)
    _trained(8, b_params, b, first=9)
    for p, q in zip(a_params, b_params, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
        assert a.state[p].keys() == b.state[q].keys()
        for key, value in a.state[p].items():
            np.testing.assert_array_equal(b.state[q][key], value)


def test_checkpoint_resumes_a_lazy_run_bit_for_bit(tmp_path):
    pytest.importorskip("safetensors")
    a_params, b_params = _params(), _params()
    a = optim.SparseAdam(a_params, lr=0.01)
    _trained(6, a_params, a)
    optdsl.save(tmp_path / "ckpt.safetensors", optimizer=a, params=a_params)
    b = optim.SparseAdam(b_params, lr=0.01)
    optdsl.load(tmp_path / "ckpt.safetensors", optimizer=b, params=b_params)
    _trained(6, a_params, a, first=7)
    _trained(6, b_params, b, first=7)
    for p, q in zip(a_params, b_params, strict=True):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("lazy", [True, False])
def test_on_a_gpu_row_sparse_steps_as_on_the_host(fake_cupy, lazy):
    """CuPy params and gradients (the fake, running the CUDA C++ on the CPU): duplicates
    summed on the device without atomics, the same bits as the NumPy backend."""
    host = [p.data.astype(np.float32) for p in _params()]
    gpu = [Param(fake_cupy.asarray(h)) for h in host]
    cpu = [Param(h.copy()) for h in host]
    a = optim.Adam(gpu, lr=0.05, lazy=lazy)
    b = optim.Adam(cpu, lr=0.05, lazy=lazy, backend="numpy")
    for step in range(1, 6):
        for k, (p, q) in enumerate(zip(gpu, cpu, strict=True)):
            g = sparse_grad(step, q.data, k)
            q.grad = g
            p.grad = RowSparse(fake_cupy.asarray(np.asarray(g.indices)),
                               fake_cupy.asarray(g.values))
        a.step()
        b.step()
    for p, q in zip(gpu, cpu, strict=True):
        assert type(p.data).__module__ == "cupy"
        np.testing.assert_array_equal(np.asarray(p.data), q.data)
        np.testing.assert_array_equal(np.asarray(a.state[p]["exp_avg"]), b.state[q]["exp_avg"])
