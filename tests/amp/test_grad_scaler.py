"""GradScaler's behaviour that does not need torch as a reference: step's return value
and what a skipped step leaves alone, the call order it enforces, the disabled
pass-through, state_dict, flattened groups, narrow and row-sparse gradients, GPU
gradients (the fake CuPy), and a schedule that follows only real steps."""

from __future__ import annotations

import collections
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
from amp_util import BAD, assert_same_snapshot, bits, inject, make_params, snapshot, true_grads

import optdsl
from optdsl.amp import GradScaler, GradScalerError
from optdsl.optim import SGD, Adam
from optdsl.schedules import StepLR

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy, cuda_cpu

import fakecupy  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture: cupy is the fake for one test

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPES = [(4, 3), (5,), (2, 3, 2)]


def build(dtype=np.float32, flat=False, **kw):
    params = make_params(SHAPES, dtype)
    if flat:
        optdsl.flatten(params)
    opt = Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], lr=0.05, **kw)
    return opt, params


def set_scaled_grads(scaler, params, step, dtype=np.float32, bad=BAD):
    grads = true_grads(step, SHAPES, dtype)
    inject(grads, step, bad)
    for p, g in zip(params, grads, strict=True):
        if p.grad is not None and p.grad.base is not None:  # flattened: write in place
            p.grad[...] = scaler.scale(g)
        else:
            p.grad = scaler.scale(g)


# --- step ----------------------------------------------------------------------------------

def test_a_skipped_step_changes_nothing_and_returns_false():
    opt, params = build()
    scaler = GradScaler(init_scale=8.0)
    set_scaled_grads(scaler, params, 0)
    assert scaler.step(opt) is True
    scaler.update()
    before = snapshot(opt, params)
    set_scaled_grads(scaler, params, 3)  # an inf in param 0
    assert scaler.step(opt) is False
    assert_same_snapshot(snapshot(opt, params), before)
    assert opt.state[params[0]]["step"] == 1 and opt.last_step_skipped
    assert opt.skipped_steps == 1
    scaler.update()
    assert scaler.get_scale() == 4.0 and scaler.state_dict()["_growth_tracker"] == 0
    set_scaled_grads(scaler, params, 5)
    assert scaler.step(opt) is True and not opt.last_step_skipped
    assert opt.state[params[0]]["step"] == 2


def test_a_run_with_skips_equals_the_run_without_those_steps():
    """Bit for bit: skipped steps leave no trace in the params or the optimizer."""
    opt, params = build()
    ref_opt, ref_params = build()
    scaler = GradScaler(init_scale=2.0**10, growth_interval=3)
    for k in range(20):
        set_scaled_grads(scaler, params, k)
        took = scaler.step(opt)
        scaler.update()
        assert took == (k not in BAD)
        if took:  # the reference takes only the real steps, on the same unscaled grads
            for p, q in zip(params, ref_params, strict=True):
                q.grad = p.grad.copy()
            ref_opt.step()
    assert_same_snapshot(snapshot(opt, params), snapshot(ref_opt, ref_params))


def test_step_passes_arguments_through_and_reports_the_optimizers_own_skip():
    opt, params = build()
    scaler = GradScaler()
    set_scaled_grads(scaler, params, 0)
    assert scaler.step(opt, skip_nonfinite=True) is True
    scaler.update()
    # The optimizer's own skip (a gradient that overflowed while unscaling: finite before,
    # inf after, which the scaler does not count) makes step() report False as well.
    scaler.update(0.5)
    set_scaled_grads(scaler, params, 0)
    params[1].grad[0] = np.float32(3e38)
    assert scaler.step(opt, skip_nonfinite=True) is False
    assert opt.last_step_skipped


def test_a_schedule_follows_only_the_steps_taken():
    opt, params = build()
    sched = StepLR(opt, step_size=2, gamma=0.5)
    ref_opt, ref_params = build()
    ref_sched = StepLR(ref_opt, step_size=2, gamma=0.5)
    scaler = GradScaler(init_scale=64.0, growth_interval=2)
    taken = 0
    for k in range(20):
        set_scaled_grads(scaler, params, k)
        if scaler.step(opt):
            sched.step()
            taken += 1
            for p, q in zip(params, ref_params, strict=True):
                q.grad = p.grad.copy()
            ref_opt.step()
            ref_sched.step()
        scaler.update()
    assert taken == 20 - len(BAD) and sched.last_epoch == taken
    assert sched.get_last_lr() == ref_sched.get_last_lr() == [0.05 * 0.5**7, 0.01 * 0.5**7]
    assert_same_snapshot(snapshot(opt, params), snapshot(ref_opt, ref_params))


