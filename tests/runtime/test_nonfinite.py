"""Non-finite gradients: by default nothing is checked and a nan propagates, as in torch;
with ``skip_nonfinite`` a step whose gradients hold a nan or an inf changes nothing, says
so, and the run then goes on exactly as if that step had never been asked for."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from rt_util import assert_bits_equal, assert_state_dicts_equal, grad, make_arrays, set_grads

import optdsl
from optdsl import Param, optim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy, cuda_cpu

import fakecupy  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture: cupy is the fake for one test

SHAPES = ((4, 3), (5,), (2, 2), (6,))
# Per stdlib optimizer: keywords that turn on its state and non-default branches.
HYPERS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
    "Adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
    "AdamW": {"lr": 0.01, "betas": (0.8, 0.99)},
    "RMSprop": {"lr": 0.01, "momentum": 0.5, "centered": True},
    "Adagrad": {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "Adadelta": {"lr": 0.5, "rho": 0.8},
}


def _build(name: str, *, layout: str, dtype=np.float64, skip: bool = True, arrays=None):
    """Two param groups of two params each. ``layout``: "flat" (one buffer for every
    param and one for every grad), "separate" (an array per param and per grad, the
    grads written in place), "rebound" (new grad arrays every step)."""
    params = [Param(a.copy()) for a in (arrays or make_arrays(dtype, SHAPES, seed=3))]
    if layout == "flat":
        optdsl.flatten(params)
    elif layout == "separate":
        for p in params:
            p.grad = np.zeros_like(p.data)
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]
    return getattr(optim, name)(groups, skip_nonfinite=skip, **HYPERS[name]), params


def _set_grads(params, step: int, layout: str) -> None:
    """The deterministic gradients of rt_util, written in place unless "rebound" (in
    place, the arrays stay those a planned step reads)."""
    for i, p in enumerate(params):
        g = grad(step, p.data, i)
        if layout == "rebound":
            p.grad = g
        else:
            p.grad[...] = g


def _snapshot(opt, params):
    return [p.data.copy() for p in params], opt.state_dict()


def _assert_unchanged(opt, params, snapshot) -> None:
    data, sd = snapshot
    for i, (p, d) in enumerate(zip(params, data, strict=True)):
        assert_bits_equal(p.data, d, f"param {i} changed in a skipped step")
    assert_state_dicts_equal(opt.state_dict(), sd)


@pytest.mark.parametrize("name", list(HYPERS))
@pytest.mark.parametrize("layout", ["flat", "separate", "rebound"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("at", [1, 4], ids=["first-step", "later-step"])
def test_a_skipped_step_changes_nothing_and_the_run_goes_on_bit_for_bit(name, layout, bad,
                                                                        at):
    """The bad value sits in one element of the last param of the second group: the check
    must reach it, and the first group must not have stepped either. At step 4, flat and
    separate groups step through their plans (one kernel call over the flat buffer; one
    run per param otherwise), so the check reads the plan's gradient runs; rebound grads
    make every step a fresh one."""
    opt, params = _build(name, layout=layout)
    twin, twin_params = _build(name, layout=layout)
    for step in range(1, at):
        _set_grads(params, step, layout)
        opt.step()
        _set_grads(twin_params, step, layout)
        twin.step()
    planned = at > 1 and layout != "rebound"
    if planned:
        runs = [len(part[3]) for i in (0, 1) for part in opt._plans[i].parts]
        assert runs == ([1, 1] if layout == "flat" else [2, 2])
        plans = dict(opt._plans)
    before = _snapshot(opt, params)

    _set_grads(params, at, layout)
    params[3].grad[2] = bad
    loss = opt.step(lambda: 1.25)
    assert loss == 1.25  # the closure's loss, as ever
    assert opt.last_step_skipped is True and opt.skipped_steps == 1
    _assert_unchanged(opt, params, before)
    if planned:
        assert opt._plans == plans  # and the plans stay valid: the next step reuses them

    for step in range(at, at + 4):  # the same steps as the twin, which never saw the nan
        _set_grads(params, step, layout)
        opt.step()
        assert opt.last_step_skipped is False
        _set_grads(twin_params, step, layout)
        twin.step()
    assert opt.skipped_steps == 1
    for p, q in zip(params, twin_params, strict=True):
        assert_bits_equal(p.data, q.data)
    assert_state_dicts_equal(opt.state_dict(), twin.state_dict())


def test_default_is_no_check_and_a_nan_propagates_as_in_torch():
    p = Param(np.ones(4))
    opt = optim.Adam([p], lr=0.1)
    assert opt.skip_nonfinite is False
    p.grad = np.array([1.0, np.nan, 1.0, 1.0])
    opt.step()
    assert opt.last_step_skipped is False and opt.skipped_steps == 0
    assert np.isnan(p.data[1]) and np.isnan(opt.state[p]["exp_avg"][1])
    assert opt.state[p]["step"] == 1
    assert np.all(np.isfinite(np.delete(p.data, 1)))


def test_per_call_argument_overrides_the_optimizer_setting():
    a, b = (Param(x) for x in make_arrays())
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9)  # skip_nonfinite off
    set_grads([a, b], 1)
    opt.step()
    before = _snapshot(opt, [a, b])
    b.grad = np.full_like(b.data, np.inf)
    opt.step(skip_nonfinite=True)
    assert opt.last_step_skipped and opt.skipped_steps == 1
    _assert_unchanged(opt, [a, b], before)

    opt.skip_nonfinite = True  # the attribute can be set at any time
    opt.step()
    assert opt.skipped_steps == 2
    _assert_unchanged(opt, [a, b], before)
    opt.step(skip_nonfinite=False)  # and one call can turn it off: the inf goes in
    assert not opt.last_step_skipped and opt.skipped_steps == 2
    assert np.all(np.isinf(b.data)) and opt.state[b]["step"] == 2


def test_skipped_first_step_leaves_no_state():
    """Skipped before any state exists: the next step is still the first one (SGD's
    momentum buffer is set to the gradient itself then)."""
    p = Param(np.ones(3))
    opt = optim.SGD([p], lr=0.5, momentum=0.9, skip_nonfinite=True)
    p.grad = np.array([1.0, np.nan, 1.0])
    opt.step()
    assert opt.last_step_skipped and opt.state_dict()["state"] == {}
    p.grad = np.full(3, 2.0)
    opt.step()
    assert opt.state[p]["step"] == 1
    assert_bits_equal(opt.state[p]["momentum_buffer"], np.full(3, 2.0))
    assert_bits_equal(p.data, np.full(3, 0.0))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_large_finite_gradients_whose_sum_overflows_are_not_skipped(dtype):
    """The check sums each gradient; a sum can overflow for finite values. Then the
    elements are looked at, and such a step is taken. (float16 is summed in float32,
    where 4096 halves of its largest value do not overflow.)"""
    big = np.finfo(dtype).max / 2
    p = Param(np.zeros(4096, dtype))
    opt = optim.SGD([p], lr=1e-30 if dtype != np.float16 else 1e-7, skip_nonfinite=True)
    p.grad = np.full(4096, big, dtype)
    with np.errstate(over="ignore"):
        assert not np.isfinite(p.grad.sum()), "the test must overflow the sum"
    opt.step()
    assert opt.last_step_skipped is False and opt.state[p]["step"] == 1
    assert np.all(p.data < 0)


def test_large_flat_gradients_are_checked_over_the_thread_pool():
    """A gradient buffer large enough to be summed in parts, with the nan in the last
    part and a float32 buffer (the dtype of the parts' sums)."""
    n = 1 << 19
    p = Param(np.ones(n, np.float32))
    optdsl.flatten([p])
    opt = optim.Adam([p], lr=0.1, skip_nonfinite=True)
    p.grad[...] = 1.0
    opt.step()
    opt.step()
    p.grad[-1] = np.nan
    before = _snapshot(opt, [p])
    optdsl.set_num_threads(4)
    try:
        opt.step()
    finally:
        optdsl.set_num_threads(None)
    assert opt.last_step_skipped
    _assert_unchanged(opt, [p], before)


def test_params_without_gradients_are_not_looked_at():
    a, b = Param(np.ones(3)), Param(np.ones(3))
    opt = optim.SGD([a, b], lr=0.5, skip_nonfinite=True)
    a.grad = np.ones(3)
    opt.step()  # b has no grad: skipped as ever, and not checked
    assert not opt.last_step_skipped
    assert_bits_equal(a.data, np.full(3, 0.5))
    opt.zero_grad()
    opt.step()  # nobody has a grad: nothing to do, nothing skipped
    assert not opt.last_step_skipped and opt.skipped_steps == 0


def test_bad_input_still_raises_rather_than_skipping():
    a, b = Param(np.ones(3)), Param(np.ones(4))
    opt = optim.SGD([a, b], lr=0.5, skip_nonfinite=True)
    a.grad = np.array([np.nan, 1.0, 1.0])
    b.grad = np.ones(5)
    with pytest.raises(optdsl.OptdslError, match="gradient shape"):
        opt.step()
    assert opt.skipped_steps == 0


def test_gpu_params_are_checked_on_their_device(fake_cupy):
    """CuPy params (the fake: CUDA C++ on the CPU): the sums stay on the GPU and the check
    reads one number back per group."""
    with fake_cupy.cuda.Device(1):
        params = [Param(fake_cupy.asarray(a)) for a in make_arrays(np.float32, SHAPES)]
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=0.01,
                     skip_nonfinite=True)

    def grads(step, bad=None):
        with fake_cupy.cuda.Device(1):
            for i, p in enumerate(params):
                g = grad(step, p.data.get(), i)
                if bad is not None and i == 3:
                    g[1] = bad
                p.grad = fake_cupy.asarray(g)

    for step in (1, 2):
        grads(step)
        opt.step()
    before = ([p.data.get() for p in params], opt.state_dict())
    grads(3, np.inf)
    opt.step()
    assert opt.last_step_skipped
    for p, d in zip(params, before[0], strict=True):
        assert_bits_equal(p.data.get(), d)
    after = opt.state_dict()
    for i, st in before[1]["state"].items():
        for k, v in st.items():
            assert_bits_equal(np.asarray(after["state"][i][k].get() if k != "step" else
                                         after["state"][i][k]),
                              np.asarray(v.get() if k != "step" else v), k)
    grads(3)
    opt.step()
    assert not opt.last_step_skipped and opt.state[params[0]]["step"] == 3
