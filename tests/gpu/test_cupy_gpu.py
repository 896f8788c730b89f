"""The CuPy backend on a real GPU (``pytest -m gpu``; benchmarks/gpu_check.sh runs these on
the device machine). Everywhere else they skip: CI has no GPU. tests/backend and
tests/runtime check the same kernels and runtime paths on the CPU.

Each stdlib optimizer steps the same random problem with params on the GPU and with NumPy
arrays on the NumPy backend, and the results agree to rtol 1e-5. float16 and bfloat16
params compute in float32 on the GPU: their reference is the NumPy backend's float32
step from the same (widened) values, rounded to the storage type after every step.
"""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl import optim
from optdsl.errors import OptdslError

cupy = pytest.importorskip("cupy", reason="the GPU tests need CuPy (extra 'cuda')")
if not cupy.is_available():
    pytest.skip("no CUDA GPU here (CuPy is installed, cupy.is_available() is False)",
                allow_module_level=True)

pytestmark = pytest.mark.gpu

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes comes with the 'cuda' extra
    BF16 = None

# A few hyper sets per optimizer, reaching its branches (momentum, nesterov, amsgrad, ...).
CASES = {
    "SGD": [dict(lr=0.1), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
            dict(lr=0.05, momentum=0.8, dampening=0.1, maximize=True)],
    "Adam": [dict(lr=1e-2), dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
             dict(lr=1e-2, betas=(0.8, 0.9), maximize=True, decoupled_weight_decay=True,
                  weight_decay=0.1)],
    "AdamW": [dict(lr=1e-2), dict(lr=1e-2, amsgrad=True, weight_decay=0.05)],
    "RMSprop": [dict(lr=1e-2), dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1)],
    "Adagrad": [dict(lr=0.1), dict(lr=0.1, lr_decay=0.01, weight_decay=0.1,
                                   initial_accumulator_value=0.1)],
    "Adadelta": [dict(lr=1.0), dict(lr=0.5, rho=0.8, weight_decay=0.1, maximize=True)],
}
PARAMS = [(name, k) for name in sorted(CASES) for k in range(len(CASES[name]))]
SHAPES = [(64, 33), (1000,), (5,), ()]
STEPS = 8


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES]
             for _ in range(STEPS)]
    return ([v.astype(dtype) for v in values],
            [[g.astype(dtype) for g in gs] for gs in grads])


def _gpu_run(cls, hypers, values, grads, *, flat=False):
    """Params on the GPU, stepped with ``grads``, written into the same gradient arrays
    every step (as a training loop accumulates them), so steps after the first reuse
    their plan; rebinding ``p.grad`` each step would re-plan every step."""
    params = [optdsl.Param(cupy.asarray(v), grad=cupy.zeros(v.shape, v.dtype))
              for v in values]
    if flat:
        optdsl.flatten(params)
    opt = cls(params, **hypers)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad[...] = cupy.asarray(g)
        opt.step()
    return opt, params


def _numpy_run(cls, hypers, values, grads, round_to=None):
    """The NumPy backend's run; with ``round_to``, in float32 with params and state
    rounded to that dtype after each step (what narrow storage on the GPU does)."""
    params = [optdsl.Param(v.astype(np.float32 if round_to else v.dtype)) for v in values]
    opt = cls(params, backend="numpy", **hypers)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.astype(np.float32) if round_to else g.copy()
        opt.step()
        if round_to is not None:
            for p in params:
                p.data[...] = p.data.astype(round_to).astype(np.float32)
                for name, value in opt.state[p].items():
                    if name != "step":
                        value[...] = value.astype(round_to).astype(np.float32)
    return opt, params


def _close(gpu_value, ref_value, dtype, what):
    got = cupy.asnumpy(gpu_value).astype(np.float64)
    want = np.asarray(ref_value).astype(np.float64)
    if np.dtype(dtype).itemsize >= 4:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=what)
    else:  # one rounding of float16 / bfloat16 apart at most
        eps = float(np.finfo(np.float16).eps) if np.dtype(dtype) == np.float16 else 2.0 ** -7
        np.testing.assert_allclose(got, want, rtol=2 * eps, atol=2 * eps, err_msg=what)


def _dtypes():
    out = [np.float32, np.float64, np.float16]
    return out + ([BF16] if BF16 is not None else [])