def test_several_optimizers_share_one_update():
    opt_a, params_a = build()
    opt_b, params_b = build()
    scaler = GradScaler(init_scale=16.0, growth_interval=1)
    set_scaled_grads(scaler, params_a, 0)
    set_scaled_grads(scaler, params_b, 3)  # only b's gradients overflow
    assert scaler.step(opt_a) is True
    assert scaler.step(opt_b) is False
    scaler.update()
    assert scaler.get_scale() == 8.0  # any inf backs off
    set_scaled_grads(scaler, params_a, 1)
    set_scaled_grads(scaler, params_b, 1)
    scaler.step(opt_a)
    scaler.step(opt_b)
    scaler.update()
    assert scaler.get_scale() == 16.0


# --- call order ----------------------------------------------------------------------------

def test_unscale_twice_raises_and_changes_nothing():
    opt, params = build()
    scaler = GradScaler(init_scale=4.0)
    set_scaled_grads(scaler, params, 0)
    scaler.unscale_(opt)
    once = [p.grad.copy() for p in params]
    with pytest.raises(GradScalerError, match="already called for this optimizer"):
        scaler.unscale_(opt)
    assert all(bits(p.grad) == bits(g) for p, g in zip(params, once, strict=True))
    assert isinstance(GradScalerError("x"), RuntimeError)  # as torch's RuntimeError
    assert scaler.step(opt) is True  # step does not unscale again
    assert all(bits(p.grad) == bits(g) for p, g in zip(params, once, strict=True))


def test_unscale_after_step_and_step_twice_raise():
    opt, params = build()
    scaler = GradScaler()
    set_scaled_grads(scaler, params, 0)
    scaler.step(opt)
    with pytest.raises(GradScalerError, match="after step"):
        scaler.unscale_(opt)
    with pytest.raises(GradScalerError, match="already called for this optimizer"):
        scaler.step(opt)
    scaler.update()
    set_scaled_grads(scaler, params, 1)
    assert scaler.step(opt)  # a new iteration


def test_methods_before_scale_and_update_without_checks_raise():
    opt, params = build()
    scaler = GradScaler()
    for p in params:
        p.grad = np.ones_like(p.data)
    for call in (lambda: scaler.unscale_(opt), lambda: scaler.step(opt), scaler.update):
        with pytest.raises(GradScalerError, match="has not scaled anything yet"):
            call()
    scaler.scale(np.float32(1.0))
    with pytest.raises(GradScalerError, match="no optimizer's gradients were unscaled"):
        scaler.update()
    for p in params:
        p.grad = None
    with pytest.raises(GradScalerError, match="no gradients"):
        scaler.step(opt)
    with pytest.raises(GradScalerError, match="closure"):
        scaler.step(opt, closure=lambda: 0.0)


def test_a_step_that_raised_can_be_retried():
    """As torch: the stage moves to "stepped" only once the optimizer's step returned, so
    after fixing bad input, step() runs it (without unscaling again)."""
    opt, params = build()
    scaler = GradScaler(init_scale=4.0)
    set_scaled_grads(scaler, params, 0)
    grads = [p.grad for p in params]
    params[1].grad = np.zeros(7, np.float32)  # the wrong shape: the step raises
    with pytest.raises(optdsl.GradientError):
        scaler.step(opt)
    params[1].grad = grads[1]
    assert scaler.step(opt) is True
    assert opt.state[params[0]]["step"] == 1


# --- disabled ------------------------------------------------------------------------------

def test_a_disabled_scaler_is_a_pass_through():
    opt, params = build()
    ref_opt, ref_params = build()
    scaler = GradScaler(enabled=False, growth_factor=0.5)  # not checked when disabled
    x = np.ones(3, np.float16)
    assert scaler.scale(x) is x and scaler.scale(2.5) == 2.5
    for k in (0, 1, 3):
        set_scaled_grads(scaler, params, k, bad={})
        set_scaled_grads(scaler, ref_params, k, bad={})
        grads = [p.grad.copy() for p in params]
        scaler.unscale_(opt)
        assert all(bits(p.grad) == bits(g) for p, g in zip(params, grads, strict=True))
        assert scaler.step(opt) is True
        ref_opt.step()
        scaler.update()
    assert_same_snapshot(snapshot(opt, params), snapshot(ref_opt, ref_params))
    assert not scaler.is_enabled() and scaler.get_scale() == 1.0
    assert scaler.state_dict() == {}
    scaler.load_state_dict({"scale": 3.0})  # a no-op
    assert scaler.get_scale() == 1.0
    # Disabled, step() still reports an optimizer's own skip.
    opt.skip_nonfinite = True
    params[0].grad[0] = np.nan
    assert scaler.step(opt) is False


