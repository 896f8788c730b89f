"""optdsl.clip_grad_norm_ / clip_grad_value_ against torch.nn.utils', and an optimizer's
max_grad_norm against clipping by hand then stepping."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/: fakecupy

import fakecupy  # noqa: E402

import optdsl  # noqa: E402
from optdsl import HyperError, HyperTypeError, NonFiniteNormError, Param  # noqa: E402
from optdsl.clip import clip_coefficient  # noqa: E402
from optdsl.optim import SGD, Adam  # noqa: E402

fake_cupy = fakecupy.fake_cupy

SHAPES = [(3, 4), (), (0,), (50,), (7, 1, 3), (0, 2)]
# Relative agreement with torch's total norm: one reduction per flat buffer (or chunk)
# rounds differently from torch's per-tensor norms. inf / -inf / 0 norms are exact.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _grads(rng, dtype, shapes=SHAPES, scale=1.0):
    return [(rng.standard_normal(s) * scale).astype(dtype) for s in shapes]


def _torch_params(torch, grads, none=()):
    out = []
    for i, g in enumerate(grads):
        t = torch.nn.Parameter(torch.zeros(np.shape(g), dtype=_tdtype(torch, g.dtype)))
        t.grad = None if i in none else torch.from_numpy(np.array(g))
        out.append(t)
    return out


def _tdtype(torch, dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]


def _params(grads, none=()):
    return [Param(np.zeros(np.shape(g), g.dtype), grad=None if i in none else np.array(g))
            for i, g in enumerate(grads)]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="clipping is checked against torch.nn.utils")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf, 3.5, -math.inf, 0.0, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e4])
@pytest.mark.parametrize("flat", [False, True])
def test_clip_grad_norm_matches_torch(torch, dtype, norm_type, max_norm, flat):
    rng = np.random.default_rng([int(max_norm), len(str(norm_type))])
    shapes = SHAPES if not math.isinf(float(norm_type)) else [s for s in SHAPES
                                                              if math.prod(s)]
    grads = _grads(rng, dtype, shapes, scale=3.0)
    none = {2} if len(grads) > 3 else set()
    ours, theirs = _params(grads, none), _torch_params(torch, grads, none)
    if flat:
        optdsl.flatten(ours)
        for i in none:
            ours[i].grad = None
    norm = optdsl.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert type(norm) is np.dtype(dtype).type
    exact = math.isinf(float(norm_type)) or float(norm_type) == 0
    rtol = 0 if exact else RTOL[dtype]
    np.testing.assert_allclose(norm, expected.item(), rtol=rtol)
    clipping = float(expected) > max_norm
    if norm_type != -math.inf:  # (the smallest |g|: below both limits)
        assert clipping == (max_norm == 0.5)  # both sides of the limit are exercised
    for p, t in zip(ours, theirs, strict=True):
        if t.grad is None:
            assert p.grad is None
            continue
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=2 * rtol, atol=0)
        if exact or not clipping:  # the same norm (or coefficient 1): the same bits
            assert np.array_equal(p.grad, t.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coefficient_is_rounded_as_torchs(torch, dtype):
    """Given torch's norm, the coefficient and the clipped gradients agree bit for bit."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        g = _grads(rng, dtype, [(5,)], scale=rng.uniform(1e-4, 1e4))[0]
        max_norm = float(rng.uniform(1e-3, 10))
        t = _torch_params(torch, [g])[0]
        norm = torch.nn.utils.clip_grad_norm_([t], max_norm)
        ours = g * clip_coefficient(max_norm, np.dtype(dtype).type(norm.item()))
        assert np.array_equal(ours, t.grad.numpy())


def test_one_param_and_no_grads(torch):
    p = Param(np.zeros(2, np.float32), grad=np.array([3, 4], np.float32))
    assert optdsl.clip_grad_norm_(p, 1.0) == np.float32(5.0)
    np.testing.assert_allclose(p.grad, [0.6, 0.8], rtol=1e-6)
    empty = optdsl.clip_grad_norm_([Param(np.zeros(2))], 1.0)
    assert type(empty) is np.float32 and empty == 0  # torch: tensor(0.)
    assert torch.nn.utils.clip_grad_norm_([], 1.0).dtype == torch.float32


