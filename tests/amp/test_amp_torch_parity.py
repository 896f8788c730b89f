"""GradScaler against torch.amp.GradScaler("cpu") on the same numbers: the scaled
gradients, the unscaled ones (bit for bit), which steps are skipped, and the scale and
growth tracker after every update, over runs with injected infs and nans."""

from __future__ import annotations

import numpy as np
import pytest
from amp_util import BAD, bits, inject, make_params, true_grads

import optdsl
from optdsl.amp import GradScaler
from optdsl.optim import SGD, Adam

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

SHAPES = [(4, 3), (5,), (2, 3, 2)]
STEPS = 24


def to_torch(a: np.ndarray):
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def to_numpy(t, dtype: np.dtype) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy().astype(dtype, copy=False)


def torch_steps(opt, param) -> int:
    """How many real steps torch's optimizer took (Adam's step count; SGD's momentum
    buffer is created on its first step and changes on every later one)."""
    st = opt.state.get(param, {})
    return int(st["step"]) if "step" in st else 0


# (gradient dtype, optdsl optimizer, torch optimizer, their hypers, param tolerance).
# bfloat16: torch's GradScaler takes bfloat16 gradients as they are; optdsl computes the
# update in float32 and rounds it once, torch's Adam rounds after each op, so the params
# agree to a few bfloat16 ulps only; the gradients and the scale agree exactly.
CASES = {
    "float32-Adam": (np.float32, Adam, torch.optim.Adam, dict(lr=0.05), 1e-5),
    "float64-Adam": (np.float64, Adam, torch.optim.Adam, dict(lr=0.05), 1e-12),
    "bfloat16-Adam": (BF16, Adam, torch.optim.Adam, dict(lr=0.05), 5e-2),
}
# Scaler settings: the defaults but quick to grow; factors that are not powers of two (the
# scale then has a long mantissa, so scale(), 1/scale and the updates all round).
SCALERS = {
    "defaults": dict(growth_interval=3),
    "odd": dict(init_scale=1000.0, growth_factor=3.0, backoff_factor=0.3, growth_interval=2),
}


@pytest.mark.parametrize("scaler_kw", SCALERS.values(), ids=SCALERS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_run_matches_torch_step_by_step(case, scaler_kw):
    dtype, cls, tcls, hypers, tol = case
    params = make_params(SHAPES, dtype)
    t_params = [torch.nn.Parameter(to_torch(p.data)) for p in params]
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], **hypers)
    t_opt = tcls([{"params": t_params[:2]}, {"params": t_params[2:], "lr": 0.01}], **hypers)
    scaler, t_scaler = GradScaler(**scaler_kw), torch.amp.GradScaler("cpu", **scaler_kw)
    stepped, scales = [], []
    for k in range(STEPS):
        grads = true_grads(k, SHAPES, dtype)
        inject(grads, k)
        for p, t, g in zip(params, t_params, grads, strict=True):
            p.grad = scaler.scale(g)  # what a backward of the scaled loss would give
            t.grad = t_scaler.scale(to_torch(g))
            assert p.grad.dtype == dtype and bits(p.grad) == bits(to_numpy(t.grad, dtype))
        if k % 4 == 1:  # an explicit unscale_ (to clip, say) on some steps
            scaler.unscale_(opt)
            t_scaler.unscale_(t_opt)
        before = torch_steps(t_opt, t_params[0])
        stepped.append(scaler.step(opt))
        t_scaler.step(t_opt)
        assert stepped[-1] == (torch_steps(t_opt, t_params[0]) == before + 1)
        for p, t in zip(params, t_params, strict=True):  # unscaled, bit for bit
            assert bits(p.grad) == bits(to_numpy(t.grad, dtype))
        scaler.update()
        t_scaler.update()
        assert scaler.state_dict() == t_scaler.state_dict()
        assert scaler.get_scale() == t_scaler.get_scale()
        scales.append(scaler.get_scale())
        for p, t in zip(params, t_params, strict=True):
            np.testing.assert_allclose(p.data.astype(np.float64),
                                       to_numpy(t, dtype).astype(np.float64),
                                       rtol=tol, atol=tol)
    assert stepped == [k not in BAD for k in range(STEPS)]
    assert len(set(scales)) > 3  # the run grew and backed off several times