# --- arguments -----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, error, match", [
    (dict(growth_factor=1.0), optdsl.HyperError, "growth factor must be > 1.0"),
    (dict(growth_factor=float("nan")), optdsl.HyperError, "growth factor"),
    (dict(backoff_factor=1.0), optdsl.HyperError, "backoff factor must be < 1.0"),
    (dict(init_scale=0.0), optdsl.HyperError, "init_scale must be a finite number > 0"),
    (dict(init_scale=float("inf")), optdsl.HyperError, "init_scale"),
    (dict(growth_interval=0), optdsl.HyperError, "growth_interval must be >= 1"),
    (dict(growth_interval=2.5), optdsl.HyperTypeError, "growth_interval must be a whole"),
    (dict(init_scale="cuda"), optdsl.HyperTypeError, "takes no device"),
    (dict(enabled=1), optdsl.HyperTypeError, "enabled must be True or False"),
])
def test_bad_arguments_raise(kw, error, match):
    with pytest.raises(error, match=match):
        GradScaler(**kw)


def test_setters_and_getters():
    scaler = GradScaler()
    assert (scaler.get_growth_factor(), scaler.get_backoff_factor(),
            scaler.get_growth_interval(), scaler.get_scale()) == (2.0, 0.5, 2000, 65536.0)
    scaler.set_growth_factor(4.0)
    scaler.set_backoff_factor(0.25)
    scaler.set_growth_interval(7)
    assert scaler.state_dict() == {"scale": 65536.0, "growth_factor": 4.0,
                                   "backoff_factor": 0.25, "growth_interval": 7,
                                   "_growth_tracker": 0}
    with pytest.raises(optdsl.HyperError):
        scaler.set_backoff_factor(2.0)
    assert scaler.get_backoff_factor() == 0.25
    # Before the first scale(), get_scale() is init_scale as given (as torch's); after,
    # the float32 value the scaler holds.
    scaler = GradScaler(init_scale=0.1)
    assert scaler.get_scale() == 0.1
    scaler.scale(np.ones(1))
    assert scaler.get_scale() == float(np.float32(0.1))


def test_scale_takes_nested_outputs():
    scaler = GradScaler(init_scale=4.0)
    Pair = collections.namedtuple("Pair", "a b")
    out = scaler.scale({"x": [np.ones(2, np.float32), (2.0, np.float16(1))],
                        "y": Pair(np.array(3.0), 1)})
    assert out["x"][0].tolist() == [4.0, 4.0] and out["x"][0].dtype == np.float32
    assert out["x"][1] == (8.0, np.float32(4.0)) and isinstance(out["x"][1], tuple)
    assert type(out["x"][1][1]) is np.float32  # a 0-d float16 times float32 (torch)
    assert isinstance(out["y"], Pair) and out["y"].a == 12.0 and out["y"].b == 4.0
    lazy = scaler.scale(x for x in (1.0, 2.0))
    assert list(lazy) == [4.0, 8.0]
    with pytest.raises(TypeError, match="outputs must be arrays"):
        scaler.scale("loss")
    with pytest.raises(TypeError, match="outputs must be arrays"):
        scaler.scale(None)


# --- state_dict ----------------------------------------------------------------------------

def test_state_dict_round_trip_continues_the_same_run():
    opt, params = build()
    scaler = GradScaler(init_scale=2.0**8, growth_factor=3.0, growth_interval=3)
    for k in range(7):  # good, good, good (grow), inf, nan, good, good
        set_scaled_grads(scaler, params, k)
        scaler.step(opt)
        scaler.update()
    saved = scaler.state_dict()
    assert saved == {"scale": 2.0**8 * 3.0 * 0.5**2, "growth_factor": 3.0,
                     "backoff_factor": 0.5, "growth_interval": 3, "_growth_tracker": 2}
    resumed = GradScaler()
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    twin_opt, twin_params = build()
    twin_opt.load_state_dict(opt.state_dict())
    for p, q in zip(params, twin_params, strict=True):
        q.data[...] = p.data
    for k in range(7, 20):
        set_scaled_grads(scaler, params, k)
        set_scaled_grads(resumed, twin_params, k)
        assert scaler.step(opt) == resumed.step(twin_opt)
        scaler.update()
        resumed.update()
        assert resumed.state_dict() == scaler.state_dict()
    assert_same_snapshot(snapshot(opt, params), snapshot(twin_opt, twin_params))