def test_mixed_dtypes_give_the_promoted_norm(torch):
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(4).astype(np.float32), rng.standard_normal(3)]
    ours, theirs = _params(grads), _torch_params(torch, grads)
    norm = optdsl.clip_grad_norm_(ours, 0.1)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.1)
    assert type(norm) is np.float64 and expected.dtype == torch.float64
    # torch rounds the float32 gradient's norm to float32 before promoting; so does the
    # float32 reduction here, in another order: float32's tolerance.
    np.testing.assert_allclose(norm, expected.item(), rtol=RTOL[np.float32])
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_nonfinite_norm(torch, bad, norm_type):
    grads = [np.array([1.0, bad], np.float32), np.array([2.0, -3.0], np.float32)]
    ours, theirs = _params(grads), _torch_params(torch, grads)
    with pytest.raises(NonFiniteNormError, match="non-finite") as info:
        optdsl.clip_grad_norm_(ours, 1.0, norm_type, error_if_nonfinite=True)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, error_if_nonfinite=True)
    for p, g in zip(ours, grads, strict=True):  # nothing changed before raising
        assert np.array_equal(p.grad, g, equal_nan=True)
    norm = optdsl.clip_grad_norm_(ours, 1.0, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    assert np.array_equal(norm, expected.item(), equal_nan=True)
    for p, t in zip(ours, theirs, strict=True):
        assert np.array_equal(p.grad, t.grad.numpy(), equal_nan=True)


def test_inf_norm_of_an_empty_gradient_is_refused_as_by_torch(torch):
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(_torch_params(torch, [np.zeros(0)]), 1.0, math.inf)
    with pytest.raises(NonFiniteNormError, match="empty"):
        optdsl.clip_grad_norm_(_params([np.zeros(0)]), 1.0, math.inf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("flat", [False, True])
def test_clip_grad_value_matches_torch(torch, dtype, flat):
    rng = np.random.default_rng(3)
    grads = _grads(rng, dtype, scale=2.0)
    grads[0][0, 0] = np.nan
    ours, theirs = _params(grads, {1}), _torch_params(torch, grads, {1})
    if flat:
        optdsl.flatten(ours)
        ours[1].grad = None
    optdsl.clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, t in zip(ours, theirs, strict=True):
        if t.grad is not None:
            assert np.array_equal(p.grad, t.grad.numpy(), equal_nan=True)
    assert ours[1].grad is None


def test_flat_and_separate_params_agree():
    """One reduction over a flat buffer against one per tensor: the same to rounding,
    and the same bits for gradients cut into other runs of the same memory."""
    rng = np.random.default_rng(4)
    grads = _grads(rng, np.float32, [(300, 700), (5,), (0,), (1000,)])
    separate, flat = _params(grads), _params(grads)
    optdsl.flatten(flat)
    a = optdsl.clip_grad_norm_(separate, 1.0)
    b = optdsl.clip_grad_norm_(flat, 1.0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for p, q in zip(separate, flat, strict=True):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-6)
    again = _params(grads)
    optdsl.flatten(again)
    assert optdsl.clip_grad_norm_(list(reversed(again)), 1.0) == b


@pytest.mark.parametrize("bad, error", [(-1.0, HyperError), (math.nan, HyperError),
                                        ("1.0", HyperTypeError), (None, HyperTypeError),
                                        (True, HyperTypeError)])
def test_bad_limits_are_refused(bad, error):
    p = Param(np.zeros(2), grad=np.ones(2))
    with pytest.raises(error, match="max_norm"):
        optdsl.clip_grad_norm_([p], bad)
    with pytest.raises(error, match="clip_value"):
        optdsl.clip_grad_value_([p], bad)
    assert np.array_equal(p.grad, np.ones(2))
    if bad is None:  # the optimizer's default: no clipping
        return
    with pytest.raises(error, match="max_grad_norm"):
        SGD([p], lr=0.1, max_grad_norm=bad)


def test_bad_params_and_norm_types_are_refused():
    p = Param(np.zeros(2), grad=np.ones(2))
    with pytest.raises(HyperTypeError, match="norm_type"):
        optdsl.clip_grad_norm_([p], 1.0, "two")
    with pytest.raises(HyperTypeError, match="not arrays"):
        optdsl.clip_grad_norm_(np.ones(2), 1.0)
    with pytest.raises(HyperTypeError, match="got int"):
        optdsl.clip_grad_norm_([1, 2], 1.0)
    p.grad = [1.0, 2.0]
    with pytest.raises(HyperTypeError, match="floating-point"):
        optdsl.clip_grad_value_([p], 1.0)


def _two_groups(rng, flat):
    grads = _grads(rng, np.float32, [(6, 5), (4,), (3, 3), ()])
    params = _params(grads)
    for p in params:
        p.data[...] = rng.standard_normal(p.data.shape)
    if flat:
        optdsl.flatten(params)
    return params


def _set_grads(params, rng, scale):
    for p in params:
        p.grad[...] = rng.standard_normal(p.grad.shape) * scale


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("mode", ["global", "group", "both"])
def test_max_grad_norm_equals_clipping_then_stepping(flat, mode):
    """Bit for bit, over several (planned) steps, some clipping and some not."""
    rngs = [np.random.default_rng(5), np.random.default_rng(5)]
    runs = []
    for by_hand in (False, True):
        rng = rngs[by_hand]
        params = _two_groups(rng, flat)
        group_limit = {"max_grad_norm": 0.3} if mode != "global" and not by_hand else {}
        kwargs = {"max_grad_norm": 1.0} if mode != "group" and not by_hand else {}
        groups = [{"params": params[:2], **group_limit}, {"params": params[2:], "lr": 0.02}]
        opt = Adam(groups, lr=0.05, **kwargs)
        norms = []
        for step in range(5):
            _set_grads(params, rng, scale=[0.01, 3.0][step % 2])
            if by_hand:
                if mode != "global":
                    norms.append(optdsl.clip_grad_norm_(params[:2], 0.3))
                if mode != "group":
                    norms.append(optdsl.clip_grad_norm_(params, 1.0))
            opt.step()
            if not by_hand:
                if mode != "global":
                    norms.append(opt.last_group_grad_norms[0])
                    assert list(opt.last_group_grad_norms) == [0]
                if mode != "group":
                    norms.append(opt.last_grad_norm)
                else:
                    assert opt.last_grad_norm is None
        assert len(opt._plans) == 2  # the later steps ran planned
        runs.append(([p.data.copy() for p in params], [p.grad.copy() for p in params],
                     norms))
    (data_a, grad_a, norms_a), (data_b, grad_b, norms_b) = runs
    assert norms_a == norms_b and all(type(n) is np.float32 for n in norms_a)
    for x, y in zip(data_a + grad_a, data_b + grad_b, strict=True):
        assert np.array_equal(x, y)


def test_max_grad_norm_off_is_the_plain_step():
    rng = np.random.default_rng(6)
    params = _two_groups(rng, flat=True)
    opt = Adam(params, lr=0.1)
    _set_grads(params, rng, 1.0)
    opt.step()
    assert opt.last_grad_norm is None and opt.last_group_grad_norms == {}


def test_max_grad_norm_with_skip_nonfinite():
    """A nan skips the step and leaves the gradients as they were; without
    skip_nonfinite, the clip scales by the nan norm, as torch's would."""
    rng = np.random.default_rng(7)
    params = _two_groups(rng, flat=True)
    opt = SGD(params, lr=0.1, max_grad_norm=1.0, skip_nonfinite=True)
    _set_grads(params, rng, 1.0)
    params[1].grad[0] = np.nan
    data, grads = [p.data.copy() for p in params], [p.grad.copy() for p in params]
    opt.step()
    assert opt.last_step_skipped and opt.skipped_steps == 1
    for p, d, g in zip(params, data, grads, strict=True):
        assert np.array_equal(p.data, d) and np.array_equal(p.grad, g, equal_nan=True)
    opt.step(skip_nonfinite=False)
    assert math.isnan(opt.last_grad_norm) and not opt.last_step_skipped
    assert all(np.isnan(p.data).all() for p in params if p.data.size)
    _set_grads(params, rng, 1.0)
    for p in params:
        p.data[...] = 0
    opt.step()
    assert not opt.last_step_skipped and opt.last_grad_norm > 1


def test_a_group_clip_does_not_hide_a_nan_in_an_unclipped_group():
    """Only group 0 clips (by its own norm, which is finite): a nan in group 1 must still
    make skip_nonfinite skip the step."""
    a = Param(np.ones(3), grad=np.full(3, 5.0))
    b = Param(np.ones(2), grad=np.array([1.0, np.nan]))
    opt = SGD([{"params": [a], "max_grad_norm": 1.0}, {"params": [b]}], lr=0.1,
              skip_nonfinite=True)
    opt.step()
    assert opt.last_step_skipped
    assert np.array_equal(a.data, np.ones(3)) and np.array_equal(a.grad, np.full(3, 5.0))
    b.grad[1] = 0.0
    opt.step()
    assert not opt.last_step_skipped and np.all(a.data < 1)


def test_bad_group_limit_is_refused_before_any_change():
    p = Param(np.zeros(2), grad=np.ones(2))
    opt = SGD([{"params": [p], "max_grad_norm": -2}], lr=0.1)
    with pytest.raises(HyperError, match="param group 0.*max_grad_norm"):
        opt.step()
    assert np.array_equal(p.data, np.zeros(2)) and np.array_equal(p.grad, np.ones(2))


@pytest.mark.parametrize("flat", [False, True])
def test_clipping_on_the_gpu_matches_numpy(fake_cupy, flat):
    rng = np.random.default_rng(8)
    grads = _grads(rng, np.float32, [(30, 7), (5,), ()], scale=2.0)
    host = _params(grads)
    gpu = [Param(fake_cupy.asarray(p.data), grad=fake_cupy.asarray(p.grad)) for p in host]
    if flat:
        optdsl.flatten(gpu)
    for p_type in (2.0, 1.0, math.inf):
        a = optdsl.clip_grad_norm_(host, 0.5, p_type)
        b = optdsl.clip_grad_norm_(gpu, 0.5, p_type)
        assert type(b) is np.float32
        np.testing.assert_allclose(a, b, rtol=1e-6)
    optdsl.clip_grad_value_(host, 0.01)
    optdsl.clip_grad_value_(gpu, 0.01)
    for p, q in zip(host, gpu, strict=True):
        assert isinstance(q.grad, fakecupy.ndarray)
        np.testing.assert_allclose(p.grad, q.grad.get(), rtol=1e-6)