@pytest.mark.parametrize("dtype", _dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,case", PARAMS)
def test_stdlib_on_the_gpu_matches_the_numpy_backend(name, case, dtype):
    cls = getattr(optim, name)
    hypers = CASES[name][case]
    values, grads = _problem(dtype)
    opt, params = _gpu_run(cls, hypers, values, grads)
    narrow = np.dtype(dtype).itemsize < 4
    ref_opt, ref_params = _numpy_run(cls, hypers, values, grads,
                                     round_to=np.dtype(dtype) if narrow else None)
    for k, (p, q) in enumerate(zip(params, ref_params, strict=True)):
        assert isinstance(p.data, cupy.ndarray) and p.data.dtype == np.dtype(dtype)
        _close(p.data, q.data, dtype, f"{name} param {k}")
        assert opt.state[p]["step"] == ref_opt.state[q]["step"] == STEPS
        for state, value in opt.state[p].items():
            if state != "step":
                assert isinstance(value, cupy.ndarray), state
                _close(value, ref_opt.state[q][state], dtype, f"{name} {state} of param {k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_flat_params_step_in_one_elementwise_launch(name, monkeypatch):
    from optdsl.backend import cupy_backend

    launches = []
    real = cupy_backend._Runner.__call__

    def counting(self, n, *rest):
        launches.append(n)
        return real(self, n, *rest)

    monkeypatch.setattr(cupy_backend._Runner, "__call__", counting)
    cls = getattr(optim, name)
    values, grads = _problem(np.float32)
    opt, params = _gpu_run(cls, CASES[name][-1], values, grads[:1], flat=True)
    launches.clear()
    for p, g in zip(params, grads[1], strict=True):
        p.grad[...] = cupy.asarray(g)
    opt.step()
    assert launches == [sum(v.size for v in values)]
    ref_opt, ref_params = _numpy_run(cls, CASES[name][-1], values, grads[:2])
    for p, q in zip(params, ref_params, strict=True):
        _close(p.data, q.data, np.float32, name)


def test_separate_params_step_in_one_multi_tensor_launch(monkeypatch):
    from optdsl.backend import cupy_backend

    calls = []
    real = cupy_backend._Launch.__call__

    def counting(self, args):
        calls.append(len(self.tensors))
        return real(self, args)

    monkeypatch.setattr(cupy_backend._Launch, "__call__", counting)
    rng = np.random.default_rng(3)
    # Sizes around the 65536-element chunk, an empty param and a 0-d one.
    shapes = [(70000,), (65536,), (3, 7), (0,), (), (131073,), (1,)] + [(97,)] * 30
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    opt, params = _gpu_run(optim.Adam, dict(lr=1e-2, weight_decay=0.1), values, grads)
    # Steps 2-4 (the first goes param by param); the empty param joins its neighbour's
    # run (it takes no room), so there is one tensor fewer than params.
    assert calls == [len(shapes) - 1] * 3
    ref_opt, ref_params = _numpy_run(optim.Adam, dict(lr=1e-2, weight_decay=0.1), values,
                                     grads)
    for k, (p, q) in enumerate(zip(params, ref_params, strict=True)):
        _close(p.data, q.data, np.float32, f"param {k}")
        _close(opt.state[p]["exp_avg_sq"], ref_opt.state[q]["exp_avg_sq"], np.float32,
               f"exp_avg_sq {k}")


def test_torch_cuda_tensors_are_updated_in_place_through_dlpack():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    rng = np.random.default_rng(5)
    value = rng.standard_normal((300, 7)).astype(np.float32)
    grads = [rng.standard_normal((300, 7)).astype(np.float32) for _ in range(5)]
    weight = torch.tensor(value, device="cuda")
    grad = torch.zeros_like(weight)
    p = optdsl.Param(cupy.from_dlpack(weight), grad=cupy.from_dlpack(grad))
    assert p.data.data.ptr == weight.data_ptr() and p.grad.data.ptr == grad.data_ptr()
    opt = optim.Adam([p], lr=1e-2)
    for g in grads:
        grad.copy_(torch.from_numpy(g))
        opt.step()
    torch.cuda.synchronize()
    ref_opt, (q,) = _numpy_run(optim.Adam, dict(lr=1e-2), [value], [[g] for g in grads])
    np.testing.assert_allclose(weight.cpu().numpy(), q.data, rtol=1e-5, atol=1e-7)
    assert p.data.data.ptr == weight.data_ptr()  # still the torch tensor's memory


def test_a_group_mixing_host_and_gpu_arrays_is_refused():
    a = optdsl.Param(np.ones(3, np.float32), grad=np.ones(3, np.float32))
    b = optdsl.Param(cupy.ones(3, np.float32), grad=cupy.ones(3, np.float32))
    opt = optim.SGD([a, b], lr=0.1)
    with pytest.raises(OptdslError, match="numpy.ndarray float32 and cupy.ndarray float32"):
        opt.step()
    c = optdsl.Param(cupy.ones(3, np.float32), grad=np.ones(3, np.float32))
    with pytest.raises(OptdslError, match="does not live where its parameter does"):
        optim.SGD([c], lr=0.1).step()
    # One group per device is fine.
    opt = optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.5)
    opt.step()
    np.testing.assert_array_equal(a.data, 0.5)
    np.testing.assert_array_equal(cupy.asnumpy(b.data), 0.5)


def test_state_dict_moves_between_gpu_and_host():
    values, grads = _problem(np.float32, seed=9)
    opt, params = _gpu_run(optim.Adam, dict(lr=1e-2), values, grads[:4])
    sd = opt.state_dict()
    assert all(isinstance(v, cupy.ndarray) for st in sd["state"].values()
               for k, v in st.items() if k != "step")
    host = [optdsl.Param(cupy.asnumpy(p.data)) for p in params]
    host_opt = optim.Adam(host, lr=1e-2, backend="numpy")
    host_opt.load_state_dict(sd)
    for gs in grads[4:]:
        for p, q, g in zip(params, host, gs, strict=True):
            p.grad, q.grad = cupy.asarray(g), g.copy()
        opt.step()
        host_opt.step()
    for p, q in zip(params, host, strict=True):
        _close(p.data, q.data, np.float32, "after resuming on the host")
