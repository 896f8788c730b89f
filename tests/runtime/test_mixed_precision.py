"""Mixed precision: float16 and bfloat16 params computed in float32 (each store rounded
once), fp32 master weights, and per-state storage dtypes.

The oracle for each is the same optimizer run in float32 on the widened values, with the
narrow buffers rounded to their storage dtype after every step by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl import Param
from optdsl.errors import HyperError
from optdsl.optim import SGD, Adam, AdamW

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (extra bf16)")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
NARROW = [pytest.param(F16, id="float16"), pytest.param(BF16, id="bfloat16")]
SHAPES = ((7, 5), (300,), (2, 3, 4))


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32).astype(dtype) for s in SHAPES]


def _grads(step, dtype):
    rng = np.random.default_rng(1000 + step)
    return [(0.1 * rng.standard_normal(s)).astype(np.float32).astype(dtype) for s in SHAPES]


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8)


def assert_bits_equal(a, b):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("flatten", [False, True], ids=["separate", "flat"])
def test_narrow_params_compute_in_float32_and_round_each_store_once(dtype, flatten):
    params = [Param(d) for d in _data(dtype)]
    if flatten:
        optdsl.flatten(params)
    opt = Adam(params, lr=1e-2, weight_decay=0.1)
    ref = [Param(p.data.astype(F32)) for p in params]
    ref_opt = Adam(ref, lr=1e-2, weight_decay=0.1)
    for step in range(6):
        for p, q, g in zip(params, ref, _grads(step, dtype), strict=True):
            p.grad = g if not flatten else p.grad
            if flatten:
                p.grad[...] = g
            q.grad = g.astype(F32)
        opt.step()
        ref_opt.step()
        for p, q in zip(params, ref, strict=True):
            # The float32 step on the same (widened) values, rounded to storage: what the
            # narrow run keeps, so the next step starts from the same numbers.
            q.data[...] = q.data.astype(dtype).astype(F32)
            for name in ("exp_avg", "exp_avg_sq"):
                st = ref_opt.state[q][name]
                st[...] = st.astype(dtype).astype(F32)
            assert opt.state[p]["exp_avg"].dtype == dtype
            assert_bits_equal(p.data, q.data.astype(dtype))
            for name in ("exp_avg", "exp_avg_sq"):
                assert_bits_equal(opt.state[p][name], ref_opt.state[q][name].astype(dtype))


@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("flatten", [False, True], ids=["separate", "flat"])
@pytest.mark.parametrize("cls", [Adam, AdamW, SGD], ids=lambda c: c.__name__)
def test_master_weights_follow_the_float32_run_exactly(dtype, flatten, cls):
    hypers = {"lr": 1e-2, "momentum": 0.9} if cls is SGD else {"lr": 1e-2}
    params = [Param(d) for d in _data(dtype)]
    if flatten:
        optdsl.flatten(params)
    opt = cls(params, master_weights=True, **hypers)
    # The oracle: float32 params starting from the same (narrow) values, fed the same
    # gradients widened. The master run must be that run, bit for bit.
    ref = [Param(p.data.astype(F32)) for p in params]
    ref_opt = cls(ref, **hypers)
    for step in range(8):
        for p, q, g in zip(params, ref, _grads(step, dtype), strict=True):
            if flatten:
                p.grad[...] = g
            else:
                p.grad = g
            q.grad = g.astype(F32)
        opt.step()
        ref_opt.step()
    for p, q in zip(params, ref, strict=True):
        st = opt.state[p]
        assert st["master"].dtype == F32
        assert_bits_equal(st["master"], q.data)
        assert_bits_equal(p.data, q.data.astype(dtype))  # rounded to nearest from master
        for name, value in ref_opt.state[q].items():
            if name != "step":
                assert st[name].dtype == F32  # a narrow param's states follow its master
                assert_bits_equal(st[name], value)
        assert st["step"] == ref_opt.state[q]["step"]


def test_master_weights_keep_small_updates_that_float16_would_lose():
    # 1 + 1e-4 rounds to 1 in float16 (spacing 2**-10 near 1): without a master every
    # step is lost; with one the updates accumulate and eventually move the param.
    data = np.ones(4, F16)
    plain, master = Param(data.copy()), Param(data.copy())
    a = SGD([plain], lr=1e-4)
    b = SGD([master], lr=1e-4, master_weights=True)
    for _ in range(100):
        plain.grad = np.full(4, -1.0, F16)
        master.grad = np.full(4, -1.0, F16)
        a.step()
        b.step()
    assert np.all(plain.data == 1.0)
    np.testing.assert_allclose(b.state[master]["master"], 1.01, rtol=1e-5)
    assert_bits_equal(master.data, np.full(4, 1.01, np.float32).astype(F16))


def test_master_weights_do_nothing_for_float32_params():
    p = Param(np.ones(3, F32))
    opt = Adam([p], master_weights=True)
    p.grad = np.ones(3, F32)
    opt.step()
    assert "master" not in opt.state[p]
    assert opt.master_weights is True


@pytest.mark.parametrize("dtype", NARROW)
def test_master_weights_state_dict_round_trip(dtype):
    def run(opt, params, steps, start=0):
        for step in range(start, start + steps):
            for p, g in zip(params, _grads(step, dtype), strict=True):
                p.grad = g
            opt.step()

    params = [Param(d) for d in _data(dtype)]
    opt = Adam(params, lr=1e-2, master_weights=True)
    run(opt, params, 3)
    sd = opt.state_dict()
    assert all(sd["state"][i]["master"].dtype == F32 for i in range(len(params)))
    twin = [Param(p.data.copy()) for p in params]
    opt2 = Adam(twin, lr=1e-2, master_weights=True)
    opt2.load_state_dict(sd)
    run(opt, params, 3, 3)
    run(opt2, twin, 3, 3)
    for p, q in zip(params, twin, strict=True):
        assert_bits_equal(p.data, q.data)
        assert_bits_equal(opt.state[p]["master"], opt2.state[q]["master"])
    # A state_dict with masters does not fit an optimizer without them.
    with pytest.raises(optdsl.StateDictError, match="unknown state 'master'"):
        Adam([Param(p.data.copy()) for p in params]).load_state_dict(sd)


def test_a_state_dict_without_masters_takes_them_from_the_params():
    params = [Param(d) for d in _data(F16)]
    plain = Adam(params, lr=1e-2)
    for p, g in zip(params, _grads(0, F16), strict=True):
        p.grad = g
    plain.step()
    opt = Adam(params, lr=1e-2, master_weights=True)
    opt.load_state_dict(plain.state_dict())
    for p, g in zip(params, _grads(1, F16), strict=True):
        p.grad = g
    opt.step()
    assert opt.state[params[0]]["master"].dtype == F32
    assert opt.state[params[0]]["exp_avg"].dtype == F32


def test_sync_master_weights_takes_values_set_by_hand():
    p = Param(np.ones(3, F16))
    opt = SGD([p], lr=0.5, master_weights=True)
    p.grad = np.ones(3, F16)
    opt.step()
    p.data[...] = 4.0  # e.g. weights loaded from elsewhere
    opt.sync_master_weights()
    opt.step()
    np.testing.assert_array_equal(p.data, np.full(3, 3.5, F16))


@pytest.mark.parametrize("state_dtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("flatten", [False, True], ids=["separate", "flat"])
def test_state_dtypes_store_one_state_narrow(state_dtype, flatten):
    params = [Param(d) for d in _data(F32)]
    if flatten:
        optdsl.flatten(params)
    opt = Adam(params, lr=1e-2, state_dtypes={"exp_avg": state_dtype.name})
    ref = [Param(p.data.copy()) for p in params]
    ref_opt = Adam(ref, lr=1e-2)
    for step in range(6):
        for p, q, g in zip(params, ref, _grads(step, F32), strict=True):
            if flatten:
                p.grad[...] = g
            else:
                p.grad = g
            q.grad = g.copy()
        opt.step()
        ref_opt.step()
        for p, q in zip(params, ref, strict=True):
            m = ref_opt.state[q]["exp_avg"]
            m[...] = m.astype(state_dtype).astype(F32)  # stored narrow, computed in fp32
            assert opt.state[p]["exp_avg"].dtype == state_dtype
            assert opt.state[p]["exp_avg_sq"].dtype == F32
            assert_bits_equal(opt.state[p]["exp_avg"], m.astype(state_dtype))
            assert_bits_equal(opt.state[p]["exp_avg_sq"], ref_opt.state[q]["exp_avg_sq"])
            assert_bits_equal(p.data, q.data)
    assert opt.state_dtypes == {"exp_avg": state_dtype}
    # The state_dict keeps the narrow dtype; a twin loads it and continues identically.
    twin = [Param(p.data.copy()) for p in params]
    opt2 = Adam(twin, lr=1e-2, state_dtypes={"exp_avg": state_dtype})
    opt2.load_state_dict(opt.state_dict())
    for p, q, g in zip(params, twin, _grads(9, F32), strict=True):
        if flatten:
            p.grad[...] = g
        else:
            p.grad = g
        q.grad = g.copy()
    opt.step()
    opt2.step()
    for p, q in zip(params, twin, strict=True):
        assert_bits_equal(p.data, q.data)


def test_state_dtypes_with_master_weights():
    p = Param(_data(BF16)[1])
    opt = Adam([p], master_weights=True, state_dtypes={"exp_avg_sq": "bfloat16"})
    p.grad = _grads(0, BF16)[1]
    opt.step()
    st = opt.state[p]
    assert (st["master"].dtype, st["exp_avg"].dtype, st["exp_avg_sq"].dtype) == (F32, F32,
                                                                                   BF16)


def test_a_float64_state_of_float32_params_computes_in_float64():
    p, q = Param(_data(F32)[1]), Param(_data(F32)[1].astype(np.float64))
    a = Adam([p], state_dtypes={"exp_avg": "float64"})
    b = Adam([q])
    for step in range(3):
        p.grad = _grads(step, F32)[1]
        q.grad = p.grad.astype(np.float64)
        a.step()
        b.step()
        q.data[...] = q.data.astype(F32)  # the param is stored in float32
        b.state[q]["exp_avg_sq"][...] = b.state[q]["exp_avg_sq"].astype(F32)
    assert a.state[p]["exp_avg"].dtype == np.float64
    np.testing.assert_array_equal(a.state[p]["exp_avg"], b.state[q]["exp_avg"])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"master_weights": 1}, TypeError, "master_weights must be True or False"),
    ({"state_dtypes": [("exp_avg", "float16")]}, TypeError, "state_dtypes must be a dict"),
    ({"state_dtypes": {"exp_avgg": "float16"}}, HyperError, "did you mean 'exp_avg'"),
    ({"state_dtypes": {"momentum": "float16"}}, HyperError, "not a state of Adam"),
    ({"state_dtypes": {"exp_avg": "int8"}}, HyperError, "must be one of 'float16'"),
    ({"state_dtypes": {"exp_avg": "float128"}}, HyperError, "must be one of"),
    ({"state_dtypes": {"exp_avg": "bfloat17"}}, HyperError, "must be one of"),
    ({"diagnostics": "yes"}, TypeError, "diagnostics must be True or False"),
])
def test_bad_mixed_precision_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Adam([Param(np.ones(2, F32))], **kwargs)