def test_load_state_dict_checks_everything_first():
    scaler = GradScaler(init_scale=8.0)
    scaler.scale(np.ones(1))
    before = scaler.state_dict()
    good = GradScaler(init_scale=2.0).state_dict()
    for bad in ({k: v for k, v in good.items() if k != "growth_interval"},
                {**good, "backoff_factor": 1.5}, {**good, "_growth_tracker": -1},
                {**good, "scale": "big"}, {**good, "scale": float("nan")}):
        with pytest.raises(optdsl.StateDictError):
            scaler.load_state_dict(bad)
        assert scaler.state_dict() == before
    with pytest.raises(GradScalerError, match="empty"):
        scaler.load_state_dict({})


def test_checkpoint_round_trip(tmp_path):
    opt, params = build()
    scaler = GradScaler(init_scale=2.0**8, growth_interval=3)
    for k in range(7):
        set_scaled_grads(scaler, params, k)
        scaler.step(opt)
        scaler.update()
    path = tmp_path / "run.safetensors"
    optdsl.save(path, optimizer=opt, params=params, scaler=scaler)
    opt2, params2 = build()
    scaler2 = GradScaler()
    optdsl.load(path, optimizer=opt2, params=params2, scaler=scaler2)
    assert scaler2.state_dict() == scaler.state_dict()
    for k in range(7, 15):
        set_scaled_grads(scaler, params, k)
        set_scaled_grads(scaler2, params2, k)
        assert scaler.step(opt) == scaler2.step(opt2)
        scaler.update()
        scaler2.update()
    assert scaler2.state_dict() == scaler.state_dict()
    assert_same_snapshot(snapshot(opt, params), snapshot(opt2, params2))
    # A disabled scaler saves {} and loads nothing; an enabled one refuses that state,
    # and the load leaves everything as it was.
    off = tmp_path / "off.safetensors"
    optdsl.save(off, optimizer=opt, scaler=GradScaler(enabled=False))
    with pytest.raises(optdsl.CheckpointMismatchError, match="empty"):
        optdsl.load(off, optimizer=opt2, scaler=scaler2)
    assert scaler2.state_dict() == scaler.state_dict()


# --- gradients: flattened, narrow, sparse, on a GPU ----------------------------------------

def test_flattened_groups_unscale_as_one_buffer_bit_for_bit():
    opt, params = build()
    flat_opt, flat_params = build(flat=True)
    scaler, flat_scaler = GradScaler(init_scale=1000.0), GradScaler(init_scale=1000.0)
    for k in range(12):
        set_scaled_grads(scaler, params, k)
        set_scaled_grads(flat_scaler, flat_params, k)
        assert scaler.step(opt) == flat_scaler.step(flat_opt) == (k not in BAD)
        for p, q in zip(params, flat_params, strict=True):
            assert bits(p.grad) == bits(q.grad)
        scaler.update()
        flat_scaler.update()
    assert_same_snapshot(snapshot(opt, params), snapshot(flat_opt, flat_params))


def test_a_flat_buffer_is_one_pass(monkeypatch):
    from optdsl import amp

    calls = []
    real = amp._unscale_host
    monkeypatch.setattr(amp, "_unscale_host", lambda g, inv: calls.append(g.size) or real(g, inv))
    opt, params = build(flat=True)
    scaler = GradScaler()
    set_scaled_grads(scaler, params, 0)
    scaler.unscale_(opt)
    assert calls == [sum(p.data.size for p in params)]  # both groups, one buffer


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["float16", "bfloat16"])
def test_narrow_gradients_unscale_in_float32_and_round_once(dtype):
    opt, params = build(dtype, master_weights=True)
    scaler = GradScaler(init_scale=300.0)  # times gradients up to 100: within float16
    set_scaled_grads(scaler, params, 0, dtype)
    scaled = [p.grad.copy() for p in params]
    scaler.unscale_(opt)
    inv = np.float32(1 / 300.0)
    for p, g in zip(params, scaled, strict=True):
        assert p.grad.dtype == dtype
        assert bits(p.grad) == bits((g.astype(np.float32) * inv).astype(dtype))
        # not what multiplying in the narrow dtype would give
        assert bits(p.grad) != bits(g * g.dtype.type(inv))
    assert scaler.step(opt)


def test_row_sparse_gradients_have_their_values_unscaled():
    emb = optdsl.Param(np.zeros((6, 2), np.float32), name="emb")
    values = np.array([[4.0, 8.0], [2.0, 2.0], [6.0, 4.0]], np.float32)
    emb.grad = optdsl.RowSparse(np.array([1, 4, 1]), values.copy())
    opt = SGD([emb], lr=1.0)
    scaler = GradScaler(init_scale=2.0)
    scaler.scale(np.float32(1))
    scaler.unscale_(opt)
    assert emb.grad.values.tolist() == (values / 2).tolist()  # float32: not coalesced
    assert scaler.step(opt)
    assert emb.data[1].tolist() == [-5.0, -6.0] and emb.data[4].tolist() == [-1.0, -1.0]