def test_float16_gradients_follow_torch_with_float32_stand_ins():
    """torch's GradScaler refuses float16 gradients; optdsl unscales them (for
    master_weights). The reference is torch's scaler on float32 copies of the same
    float16 scaled gradients: it sees the same infs, so it skips the same steps and keeps
    the same scale, and its unscaled float32 gradients rounded to float16 are exactly
    what optdsl's float16 unscale gives (the kernel rounds the float32 product once)."""
    shapes = [(64,), (8, 8)]
    params = make_params(shapes, np.float16)
    t_params = [torch.nn.Parameter(torch.from_numpy(p.data.astype(np.float32)))
                for p in params]
    opt = Adam(params, lr=0.01, master_weights=True)
    t_opt = torch.optim.Adam(t_params, lr=0.01)
    scaler, t_scaler = GradScaler(growth_interval=3), torch.amp.GradScaler("cpu",
                                                                           growth_interval=3)
    stepped, t_stepped = [], []
    for k in range(30):
        # Gradients up to 100: times 2**16 they overflow float16, so the first steps skip
        # until the scale has backed off, and it overflows again whenever it grows back.
        grads = true_grads(k, shapes, np.float16)
        for p, t, g in zip(params, t_params, grads, strict=True):
            p.grad = scaler.scale(g)
            t.grad = t_scaler.scale(torch.from_numpy(g.astype(np.float32)))
            t.grad = t.grad.half().float()  # what a float16 backward would have held
            assert bits(p.grad) == bits(t.grad.numpy().astype(np.float16))
        before = torch_steps(t_opt, t_params[0])
        stepped.append(scaler.step(opt))
        t_scaler.step(t_opt)
        t_stepped.append(torch_steps(t_opt, t_params[0]) == before + 1)
        for p, t in zip(params, t_params, strict=True):
            assert bits(p.grad) == bits(t.grad.numpy().astype(np.float16))
        scaler.update()
        t_scaler.update()
        assert scaler.state_dict() == t_scaler.state_dict()
    assert stepped == t_stepped
    assert not all(stepped[:5]) and sum(stepped) > 15


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64],
                         ids=["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("scale", [2.0**16, 1000.0, 3.0, 1.0, 0.25, 1e-3])
@pytest.mark.parametrize("size", [37, 300_001])  # the larger is cut over two threads
def test_unscale_is_torchs_kernel_bit_for_bit(dtype, scale, size):
    """Against torch._amp_foreach_non_finite_check_and_unscale_ (what torch's
    GradScaler.unscale_ runs), on values from subnormal to the dtype's largest, with and
    without an inf or nan (placed in the last piece of the second thread's range)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(size)
    finfo = np.finfo(np.float32 if dtype == BF16 else dtype)
    exponents = rng.uniform(np.log2(float(finfo.smallest_subnormal)),
                            np.log2(float(finfo.max)), size)
    values = (np.exp2(exponents) * np.where(rng.random(size) < 0.5, -1, 1))
    base = values.astype(dtype)
    base[:3] = [0, -0.0, finfo.max]
    previous = optdsl.num_threads()
    optdsl.set_num_threads(2)
    try:
        for bad in (None, np.inf, np.nan, -np.inf):
            p = optdsl.Param(np.zeros(size, dtype))
            p.grad = _with(base, bad)
            opt = SGD([p], lr=0.1)
            scaler = GradScaler(init_scale=scale)
            scaler.scale(np.float32(1))
            scaler.unscale_(opt)
            t = to_torch(_with(base, bad))
            found = torch.zeros(())
            inv = torch.full((), scale, dtype=torch.float32).double().reciprocal().float()
            torch._amp_foreach_non_finite_check_and_unscale_([t], found, inv)
            assert bits(p.grad) == bits(to_numpy(t, dtype))
            assert scaler.step(opt) is (found.item() == 0)
    finally:
        optdsl.set_num_threads(previous)


def _with(base: np.ndarray, bad) -> np.ndarray:
    out = base.copy()
    if bad is not None:
        out[-2] = bad
    return out


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64, np.int64,
                                   np.bool_, np.complex64],
                         ids=["float16", "bfloat16", "float32", "float64", "int64", "bool",
                              "complex64"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 2)])
def test_scale_gives_torchs_dtype_and_values(dtype, shape):
    """A dimensioned array keeps its floating dtype; a 0-d float16 or bfloat16 one becomes
    float32 (a 0-d tensor times torch's 0-d float32 scale); integers become float32. A
    float16 value times 2**16 past 65504 is inf, as in torch."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    if dtype.kind == "c":
        x = x + 1j * x
    for scale in (2.0**16, 1000.0):
        got = GradScaler(init_scale=scale).scale(x)
        want = torch.amp.GradScaler("cpu", init_scale=scale).scale(to_torch(np.asarray(x)))
        want_dtype = BF16 if want.dtype == torch.bfloat16 else \
            np.dtype(str(want.dtype).replace("torch.", ""))
        assert np.asarray(got).dtype == want_dtype
        assert bits(np.asarray(got)) == bits(to_numpy(want, want_dtype))


def test_update_with_new_scale_rounds_to_float32_as_torch():
    for value in (0.1, 3, np.float64(1 / 3), np.array(7.7), np.array([1e5], np.float32)):
        scaler, t_scaler = GradScaler(), torch.amp.GradScaler("cpu")
        scaler.scale(np.float32(1.0))
        t_scaler.scale(torch.ones(()))
        scaler.update(value)
        # torch takes a float or a 0-d tensor (its 1-element 1-d tensors fail in copy_)
        t_value = torch.tensor(float(np.asarray(value).reshape(())), dtype=torch.float64) \
            if isinstance(value, np.ndarray) else float(value)
        t_scaler.update(t_value)
        assert scaler.get_scale() == t_scaler.get_scale()
        assert scaler.state_dict() == t_scaler.state_dict()


def test_scale_stays_finite_when_growth_would_overflow_float32():
    scaler = GradScaler(init_scale=2.0**127, growth_interval=1)
    t_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1)
    p, t = optdsl.Param(np.zeros(2, np.float32)), torch.nn.Parameter(torch.zeros(2))
    opt, t_opt = SGD([p], lr=0.1), torch.optim.SGD([t], lr=0.1)
    for _ in range(2):
        p.grad = scaler.scale(np.full(2, 1e-30, np.float32))
        t.grad = t_scaler.scale(torch.full((2,), 1e-30))
        assert scaler.step(opt)
        t_scaler.step(t_opt)
        scaler.update()
        t_scaler.update()
        assert scaler.state_dict() == t_scaler.state_dict() == {
            **scaler.state_dict(), "scale": 2.0**127, "_growth_tracker": 0}


def test_state_dicts_load_across_libraries():
    """A torch GradScaler's state_dict loads into optdsl's and back, and both continue
    alike (the state of a run that backed off and grew)."""
    t_scaler = torch.amp.GradScaler("cpu", init_scale=1000.0, growth_factor=3.0,
                                    growth_interval=4)
    t_scaler.scale(torch.ones(()))
    t_scaler.update(12.5)
    t_scaler._growth_tracker.fill_(3)
    scaler = GradScaler()
    scaler.load_state_dict(t_scaler.state_dict())
    assert scaler.state_dict() == t_scaler.state_dict()
    back = torch.amp.GradScaler("cpu")
    back.load_state_dict(scaler.state_dict())
    assert back.state_dict() == t_scaler.state_dict()
    p, t = optdsl.Param(np.zeros(1, np.float32)), torch.nn.Parameter(torch.zeros(1))
    opt, t_opt = SGD([p], lr=0.1), torch.optim.SGD([t], lr=0.1)
    p.grad = scaler.scale(np.ones(1, np.float32))
    t.grad = t_scaler.scale(torch.ones(1))
    scaler.step(opt)
    t_scaler.step(t_opt)
    scaler.update()
    t_scaler.update()  # the fourth good step in a row: the scale grows
    assert scaler.state_dict() == t_scaler.state_dict()
    assert scaler.get_scale() == np.float32(12.5 * 3.0)
