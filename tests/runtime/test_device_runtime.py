"""The runtime's GPU paths, on a machine without a GPU: CuPy params with their state on
their GPU, ElementwiseKernel launches over flat buffers, multi-tensor RawKernel launches
over separate params, devices and their errors, state_dict across devices, and flatten.

Everything runs through the fake cupy of ``tests/fakecupy.py``, whose kernels are the CuPy
backend's own CUDA C++ built with g++ (``tests/cuda_cpu.py``); the oracle is the NumPy
backend on NumPy arrays, to the bit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy, cuda_cpu

import fakecupy  # noqa: E402
from rt_util import fresh_class, grad, make_arrays  # noqa: E402

import optdsl  # noqa: E402
from optdsl import OptdslError, Param, optim  # noqa: E402
from optdsl.flat import FlatBuffer  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture: cupy is the fake for one test

STEPS = 7

# Per optimizer: constructor keywords, then the overrides of its two param groups. Every
# optimizer gets non-default values and, across the groups, the non-default branches.
HYPERS = {
    "SGD": ({"lr": 0.05, "momentum": 0.9},
            {"dampening": 0.1, "weight_decay": 0.01},
            {"lr": 0.02, "momentum": 0.8, "nesterov": True, "maximize": True}),
    "Adam": ({"lr": 0.01, "betas": (0.8, 0.99)},
             {"weight_decay": 0.1, "amsgrad": True},
             {"lr": 0.003, "eps": 1e-6, "maximize": True, "weight_decay": 0.05,
              "decoupled_weight_decay": True}),
    "AdamW": ({"lr": 0.01},
              {"weight_decay": 0.1, "amsgrad": True},
              {"lr": 0.005, "betas": (0.85, 0.995), "maximize": True}),
    "RMSprop": ({"lr": 0.01, "alpha": 0.9},
                {"momentum": 0.5, "centered": True},
                {"lr": 0.005, "weight_decay": 0.1, "maximize": True}),
    "Adagrad": ({"lr": 0.1, "eps": 1e-8},
                {"lr_decay": 0.01, "initial_accumulator_value": 0.1},
                {"lr": 0.05, "weight_decay": 0.1, "maximize": True}),
    "Adadelta": ({"lr": 0.5, "rho": 0.8},
                 {"weight_decay": 0.1},
                 {"lr": 1.0, "eps": 1e-5, "maximize": True}),
    "Adamax": ({"lr": 0.02, "betas": (0.8, 0.95)},
               {"weight_decay": 0.01},
               {"lr": 0.01, "eps": 1e-6, "maximize": True}),
    # betas[1] = 0.9: rho_t crosses 5 at step 6, so both of RAdam's steps run
    "RAdam": ({"lr": 0.01, "betas": (0.8, 0.9)},
              {"weight_decay": 0.1},
              {"lr": 0.02, "weight_decay": 0.05, "decoupled_weight_decay": True,
               "maximize": True}),
    "Rprop": ({"lr": 0.02, "etas": (0.4, 1.3)},
              {"step_sizes": (1e-3, 0.03)},
              {"lr": 0.01, "maximize": True}),
    "Lion": ({"lr": 0.01, "betas": (0.8, 0.95)},
             {"weight_decay": 0.1},
             {"lr": 0.005}),
    "AdaBelief": ({"lr": 0.01, "betas": (0.8, 0.99)},
                  {"weight_decay": 0.1, "eps": 1e-8},
                  {"lr": 0.005, "nesterov": True, "eps_root": 1e-10}),
    # An initial value that float16 holds exactly: the float16 test's reference rounds the
    # state to float16 after each step, not the value a state starts from.
    "Yogi": ({"lr": 0.01, "betas": (0.8, 0.99)},
             {"weight_decay": 0.1, "initial_accumulator_value": 0.1},
             {"lr": 0.005, "eps": 1e-6}),
    "Signum": ({"lr": 0.01, "momentum": 0.8},
               {"weight_decay": 0.1},
               {"lr": 0.005, "momentum": 0.0}),  # signSGD: no state
    "Adan": ({"lr": 0.01, "betas": (0.9, 0.9, 0.99)},
             {"weight_decay": 0.1},
             {"lr": 0.005, "weight_decay": 0.05, "no_prox": True}),
    "AdEMAMix": ({"lr": 0.01, "betas": (0.8, 0.99, 0.999), "alpha": 2.0},
                 {"alpha_warmup": 5, "beta3_warmup": 5, "weight_decay": 0.1},
                 {"lr": 0.005, "eps": 1e-6}),
    "NAdam": ({"lr": 0.01, "betas": (0.8, 0.99)},
              {"weight_decay": 0.1, "momentum_decay": 0.01},
              {"lr": 0.005, "eps": 1e-6, "weight_decay": 0.05, "decoupled_weight_decay": True,
               "maximize": True}),
    "ASGD": ({"lr": 0.05, "t0": 2},
             {"weight_decay": 0.1, "lambd": 0.01, "alpha": 0.5},
             {"lr": 0.02, "t0": 0, "maximize": True}),
    "Adafactor": ({"lr": 0.02, "d": 1.5},
                  {"weight_decay": 0.1, "beta2_decay": -0.5},
                  {"lr": 0.01, "eps": (1e-20, 1e-2), "maximize": True}),
    "LAMB": ({"lr": 0.01, "betas": (0.8, 0.99)},
             {"weight_decay": 0.1, "eps_root": 1e-10},
             {"lr": 0.005, "eps": 1e-8}),
    "LARS": ({"lr": 0.5, "momentum": 0.8, "trust_coefficient": 0.02},
             {"weight_decay": 0.1, "nesterov": True},
             {"lr": 0.2, "eps": 1e-6, "momentum": 0.0}),
    "NovoGrad": ({"lr": 0.01, "betas": (0.8, 0.5)},
                 {"weight_decay": 0.1, "eps_root": 1e-8},
                 {"lr": 0.005, "eps": 1e-8}),
    "ScheduleFreeAdamW": ({"lr": 0.01, "betas": (0.8, 0.99)},
                          {"warmup_steps": 3, "weight_decay": 0.1},
                          {"lr": 0.005, "weight_lr_power": 1.0, "eps": 1e-6}),
}

# Group 0 holds a 0-d param and a non-contiguous one (stepped param by param, every step,
# through ElementwiseKernel launches); group 1 only contiguous ones, a size-1 one among
# them (after the first step, one multi-tensor RawKernel launch).
SHAPES = (((4, 3), (), (3, 4)), ((5,), (1,), (2, 3, 4), (7,)))
NON_CONTIGUOUS = {(0, 2)}


# SparseAdam steps only RowSparse gradients (tests/sparse runs it on the stand-in GPU).
DENSE_STDLIB = sorted(set(optim.STDLIB) - optim.SPARSE_ONLY)


def test_hypers_cover_the_stdlib():
    assert set(HYPERS) == set(DENSE_STDLIB)


# --- helpers ------------------------------------------------------------------------------

def _values(dtype, shapes, seed):
    return [np.asarray(a) for a in make_arrays(dtype, shapes, seed)]


def _place(value: np.ndarray, cp, device, non_contiguous: bool):
    """``value`` as a NumPy array (cp None) or a fake-GPU one on ``device``; a strided
    view of a larger array if ``non_contiguous``."""
    if cp is None:
        if not non_contiguous:
            return value.copy()
        big = np.zeros((*value.shape[:-1], 2 * value.shape[-1]), value.dtype)
        big[..., ::2] = value
        return big[..., ::2]
    with cp.cuda.Device(device):
        if not non_contiguous:
            return cp.asarray(value)
        big = cp.zeros((*value.shape[:-1], 2 * value.shape[-1]), value.dtype)
        data = big[..., ::2]
        data[...] = cp.asarray(value)
        return data


def _params(cp, dtype, shapes=SHAPES, device=0, seed=0, non_contiguous=NON_CONTIGUOUS):
    """Param groups' params (lists), on the fake GPU ``device`` or (cp None) in NumPy
    arrays, with zeroed gradients to write into."""
    groups = []
    for gi, group_shapes in enumerate(shapes):
        params = []
        for pi, value in enumerate(_values(dtype, group_shapes, seed + gi)):
            data = _place(value, cp, device, (gi, pi) in non_contiguous)
            zero = _place(np.zeros_like(value), cp, device, False)
            assert data.flags.c_contiguous == ((gi, pi) not in non_contiguous)
            params.append(Param(data, grad=zero))
        groups.append(params)
    return groups


def _host(array) -> np.ndarray:
    return array.get() if isinstance(array, fakecupy.ndarray) else np.asarray(array)


def _set_grads(params, step: int, cp=None) -> None:
    """Gradients written in place (so the step plans stay), depending on each param."""
    for i, p in enumerate(params):
        g = grad(step, _host(p.data), i)
        if isinstance(p.grad, fakecupy.ndarray):
            with cp.cuda.Device(p.grad.device.id):
                p.grad[...] = cp.asarray(g)
        else:
            p.grad[...] = g


def _train(opt, params, first: int, last: int, cp=None, schedule=None) -> None:
    for step in range(first, last + 1):
        _set_grads(params, step, cp)
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = schedule(step)
        opt.step()


def _groups(params, hypers):
    return [{"params": ps, **h} for ps, h in zip(params, hypers, strict=True)]


def _bits(a, b, what: str) -> None:
    a, b = _host(a), _host(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: {a} != {b}"


def _assert_same(gpu_opt, gpu_params, cpu_opt, cpu_params, devices=None) -> None:
    """Same params, state and step counts, bit for bit; the GPU state is fake-GPU arrays
    on each param's device (``devices``: one per param, default its data's)."""
    for k, (p, q) in enumerate(zip(gpu_params, cpu_params, strict=True)):
        _bits(p.data, q.data, f"param {k}")
        st, ref = gpu_opt.state[p], cpu_opt.state[q]
        assert set(st) == set(ref), k
        assert st["step"] == ref["step"]
        device = p.data.device.id if devices is None else devices[k]
        scalars = {s.name for s in gpu_opt._spec.spec.scalars}
        for name in set(st) - {"step"}:
            if name in scalars:  # kept on the host, one float64 per param
                assert isinstance(st[name], np.ndarray) and st[name].shape == (), (k, name)
                _bits(st[name], ref[name], f"param {k} scalar state {name}")
                continue
            assert isinstance(st[name], fakecupy.ndarray), (k, name)
            assert st[name].device.id == device, (k, name)
            _bits(st[name], ref[name], f"param {k} state {name}")


def _flat(groups):
    return [p for g in groups for p in g]


# --- a: every stdlib optimizer matches the NumPy backend to the bit ----------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", DENSE_STDLIB)
def test_stdlib_optimizer_on_gpu_matches_numpy_backend(fake_cupy, name, dtype):
    cls = optim.load(name)
    defaults, *group_hypers = HYPERS[name]
    gpu, cpu = _params(fake_cupy, dtype), _params(None, dtype)
    gpu_opt = cls(_groups(gpu, group_hypers), **defaults)  # picks the cupy backend itself
    cpu_opt = cls(_groups(cpu, group_hypers), backend="numpy", **defaults)
    _train(gpu_opt, _flat(gpu), 1, STEPS, fake_cupy)
    _train(cpu_opt, _flat(cpu), 1, STEPS)
    _assert_same(gpu_opt, _flat(gpu), cpu_opt, _flat(cpu))
    assert gpu[0][2].data.base is not None  # still the strided view it was
    kinds = {launch.kind for launch in fakecupy.launches}
    # param by param, and multi-tensor; a rule with reductions or scalar states steps
    # each param with its own scalar arguments, always param by param
    assert kinds == ({"elementwise"} if cls._spec.per_parameter else {"elementwise", "raw"})
    assert all(launch.device == 0 and set(launch.array_devices) == {0}
               for launch in fakecupy.launches)


# --- b: launches ----------------------------------------------------------------------------

def _counts_per_step(opt, params, cp, first, last):
    out = []
    for step in range(first, last + 1):
        fakecupy.counts.clear()
        _set_grads(params, step, cp)
        opt.step()
        out.append((fakecupy.counts["elementwise_launch"], fakecupy.counts["raw_launch"]))
    return out


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_flattened_params_step_in_one_elementwise_launch_per_group(fake_cupy, name):
    cls = optim.load(name)
    defaults, *group_hypers = HYPERS[name]
    shapes = (((4, 3), (), (5,)), ((1,), (2, 3, 4), (7,)))
    gpu, cpu = _params(fake_cupy, np.float32, shapes, non_contiguous=()), \
        _params(None, np.float32, shapes, non_contiguous=())
    flat = optdsl.flatten(_flat(gpu))
    assert flat.is_flat()
    gpu_opt = cls(_groups(gpu, group_hypers), **defaults)
    cpu_opt = cls(_groups(cpu, group_hypers), backend="numpy", **defaults)
    _train(gpu_opt, _flat(gpu), 1, 1, fake_cupy)
    # One launch per group after the first step (SGD's first step takes another path).
    assert _counts_per_step(gpu_opt, _flat(gpu), fake_cupy, 2, STEPS) == [(2, 0)] * (STEPS - 1)
    _train(cpu_opt, _flat(cpu), 1, STEPS)
    _assert_same(gpu_opt, _flat(gpu), cpu_opt, _flat(cpu))
    assert flat.is_flat()


@pytest.mark.parametrize("name", ["Adam", "RMSprop"])
def test_separate_params_step_in_one_multi_tensor_launch_per_group(fake_cupy, name):
    cls = optim.load(name)
    defaults, *group_hypers = HYPERS[name]
    gpu = _params(fake_cupy, np.float64, non_contiguous=())
    cpu = _params(None, np.float64, non_contiguous=())
    gpu_opt = cls(_groups(gpu, group_hypers), **defaults)
    cpu_opt = cls(_groups(cpu, group_hypers), backend="numpy", **defaults)
    first = _counts_per_step(gpu_opt, _flat(gpu), fake_cupy, 1, 1)
    assert first == [(len(_flat(gpu)), 0)]  # the first step goes param by param
    assert _counts_per_step(gpu_opt, _flat(gpu), fake_cupy, 2, STEPS) == [(0, 2)] * (STEPS - 1)
    _train(cpu_opt, _flat(cpu), 1, STEPS)
    _assert_same(gpu_opt, _flat(gpu), cpu_opt, _flat(cpu))
    # A block of the multi-tensor launch steps up to 65536 elements of one tensor: here one
    # block of 512 threads per tensor.
    raw = [launch for launch in fakecupy.launches if launch.kind == "raw"]
    assert len(raw) == 2 * (STEPS - 1)
    assert {launch.size // 512 for launch in raw} == {len(g) for g in gpu}


@pytest.mark.parametrize("flatten", [False, True], ids=["separate", "flattened"])
def test_a_new_learning_rate_every_step_builds_no_kernel(fake_cupy, flatten):
    cls = fresh_class("Adam")  # its own kernel cache: the constructions counted are this test's
    gpu = _params(fake_cupy, np.float32, non_contiguous=())
    cpu = _params(None, np.float32, non_contiguous=())
    if flatten:
        optdsl.flatten(_flat(gpu))
    gpu_opt = cls(_groups(gpu, [{}, {"lr": 0.02}]), lr=0.01)
    cpu_opt = cls(_groups(cpu, [{}, {"lr": 0.02}]), lr=0.01, backend="numpy")

    def schedule(step):
        return 0.01 * 0.9**step

    _train(gpu_opt, _flat(gpu), 1, 2, fake_cupy, schedule)
    built = {k: fakecupy.counts[k] for k in ("ElementwiseKernel", "RawKernel", "compile")}
    assert built["ElementwiseKernel"] == 1  # both groups take the same path
    _train(gpu_opt, _flat(gpu), 3, STEPS + 3, fake_cupy, schedule)
    assert {k: fakecupy.counts[k] for k in built} == built
    _train(cpu_opt, _flat(cpu), 1, STEPS + 3, None, schedule)
    _assert_same(gpu_opt, _flat(gpu), cpu_opt, _flat(cpu))


# --- c: float16 storage, float32 math -------------------------------------------------------

@pytest.mark.parametrize("name", DENSE_STDLIB)
def test_float16_params_store_float32_math_rounded_once_per_step(fake_cupy, name):
    cls = optim.load(name)
    defaults, hypers, _ = HYPERS[name]
    shapes = (((4, 3), (), (1,), (3, 4), (6,)),)
    gpu = _params(fake_cupy, np.float16, shapes, non_contiguous={(0, 3)})[0]
    gpu_opt = cls(gpu, **defaults, **hypers)
    # The reference: float32 params holding the float16 values, stepped by the NumPy
    # backend, then everything it stores rounded to float16 (and held widened again).
    ref = [Param(_host(p.data).astype(np.float32), grad=np.zeros(p.data.shape, np.float32))
           for p in gpu]
    ref_opt = cls(ref, backend="numpy", **defaults, **hypers)
    # The states start as their initial values stored in float16, as the GPU run's do.
    values = ref_opt._group_hypers(0)
    for q in ref:
        enabled = ref_opt._spec.host["state_enabled"]({**values, "factored": q.data.ndim >= 2})
        for s in cls._spec.spec.states:
            if enabled[s.name]:
                init = ref_opt._spec.host["init_" + s.name](values, q.data)
                ref_opt.state[q][s.name] = np.asarray(
                    np.broadcast_to(init, q.data.shape).astype(np.float16), np.float32)
    # scalar states stay float64; row and column states are kept in float32, the math's
    scalars = {s.name for s in (*cls._spec.spec.scalars, *cls._spec.spec.factored)}
    for step in range(1, STEPS + 1):
        _set_grads(gpu, step, fake_cupy)
        for i, q in enumerate(ref):
            q.grad[...] = grad(step, q.data.astype(np.float16), i).astype(np.float32)
        gpu_opt.step()
        ref_opt.step()
        for q in ref:
            q.data[...] = q.data.astype(np.float16)
            for key, value in ref_opt.state[q].items():
                if key != "step" and key not in scalars:  # scalar states stay float64
                    value[...] = value.astype(np.float16)
    for k, (p, q) in enumerate(zip(gpu, ref, strict=True)):
        _bits(p.data, q.data.astype(np.float16), f"param {k}")
        st = gpu_opt.state[p]
        assert set(st) == set(ref_opt.state[q]) and st["step"] == STEPS
        for key in set(st) - {"step"} - scalars:
            assert st[key].dtype == np.float16 and isinstance(st[key], fakecupy.ndarray)
            _bits(st[key], ref_opt.state[q][key].astype(np.float16), f"param {k} {key}")
        for key in scalars & set(st):
            _bits(st[key], ref_opt.state[q][key], f"param {k} scalar state {key}")


def test_float16_scalar_arguments_are_float32(fake_cupy):
    calls = []

    class Spy(fakecupy.RawKernel):
        def __call__(self, grid, block, args, **kwargs):
            calls.append(args)
            return super().__call__(grid, block, args, **kwargs)

    class ElementwiseSpy(fakecupy.ElementwiseKernel):
        def __call__(self, *args, **kwargs):
            calls.append(args)
            return super().__call__(*args, **kwargs)

    cls = fresh_class("Adam")
    gpu = _params(fake_cupy, np.float16, (((3,), (2, 2)),), non_contiguous=())[0]
    opt = cls(gpu, lr=0.01)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fake_cupy, "RawKernel", Spy)
        mp.setattr(fake_cupy, "ElementwiseKernel", ElementwiseSpy)
        _train(opt, gpu, 1, 3, fake_cupy)
    scalars = [a for args in calls for a in args if not isinstance(a, fakecupy.ndarray)]
    floats = [a for a in scalars if isinstance(a, np.floating)]
    assert floats and {a.dtype for a in floats} == {np.dtype(np.float32)}
    assert len(calls) == len(gpu) + 2  # the first step per param, then one launch a step


# --- d: devices and their errors ------------------------------------------------------------

def test_a_group_mixing_numpy_and_gpu_params_names_both(fake_cupy):
    a = Param(np.ones(3, np.float32), grad=np.ones(3, np.float32))
    b = Param(fake_cupy.asarray(np.ones(3, np.float32)),
              grad=fake_cupy.asarray(np.ones(3, np.float32)))
    opt = optim.Adam([a, b], lr=0.1)
    with pytest.raises(OptdslError) as info:
        opt.step()
    message = str(info.value)
    assert "numpy.ndarray float32" in message
    assert "cupy.ndarray float32 on GPU 0" in message
    assert np.all(a.data == 1) and np.all(b.data.get() == 1)  # nothing stepped


def test_a_group_on_two_gpus_is_refused(fake_cupy):
    (p0,), (p1,) = _params(fake_cupy, np.float32, (((3,),), ((3,),)), non_contiguous=())
    with fake_cupy.cuda.Device(1):
        p1.data, p1.grad = fake_cupy.asarray(p1.data.get()), fake_cupy.zeros(3, np.float32)
    assert p1.data.device.id == 1
    opt = optim.Adam([p0, p1], lr=0.1)
    with pytest.raises(OptdslError, match="different devices") as info:
        opt.step()
    assert "on GPU 0" in str(info.value) and "on GPU 1" in str(info.value)
    assert not fakecupy.launches


@pytest.mark.parametrize("where", ["gpu1", "numpy"])
def test_a_gradient_elsewhere_than_its_param_is_refused(fake_cupy, where):
    (p,) = _params(fake_cupy, np.float32, (((4,),),), non_contiguous=())[0]
    if where == "gpu1":
        with fake_cupy.cuda.Device(1):
            p.grad = fake_cupy.zeros(4, np.float32)
        kind = "cupy.ndarray float32 on GPU 1"
    else:
        p.grad = np.zeros(4, np.float32)
        kind = "numpy.ndarray float32"
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(OptdslError, match="does not live where its parameter does") as info:
        opt.step()
    assert kind in str(info.value) and "cupy.ndarray float32 on GPU 0" in str(info.value)
    assert not fakecupy.launches


@pytest.mark.parametrize("flatten", [False, True], ids=["separate", "flattened"])
def test_groups_on_two_gpus_each_launch_on_their_own(fake_cupy, flatten):
    shapes = (((4, 3), (5,)),)
    gpu0 = _params(fake_cupy, np.float32, shapes, device=0, non_contiguous=())[0]
    gpu1 = _params(fake_cupy, np.float32, shapes, device=1, seed=1, non_contiguous=())[0]
    cpu = _params(None, np.float32, shapes, non_contiguous=())[0] + \
        _params(None, np.float32, shapes, seed=1, non_contiguous=())[0]
    if flatten:
        flat = optdsl.flatten(gpu0 + gpu1)
        assert [b.data.device.id for b in flat.buffers] == [0, 1]
    hypers = [{"amsgrad": True}, {"lr": 0.02}]
    gpu_opt = optim.Adam(_groups([gpu0, gpu1], hypers), lr=0.01)
    cpu_opt = optim.Adam(_groups([cpu[:2], cpu[2:]], hypers), lr=0.01, backend="numpy")
    _train(gpu_opt, gpu0 + gpu1, 1, STEPS, fake_cupy)
    _train(cpu_opt, cpu, 1, STEPS)
    _assert_same(gpu_opt, gpu0 + gpu1, cpu_opt, cpu, devices=[0, 0, 1, 1])
    # Every launch ran with its arrays' device current, and both devices launched.
    assert all(set(launch.array_devices) == {launch.device} for launch in fakecupy.launches)
    assert {launch.device for launch in fakecupy.launches} == {0, 1}
    assert fakecupy.module.cuda.runtime.getDevice() == 0  # put back


def test_a_non_contiguous_param_on_gpu_1_steps(fake_cupy):
    gpu = _params(fake_cupy, np.float32, (((3, 4), (5,)),), device=1,
                  non_contiguous={(0, 0)})[0]
    cpu = _params(None, np.float32, (((3, 4), (5,)),), non_contiguous={(0, 0)})[0]
    gpu_opt, cpu_opt = optim.Adam(gpu, lr=0.01), optim.Adam(cpu, lr=0.01, backend="numpy")
    _train(gpu_opt, gpu, 1, 3, fake_cupy)
    _train(cpu_opt, cpu, 1, 3)
    _assert_same(gpu_opt, gpu, cpu_opt, cpu)


# --- e: state_dict across devices, a state turned on mid-run --------------------------------

def _adam_pair(cp, dtype=np.float32, device=0):
    hypers = [{"amsgrad": True}, {"lr": 0.02, "weight_decay": 0.1}]
    shapes = (((4, 3), (), (5,)), ((1,), (2, 3)))
    gpu = _params(cp, dtype, shapes, device=device, non_contiguous=())
    cpu = _params(None, dtype, shapes, non_contiguous=())
    return (optim.Adam(_groups(gpu, hypers), lr=0.01), _flat(gpu),
            optim.Adam(_groups(cpu, hypers), lr=0.01, backend="numpy"), _flat(cpu))


def test_state_dict_of_a_gpu_optimizer_holds_gpu_copies_that_load_into_numpy(fake_cupy):
    gpu_opt, gpu, cpu_opt, cpu = _adam_pair(fake_cupy)
    _train(gpu_opt, gpu, 1, 3, fake_cupy)
    sd = gpu_opt.state_dict()
    for k, p in enumerate(gpu):
        for name, value in sd["state"][k].items():
            if name == "step":
                assert value == 3
                continue
            assert isinstance(value, fakecupy.ndarray) and value.device.id == 0
            view = gpu_opt.state[p][name]
            assert not fake_cupy.shares_memory(value, view)  # a copy
            _bits(value, view, f"{k} {name}")
    # Into an optimizer of NumPy params holding the same values; both carry on alike.
    for p, q in zip(gpu, cpu, strict=True):
        q.data[...] = p.data.get()
    cpu_opt.load_state_dict(sd)
    _train(gpu_opt, gpu, 4, STEPS, fake_cupy)
    _train(cpu_opt, cpu, 4, STEPS)
    _assert_same(gpu_opt, gpu, cpu_opt, cpu)


def test_state_dict_of_a_numpy_optimizer_loads_into_a_gpu_one(fake_cupy):
    gpu_opt, gpu, cpu_opt, cpu = _adam_pair(fake_cupy, np.float64)
    _train(cpu_opt, cpu, 1, 3)
    for p, q in zip(gpu, cpu, strict=True):
        p.data[...] = fake_cupy.asarray(q.data)
    gpu_opt.load_state_dict(cpu_opt.state_dict())
    _assert_same(gpu_opt, gpu, cpu_opt, cpu)  # the state was copied onto the GPU
    _train(gpu_opt, gpu, 4, STEPS, fake_cupy)
    _train(cpu_opt, cpu, 4, STEPS)
    _assert_same(gpu_opt, gpu, cpu_opt, cpu)


def test_state_dict_of_gpu_1_state_stays_on_gpu_1(fake_cupy):
    gpu_opt, gpu, _, _ = _adam_pair(fake_cupy, device=1)
    _train(gpu_opt, gpu, 1, 2, fake_cupy)
    sd = gpu_opt.state_dict()
    assert {v.device.id for st in sd["state"].values() for k, v in st.items()
            if k != "step"} == {1}


def test_load_state_dict_adding_a_state_to_one_gpu_1_param(fake_cupy):
    gpu_opt, gpu, cpu_opt, cpu = _adam_pair(fake_cupy, device=1)
    _train(gpu_opt, gpu, 1, 2, fake_cupy)
    sd = gpu_opt.state_dict()
    # Group 1 (params 3 and 4) has no amsgrad: its layout is made for param 3's states,
    # then grows for param 4's.
    sd["state"][4]["max_exp_avg_sq"] = sd["state"][4]["exp_avg_sq"].get()
    gpu_opt.load_state_dict(sd)
    assert gpu_opt.state[gpu[4]]["max_exp_avg_sq"].device.id == 1


@pytest.mark.parametrize("device", [0, 1])
def test_a_state_turned_on_mid_run_works_on_the_gpu_as_on_numpy(fake_cupy, device):
    gpu_opt, gpu, cpu_opt, cpu = _adam_pair(fake_cupy, device=device)
    for opt in (gpu_opt, cpu_opt):
        opt.param_groups[0]["amsgrad"] = False
    _train(gpu_opt, gpu, 1, 3, fake_cupy)
    _train(cpu_opt, cpu, 1, 3)
    assert "max_exp_avg_sq" not in gpu_opt.state[gpu[0]]
    for opt in (gpu_opt, cpu_opt):
        opt.param_groups[0]["amsgrad"] = True
    _train(gpu_opt, gpu, 4, STEPS, fake_cupy)
    _train(cpu_opt, cpu, 4, STEPS)
    assert "max_exp_avg_sq" in gpu_opt.state[gpu[0]]
    _assert_same(gpu_opt, gpu, cpu_opt, cpu)
    assert all(set(launch.array_devices) == {launch.device} == {device}
               for launch in fakecupy.launches)


# --- f: flatten on the GPU --------------------------------------------------------------------

@pytest.mark.parametrize("device", [0, 1])
def test_flatten_of_gpu_params_makes_device_buffers_that_zero_grad_keeps(fake_cupy, device):
    shapes = (((4, 3), (), (5,), (1,)),)
    params = _params(fake_cupy, np.float32, shapes, device=device, non_contiguous=())[0]
    values = [p.data.get() for p in params]
    flat = optdsl.flatten(params)
    (buffer,) = flat.buffers
    assert isinstance(buffer, FlatBuffer)
    for whole in (buffer.data, buffer.grad):
        assert isinstance(whole, fakecupy.ndarray) and whole.device.id == device
        assert whole.shape == (sum(v.size for v in values),)
    for p, v in zip(params, values, strict=True):
        assert p.data.base is buffer.data and p.grad.base is buffer.grad
        _bits(p.data, v, "values kept")
    assert flat.is_flat()
    opt = optim.Adam(params, lr=0.01)
    _train(opt, params, 1, 3, fake_cupy)
    grads = [p.grad for p in params]
    opt.zero_grad()  # zeroed in place, views kept
    assert [p.grad for p in params] == grads
    assert not buffer.grad.get().any()
    assert flat.is_flat()
    _train(opt, params, 4, 5, fake_cupy)
    assert flat.is_flat()
    assert all(p.data.base is buffer.data for p in params)
    fakecupy.counts.clear()
    flat.zero_grad()
    assert not buffer.grad.get().any() and flat.is_flat()


def test_flatten_of_a_non_contiguous_gpu_1_param(fake_cupy):
    params = _params(fake_cupy, np.float32, (((3, 4), (5,)),), device=1,
                     non_contiguous={(0, 0)})[0]
    values = [p.data.get() for p in params]
    flat = optdsl.flatten(params)
    assert flat.buffers[0].data.device.id == 1
    for p, v in zip(params, values, strict=True):
        _bits(p.data, v, "values kept")


def test_zero_grad_in_place_of_a_non_contiguous_gpu_1_grad(fake_cupy):
    with fake_cupy.cuda.Device(1):
        p = Param(fake_cupy.zeros(3, np.float32) + 1)
        p.grad = (fake_cupy.zeros((3, 2), np.float32) + 1)[:, 0]
    optim.Adam([p], lr=0.1).zero_grad(set_to_none=False)
    assert p.grad.device.id == 1 and not np.any(p.grad.get())


# --- the fake itself --------------------------------------------------------------------------

def test_the_fake_is_cupy_only_inside_the_fixture(fake_cupy):
    import cupy

    assert cupy is fake_cupy and cupy.ndarray is fakecupy.ndarray
    with pytest.raises(ModuleNotFoundError):
        import cupy._core  # noqa: F401 - real CuPy's submodules are hidden meanwhile
    a = fake_cupy.zeros(3, np.float32)
    assert type(a).__module__ == "cupy" and a.device.id == 0 and a.base is None
    assert a.data.ptr == a.__array_interface__["data"][0]
    with fake_cupy.cuda.Device(1):
        b = fake_cupy.asarray(np.arange(3, dtype=np.float32))
        assert (b * 2).device.id == 1 and fake_cupy.cuda.runtime.getDevice() == 1
    assert b[1:].device.id == 1 and b.reshape(3, 1).device.id == 1
    assert b.copy().device.id == 0  # onto the current device, as CuPy's
    with pytest.raises(ValueError, match="Peer access is unavailable"):
        b + 1  # a kernel on GPU 0 reading GPU 1
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3, np.float32)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        a[...] = np.ones(3, np.float32)
    a[...] = b  # same layout: a memcpy, across devices
    assert a.get().tolist() == [0, 1, 2]


def test_the_fake_leaves_nothing_behind():
    pytest.importorskip("cupy")
    import cupy
    from cupy._core import _kernel

    from optdsl.backend import get, numpy_backend

    accepts = numpy_backend.NumpyBackend.accepts
    spec = optim.Adam._spec
    path = spec.host["decide"](optim.Adam([Param(np.zeros(1))]).defaults, 1)
    kernel = spec.kernel(get("cupy"), path)
    runner = getattr(kernel.run, "__self__", kernel.run)  # Kernel.run: the _Runner
    before, runner._elementwise = runner._elementwise, "a real CuPy kernel"
    try:
        with fakecupy.installed() as fake:
            import cupy as inside

            assert inside is fake and numpy_backend.NumpyBackend.accepts is not accepts
            assert isinstance(runner.elementwise(), fakecupy.ElementwiseKernel)
        assert runner._elementwise == "a real CuPy kernel"  # put back, the fake's dropped
    finally:
        runner._elementwise = before
    import cupy as after
    from cupy._core import _kernel as kernel_after

    assert after is cupy and kernel_after is _kernel
    assert numpy_backend.NumpyBackend.accepts is accepts