def test_float16_row_sparse_gradients_are_coalesced_first_as_in_torch():
    """Rows named twice may overflow float16 only once summed: that counts as an inf."""
    emb = optdsl.Param(np.zeros((4, 1), np.float16), name="emb")
    rows = np.array([[40000.0], [40000.0], [2.0]], np.float16)
    given = optdsl.RowSparse(np.array([2, 2, 0]), rows)
    emb.grad = given
    opt = SGD([emb], lr=1.0, master_weights=True)
    scaler = GradScaler(init_scale=4.0)
    scaler.scale(np.float32(1))
    assert scaler.step(opt) is False
    assert given.indices.tolist() == [0, 2] and np.isinf(given.values[1, 0])
    assert rows.tolist() == [[40000.0], [40000.0], [2.0]]  # the arrays given are untouched


def test_any_gradient_object_with_values_is_unscaled():
    class Sparse:  # a stand-in sparse gradient of some other library
        def __init__(self, values):
            self.values = values

    p = optdsl.Param(np.zeros(3, np.float32))
    p.grad = Sparse(np.array([2.0, np.inf], np.float32))
    opt = SGD([p], lr=0.1)
    scaler = GradScaler(init_scale=2.0)
    scaler.scale(np.float32(1))
    scaler.unscale_(opt)
    assert p.grad.values.tolist() == [1.0, np.inf]
    p.grad = [1.0, 2.0]
    scaler = GradScaler()
    scaler.scale(1.0)
    with pytest.raises(TypeError, match="expected a floating-point NumPy or CuPy array"):
        scaler.step(opt)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_gpu_gradients_unscale_on_their_device_as_on_the_host(fake_cupy, dtype):
    """One launch per flat buffer on the gradients' GPU (GPU 1 here, with GPU 0 current),
    the same bits as the host's unscale, and the inf flag read back only at step()."""
    host_opt, host = build(dtype)
    with fake_cupy.cuda.Device(1):
        gpu = [optdsl.Param(fake_cupy.asarray(p.data), name=p.name) for p in host]
    optdsl.flatten(gpu)
    gpu_opt = Adam([{"params": gpu[:2]}, {"params": gpu[2:], "lr": 0.01}], lr=0.05)
    scaler, gpu_scaler = GradScaler(init_scale=300.0), GradScaler(init_scale=300.0)
    for k in range(6):
        set_scaled_grads(scaler, host, k, dtype)
        grads = true_grads(k, SHAPES, dtype)
        inject(grads, k)
        for p, g in zip(gpu, grads, strict=True):
            with fake_cupy.cuda.Device(1):
                p.grad[...] = gpu_scaler.scale(fake_cupy.asarray(g))
        fakecupy.reset()
        assert scaler.step(host_opt) == gpu_scaler.step(gpu_opt) == (k not in BAD)
        launches = [x for x in fakecupy.launches if x.kind == "raw" and
                    x.name == "optdsl_unscale"]
        assert len(launches) == 1 and launches[0].device == 1
        assert launches[0].array_devices == (1, 1)  # the flat gradient buffer, the flag
        for p, q in zip(host, gpu, strict=True):
            assert isinstance(q.grad, fakecupy.ndarray) and bits(p.grad) == bits(q.grad.get())
        scaler.update()
        gpu_scaler.update()
        assert scaler.state_dict() == gpu_scaler.state_dict()


def test_strided_gradients_are_unscaled_in_place(fake_cupy):
    """A gradient that is a strided view (a transpose) is unscaled where it is, on the
    host and on a GPU, with the same bits as a contiguous copy."""
    rng = np.random.default_rng(3)
    base = (rng.standard_normal((5, 7)) * 300).astype(np.float32)
    expect = base.T * np.float32(1 / 300.0)
    for xp in (np, fake_cupy):
        with fake_cupy.cuda.Device(1) if xp is fake_cupy else contextlib.nullcontext():
            p = optdsl.Param(xp.zeros((7, 5), np.float32))
            p.grad = xp.asarray(base.copy()).T
            view = p.grad
            assert not view.flags.c_contiguous
            opt = SGD([p], lr=1.0)
            scaler = GradScaler(init_scale=300.0)
            scaler.scale(1.0)
            scaler.unscale_(opt)
        assert p.grad is view
        host = view.get() if xp is fake_cupy else view
        assert bits(host) == bits(expect)
