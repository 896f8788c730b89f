"""Step plans: after a param-by-param step, later steps reuse a plan that runs params lying
end to end in memory (as after optdsl.flatten) as one kernel call per group, dtype and step
count, for as long as nothing changed.

Most tests step two optimizers side by side: the one under test, over flattened params
whose gradients are written in place (the planned path), and a reference over copies
whose gradients are new arrays every step, so it never reuses a plan (the param-by-param
path, guarded by ``_slow_only``). Both must agree bit for bit, params and state_dict.
"""

from __future__ import annotations

import copy
import functools
from collections import defaultdict

import numpy as np
import pytest
from rt_util import adam_reference, assert_bits_equal, assert_close, assert_state_dicts_equal
from rt_util import grad as _rt_grad

import optdsl
from optdsl import Optimizer, Param, optim
from optdsl.backend import pool
from optdsl.backend.numpy_backend import CHUNK
from optdsl.schedules import StepLR


def _on_numpy(cls: type[Optimizer]) -> type[Optimizer]:
    """``cls`` on the NumPy backend unless told otherwise: these tests are about the
    runtime's plans (and count its kernel calls), not about a backend, and stay fast and
    the same whatever else is installed. test_every_backend runs them on the others."""

    def __init__(self, params, *, backend="numpy", **hypers):
        cls.__init__(self, params, backend=backend, **hypers)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": __name__})


SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop = (
    _on_numpy(getattr(optim, name))
    for name in ("SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "RMSprop"))

# 30 shapes, 0-d and empty ones included.
SHAPES = [(), (0,), (1,), (7,), (3, 4), (2, 0, 3), (5, 1, 2), (64,), (16, 16), (1, 1),
          (3,), (), (10, 3), (2, 3, 4), (0,), (33,), (8, 1), (1, 9), (4, 4, 4), (6,),
          (), (2, 2), (100,), (5, 5), (1,), (3, 3, 3), (0, 5), (12,), (7, 7), (2,)]

CONFIGS = [
    (SGD, {"lr": 0.05}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "maximize": True}),
    (Adam, {"lr": 1e-2}),
    (Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    (Adam, {"lr": 1e-2, "decoupled_weight_decay": True, "weight_decay": 0.1}),
    (AdamW, {"lr": 1e-2}),
    (AdamW, {"lr": 1e-2, "amsgrad": True, "maximize": True}),
    (RMSprop, {"lr": 1e-2}),
    (RMSprop, {"lr": 1e-2, "centered": True, "momentum": 0.9, "weight_decay": 1e-2}),
    (Adagrad, {"lr": 0.1}),
    (Adagrad, {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1,
               "weight_decay": 1e-2}),
    (Adadelta, {}),
    (Adadelta, {"lr": 0.5, "rho": 0.95, "weight_decay": 1e-2}),
]
CONFIG_IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CONFIGS)]
DEFAULTS = [(SGD, {"lr": 0.05, "momentum": 0.9}), (Adam, {"lr": 1e-2}),
            (AdamW, {"lr": 1e-2}), (RMSprop, {"lr": 1e-2, "centered": True}),
            (Adagrad, {"lr": 0.1}), (Adadelta, {})]
DEFAULT_IDS = [cls.__name__ for cls, _ in DEFAULTS]


# --- helpers ------------------------------------------------------------------------------------


def arrays(shapes=SHAPES, dtypes=(np.float64,), seed=0) -> list[np.ndarray]:
    """Entries of magnitude 0.5..1.5, random signs; dtypes cycle over the shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for i, shape in enumerate(shapes):
        x = rng.uniform(0.5, 1.5, size=shape) * np.where(rng.random(shape) < 0.5, -1, 1)
        out.append(np.array(x, dtype=dtypes[i % len(dtypes)]))
    return out


@functools.lru_cache(maxsize=4096)
def _noise(step: int, which: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
    noise = np.random.default_rng(10_000 * which + step).standard_normal(shape).astype(dtype)
    noise.flags.writeable = False
    return noise


def grad(step: int, data: np.ndarray, which: int) -> np.ndarray:
    """rt_util.grad (0.5 * p + noise(step, which)), an array also when 0-d, with the noise
    drawn once for both optimizers of a test."""
    data = np.asarray(data)
    return np.array(data * data.dtype.type(0.5) + _noise(step, which, data.shape, data.dtype))


def twins(arrs):
    """(flattened params, their FlatParams, plain copies)."""
    fast = [Param(a.copy()) for a in arrs]
    flat = optdsl.flatten(fast)
    slow = [Param(a.copy()) for a in arrs]
    return fast, flat, slow


def _slow_only(opt: Optimizer) -> Optimizer:
    """Fail the test if the reference ever steps with a plan."""

    def refuse(plan, values):
        raise AssertionError("the reference optimizer reused a plan")

    opt._run_plan = refuse
    return opt


def step_fast(opt, params, step: int) -> None:
    """Gradients written into each param's existing grad array (params without one skip)."""
    for i, p in enumerate(params):
        if p.grad is not None:
            p.grad[...] = grad(step, p.data, i)
    opt.step()


_kept: list = []


def step_slow(opt, params, step: int, skip=()) -> None:
    """New gradient arrays every step (the previous ones kept alive, so no new array can
    take an old one's id); params in ``skip`` get none."""
    _kept[:] = [p.grad for p in params]
    for i, p in enumerate(params):
        p.grad = None if i in skip else grad(step, p.data, i)
    opt.step()


def assert_same(fast_opt, fast, slow_opt, slow) -> None:
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert_bits_equal(a.data, b.data, f"param {i}")
    assert_state_dicts_equal(fast_opt.state_dict(), slow_opt.state_dict())


class _Calls(list):
    def __repr__(self) -> str:  # short: a failing assert would print every optimizer
        return f"<{len(self)} kernel calls>"


@pytest.fixture
def launches(monkeypatch):
    """Every kernel call: (optimizer, elements, dtype)."""
    calls = _Calls()
    original = Optimizer._launch

    def spy(self, kernel, backend, n, buffers, args, dtype, mirror=None):
        calls.append((self, n, np.dtype(dtype)))
        return original(self, kernel, backend, n, buffers, args, dtype, mirror)

    monkeypatch.setattr(Optimizer, "_launch", spy)
    return calls


def calls_of(calls, opt) -> list[tuple[int, np.dtype]]:
    return [(n, dtype) for o, n, dtype in calls if o is opt]


@pytest.fixture
def planned(monkeypatch):
    """The optimizers whose step ran from a plan, once per group and step (the references
    never do: see _slow_only)."""
    ran = _Calls()
    original = Optimizer._run_plan

    def spy(self, plan, values):
        done = original(self, plan, values)
        if done:
            ran.append(self)
        return done

    monkeypatch.setattr(Optimizer, "_run_plan", spy)
    return ran


# No empty params: they split runs (see test_empty_params_do_not_split_the_run).
FULL = [s for s in SHAPES if np.prod(s) > 0]


def test_grad_is_rt_utils():
    for shape, dtype in (((3, 2), np.float32), ((), np.float64), ((0,), np.float64)):
        data = np.asarray(np.linspace(-1, 1, int(np.prod(shape))).reshape(shape), dtype)
        assert_bits_equal(grad(4, data, 7), np.asarray(_rt_grad(4, data, 7)))


# --- equivalence: the planned path gives the param-by-param path's bits ------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,hypers", CONFIGS, ids=CONFIG_IDS)
def test_flattened_steps_match_the_param_by_param_path(cls, hypers, dtype, launches,
                                                       planned):
    arrs = arrays(dtypes=(dtype,))
    fast, _, slow = twins(arrs)
    opt, ref = cls(fast, **hypers), _slow_only(cls(slow, **hypers))
    for step in range(1, 16):
        launches.clear()
        planned.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        assert len(planned) == (step > 1)  # the first step is param by param
        assert len(calls_of(launches, ref)) == len(SHAPES)
    assert_same(opt, fast, ref, slow)
    assert all(opt.state[p]["step"] == 15 for p in fast)


@pytest.mark.parametrize("backend", optdsl.backends("cpu"))
def test_every_backend(backend, planned):
    arrs = arrays(dtypes=(np.float32, np.float64), seed=26)
    fast, _, slow = twins(arrs)
    hypers = {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1, "backend": backend}
    opt, ref = Adam(fast, **hypers), _slow_only(Adam(slow, **hypers))
    for step in range(1, 6):
        planned.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        assert len(planned) == (step > 1)
    assert_same(opt, fast, ref, slow)


@pytest.mark.parametrize("cls,hypers", DEFAULTS, ids=DEFAULT_IDS)
def test_two_param_groups(cls, hypers):
    arrs = arrays(dtypes=(np.float32,), seed=1)
    fast, _, slow = twins(arrs)
    override = {"lr": 0.5 * hypers.get("lr", 1.0), "weight_decay": 0.05}

    def groups(ps):
        return [{"params": ps[:12]}, {"params": ps[12:], **override}]

    opt, ref = cls(groups(fast), **hypers), _slow_only(cls(groups(slow), **hypers))
    for step in range(1, 9):  # (the calls: test_one_call_per_group_and_dtype)
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
    assert_same(opt, fast, ref, slow)


@pytest.mark.parametrize("cls,hypers", DEFAULTS, ids=DEFAULT_IDS)
def test_interleaved_param_groups_are_still_right(cls, hypers):
    """Groups taking every other param of one buffer: nothing lies end to end in a
    group's state, so every param is its own call, with the same results."""
    arrs = arrays(seed=2)
    fast, _, slow = twins(arrs)

    def groups(ps):
        return [{"params": ps[0::2]}, {"params": ps[1::2], "lr": 0.03}]

    opt, ref = cls(groups(fast), **hypers), _slow_only(cls(groups(slow), **hypers))
    for step in range(1, 6):
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
    assert_same(opt, fast, ref, slow)


@pytest.mark.parametrize("cls,hypers", DEFAULTS, ids=DEFAULT_IDS)
def test_float32_and_float64_mixed_in_one_group(cls, hypers, planned):
    arrs = arrays(dtypes=(np.float32, np.float64), seed=3)
    fast, flat, slow = twins(arrs)
    assert [b.dtype for b in flat.buffers] == [np.float32, np.float64]
    opt, ref = cls(fast, **hypers), _slow_only(cls(slow, **hypers))
    for step in range(1, 9):
        planned.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        assert len(planned) == (step > 1)
    assert_same(opt, fast, ref, slow)
    for p in fast:  # each param's state in its own dtype
        assert all(v.dtype == p.data.dtype for k, v in opt.state[p].items() if k != "step")


@pytest.mark.parametrize("order", ["reversed", "swapped"])
def test_the_optimizer_lists_the_params_in_another_order(order):
    """Runs follow the group's order (the state's layout) and memory both: params next
    to each other in memory but not in the group, or the other way round, are separate
    calls, also when a param between them has no gradient."""
    arrs = arrays(FULL, seed=28)
    fast, _, slow = twins(arrs)
    n = len(fast)
    perm = list(range(n))[::-1] if order == "reversed" else \
        [0, 2, 1, 3, 5, 4] + list(range(6, n))
    opt, ref = (Adam([ps[i] for i in perm], lr=0.01) for ps in (fast, slow))
    _slow_only(ref)
    gone = 1  # between 0 and 2 in memory, and (swapped) between 2 and 3 in the group
    view = fast[gone].grad
    for step in range(1, 9):
        fast[gone].grad = None if step in (3, 4) else view
        step_fast(opt, fast, step)
        step_slow(ref, slow, step, skip={gone} if step in (3, 4) else ())
    assert_same(opt, fast, ref, slow)


def test_flattening_mid_run_keeps_the_state(launches):
    """An optimizer built (and stepped) before flatten: the state carries over and the
    steps after flatten are one call each."""
    arrs = arrays(FULL, seed=4)
    fast, slow = [Param(a.copy()) for a in arrs], [Param(a.copy()) for a in arrs]
    opt, ref = Adam(fast, lr=1e-2, amsgrad=True), _slow_only(Adam(slow, lr=1e-2, amsgrad=True))
    for step in range(1, 4):
        step_slow(opt, fast, step)
        step_slow(ref, slow, step)
    optdsl.flatten(fast)  # copies the last grads in; values unchanged
    for step in range(4, 10):
        launches.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        if step > 4:
            assert len(calls_of(launches, opt)) == 1
    assert_same(opt, fast, ref, slow)


# --- kernel-call counts -------------------------------------------------------------------------


@pytest.mark.parametrize("cls,hypers", [(Adam, {"lr": 1e-3}), (SGD, {"lr": 0.1})],
                         ids=["Adam", "SGD"])
def test_a_thousand_flattened_params_are_one_call_per_step(cls, hypers, launches):
    rng = np.random.default_rng(5)
    params = [Param(rng.standard_normal(int(rng.integers(1, 20))).astype(np.float32))
              for _ in range(1000)]
    flat = optdsl.flatten(params)
    opt = cls(params, **hypers)
    per_step = []
    for step in range(1, 5):
        launches.clear()
        flat.buffers[0].grad[...] = step * 0.01
        opt.step()
        per_step.append(calls_of(launches, opt))
    assert len(per_step[0]) == 1000  # the first step: param by param
    for calls in per_step[1:]:
        assert calls == [(flat.buffers[0].data.size, np.dtype(np.float32))]


def test_a_thousand_plain_params_are_one_call_each(launches):
    params = [Param(np.full(3, float(i))) for i in range(1000)]
    for p in params:
        p.grad = np.ones(3)
    opt = Adam(params)
    for _ in range(3):
        launches.clear()
        opt.step()
        assert calls_of(launches, opt) == [(3, np.dtype(np.float64))] * 1000


def test_empty_params_do_not_split_the_run(launches):
    """An empty param lies end to end with anything (it takes no room), but NumPy gives
    an empty slice the address of its buffer's start, not of its offset: the run must
    not break there."""
    params = [Param(np.ones(3)), Param(np.ones(0)), Param(np.ones((2, 0))), Param(np.ones(4))]
    optdsl.flatten(params)
    opt = Adam(params)
    opt.step()
    launches.clear()
    opt.step()
    assert calls_of(launches, opt) == [(7, np.dtype(np.float64))]


def test_a_training_loop_with_zero_grad_stays_planned(launches):
    """zero_grad() zeroes flattened grads in place, so the plan survives it."""
    params = [Param(a) for a in arrays(FULL, seed=27)]
    flat = optdsl.flatten(params)
    opt = Adagrad(params, lr=0.1)
    for step in range(1, 6):
        launches.clear()
        opt.zero_grad()
        for i, p in enumerate(params):
            p.grad += grad(step, p.data, i)  # accumulate, as a backward pass does
        opt.step()
        if step > 1:
            assert calls_of(launches, opt) == [(flat.buffers[0].data.size,
                                                np.dtype(np.float64))]


def test_one_call_per_group_and_dtype(launches):
    arrs = arrays(FULL, dtypes=(np.float32, np.float64), seed=6)
    params = [Param(a) for a in arrs]
    optdsl.flatten(params)
    opt = RMSprop([{"params": params[:10]}, {"params": params[10:], "lr": 0.1}])
    for step in range(1, 5):
        launches.clear()
        step_fast(opt, params, step)
    sizes = sorted(calls_of(launches, opt), key=str)
    expected = [(sum(a.size for a in part if a.dtype == dtype), np.dtype(dtype))
                for part in (arrs[:10], arrs[10:]) for dtype in (np.float32, np.float64)]
    assert sizes == sorted(expected, key=str)


def test_each_group_keeps_its_plan(planned):
    """A param-by-param step of one group (its first, or one after a change) writes the
    state, and must not end the plans of the other groups: with two groups both must run
    from their plans from the second step on."""
    params = [Param(np.ones(3)) for _ in range(4)]
    optdsl.flatten(params)
    opt = SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1)
    for step in range(1, 5):
        planned.clear()
        opt.step()
        if step > 1:
            assert len(planned) == 2, f"step {step}: {len(planned)} of 2 groups planned"


def test_a_group_stepped_param_by_param_leaves_the_others_planned(planned):
    """A group that cannot be planned (a transposed param) steps param by param every
    step; the flattened group next to it must still run from its plan."""
    flat = [Param(np.ones(3)) for _ in range(3)]
    optdsl.flatten(flat)
    odd = Param(np.ones((2, 3)).T, grad=np.ones((3, 2)))
    opt = Adam([{"params": flat}, {"params": [odd]}])
    for step in range(1, 5):
        planned.clear()
        opt.step()
        if step > 1:
            assert len(planned) == 1, f"step {step}: the flat group was not planned"


@pytest.mark.parametrize("late", [0, 2, 4], ids=["first", "middle", "last"])
def test_params_with_different_step_counts_are_partitioned(late, launches):
    """One param's grad appears only at step 4: from then on the group holds two step
    counts, each its own kernel (bias corrections differ) over its own runs."""
    arrs = arrays(shapes=[(3,), (4,), (), (5, 2), (6,)], seed=7)
    fast, flat, slow = twins(arrs)
    view = fast[late].grad
    fast[late].grad = None
    opt, ref = Adam(fast, lr=0.1), _slow_only(Adam(slow, lr=0.1))
    for step in range(1, 10):
        if step == 4:
            fast[late].grad = view
        launches.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step, skip={late} if step < 4 else ())
        if step in (2, 3):  # the others: one run, or two around the gap
            assert len(calls_of(launches, opt)) == (1 if late in (0, 4) else 2)
        if step > 4:
            sizes = sorted(n for n, _ in calls_of(launches, opt))
            # the late param alone; the others in one run, or two when it splits them
            expected = [arrs[late].size] + (
                [sum(a.size for a in arrs) - arrs[late].size] if late in (0, 4) else
                [sum(a.size for a in arrs[:late]), sum(a.size for a in arrs[late + 1:])])
            assert sizes == sorted(expected)
    assert [opt.state[p]["step"] for p in fast] == [9 if i != late else 6 for i in range(5)]
    assert_same(opt, fast, ref, slow)


def test_a_param_appended_to_the_group_later(launches):
    arrs = arrays(shapes=[(3,), (4,), (5, 2), (6,)], seed=8)
    fast, _, slow = twins(arrs)
    opt, ref = Adam(fast[:3], lr=0.1), _slow_only(Adam(slow[:3], lr=0.1))
    for step in range(1, 10):
        if step == 4:  # torch code does this; its state comes lazily
            opt.param_groups[0]["params"].append(fast[3])
            ref.param_groups[0]["params"].append(slow[3])
        launches.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step, skip={3} if step < 4 else ())
        if step > 4:
            assert sorted(n for n, _ in calls_of(launches, opt)) == [6, 17]
    assert_same(opt, fast, ref, slow)


# --- what ends a plan ---------------------------------------------------------------------------


def test_the_step_count_advances_on_planned_steps(launches):
    """Adam's bias corrections over 20 planned steps: the written-out reference (torch's
    formula, in rt_util), and the param-by-param path to the bit."""
    arrs = arrays(shapes=[(4, 3), (5,), (), (7,)], seed=9)
    fast, _, slow = twins(arrs)
    opt, ref = Adam(fast, lr=0.01), _slow_only(Adam(slow, lr=0.01))
    expected = [(a.copy(), np.zeros_like(a), np.zeros_like(a)) for a in arrs]
    for step in range(1, 21):
        launches.clear()
        expected = [adam_reference(p, grad(step, p, i), m, v, step, lr=0.01)[:3]
                    for i, (p, m, v) in enumerate(expected)]
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        if step > 1:
            assert len(calls_of(launches, opt)) == 1
    for p, (rp, rm, rv) in zip(fast, expected, strict=True):
        assert opt.state[p]["step"] == 20
        assert_close(p.data, rp)
        assert_close(opt.state[p]["exp_avg"], rm)
        assert_close(opt.state[p]["exp_avg_sq"], rv)
    assert_same(opt, fast, ref, slow)


def test_a_param_without_a_grad_is_skipped_then_resumes(launches):
    arrs = arrays(seed=11)
    fast, _, slow = twins(arrs)
    skipped = {0, 11, 16, 29}  # the buffer's first param, a 0-d one, a middle one, the last
    opt, ref = Adam(fast, lr=0.01, amsgrad=True), _slow_only(Adam(slow, lr=0.01, amsgrad=True))
    views = {i: fast[i].grad for i in skipped}
    for step in range(1, 13):
        if step == 5:
            before = {i: (fast[i].data.copy(), copy.deepcopy(dict(opt.state[fast[i]])))
                      for i in skipped}
            for i in skipped:
                fast[i].grad = None
        if step == 8:
            for i in skipped:
                data, state = before[i]
                assert_bits_equal(fast[i].data, data, f"skipped param {i} moved")
                assert_state_dicts_equal(dict(opt.state[fast[i]]), state)
                fast[i].grad = views[i]
        step_fast(opt, fast, step)
        step_slow(ref, slow, step, skip=skipped if 5 <= step < 8 else ())
    assert [opt.state[p]["step"] for p in fast] == [
        9 if i in skipped else 12 for i in range(len(fast))]
    assert_same(opt, fast, ref, slow)


@pytest.mark.parametrize("what", ["grad", "data", "data-new-values", "grad-and-data"])
def test_rebinding_grad_or_data(what, launches):
    arrs = arrays(FULL, seed=12)
    fast, flat, slow = twins(arrs)
    opt, ref = RMSprop(fast, lr=0.01, momentum=0.5), _slow_only(RMSprop(slow, lr=0.01,
                                                                         momentum=0.5))
    k = 6
    assert arrs[k].shape == (16, 16)
    for step in range(1, 12):
        if step == 5:
            if "grad" in what:
                fast[k].grad = np.zeros(arrs[k].shape)  # written in place from now on
            if what.startswith("data"):
                fast[k].data = fast[k].data.copy()
            if what == "data-new-values":
                fast[k].data[...] = 0.25
                slow[k].data[...] = 0.25
            if what == "grad-and-data":
                fast[k].data = np.asfortranarray(fast[k].data)  # (16, 16): not C-contiguous
            frozen = flat.buffers[0].data[flat.buffers[0].slices[k]].copy()
        launches.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        if step > 6 and what == "grad":
            assert len(calls_of(launches, opt)) == 3  # before k, k alone, after k
    assert_same(opt, fast, ref, slow)
    if what != "grad":  # the param left the buffer: its old slice no longer moves
        assert_bits_equal(flat.buffers[0].data[flat.buffers[0].slices[k]], frozen)


def _edit(opt, p, how: str) -> None:
    st = opt.state[p]
    shape, dtype = p.data.shape, p.data.dtype
    if how == "assign":
        st["exp_avg"] = np.full(shape, 0.25, dtype)
    elif how == "assign-other-dtype":
        st["exp_avg_sq"] = np.full(shape, 2.0, np.float32)
    elif how == "update":
        st.update(exp_avg=np.full(shape, -0.5), exp_avg_sq=np.full(shape, 3.0))
    elif how == "ior":
        st |= {"exp_avg": np.full(shape, 0.125)}
    elif how == "replace-entry":
        opt.state[p] = {"step": st["step"], "exp_avg": np.full(shape, 0.5),
                        "exp_avg_sq": np.array(st["exp_avg_sq"]) * 2}
    elif how == "rewind-step":
        st["step"] = 1
    elif how == "pop":
        st.pop("exp_avg")
    elif how == "del":
        del st["exp_avg_sq"]
    elif how == "in-place":
        st["exp_avg"][...] = 0.75
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["assign", "assign-other-dtype", "update", "ior",
                                 "replace-entry", "rewind-step", "pop", "del", "in-place"])
def test_editing_the_state_between_planned_steps(how, planned):
    arrs = arrays(seed=13)
    fast, _, slow = twins(arrs)
    opt, ref = Adam(fast, lr=0.01), _slow_only(Adam(slow, lr=0.01))
    edited = (3, 11, 22)
    for step in range(1, 11):
        if step == 5:
            for i in edited:
                _edit(opt, fast[i], how)
                _edit(ref, slow[i], how)
        planned.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        if step > 5 or (how == "in-place" and step > 1):
            assert len(planned) == 1  # planned again after the edit (in place: still)
    assert_same(opt, fast, ref, slow)


def test_a_new_state_array_is_live_state_after_the_step():
    """A replaced array is copied into the group's buffer at the next step, and the entry
    then is the buffer's view again: editing it in place edits the state."""
    fast, _, _ = twins(arrays(shapes=[(3,), (2,)]))
    opt = SGD(fast, lr=0.1, momentum=0.9)
    step_fast(opt, fast, 1)
    step_fast(opt, fast, 2)
    mine = np.full(3, 5.0)
    opt.state[fast[0]]["momentum_buffer"] = mine
    step_fast(opt, fast, 3)
    buf = opt.state[fast[0]]["momentum_buffer"]
    assert buf is not mine and buf.base is opt.state[fast[1]]["momentum_buffer"].base
    step_fast(opt, fast, 4)
    buf[...] = 0.0
    before = fast[0].data.copy()
    fast[0].grad[...] = 1.0
    opt.step()
    assert_bits_equal(fast[0].data, before - 0.1)


def test_a_schedule_changing_lr_between_planned_steps(planned):
    arrs = arrays(seed=14)
    fast, _, slow = twins(arrs)
    opt, ref = Adam(fast, lr=0.05), _slow_only(Adam(slow, lr=0.05))
    scheds = StepLR(opt, step_size=3, gamma=0.5), StepLR(ref, step_size=3, gamma=0.5)
    for step in range(1, 14):
        planned.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        for s in scheds:
            s.step()
        if step > 1:
            assert len(planned) == 1  # a new lr needs no new plan
    assert opt.param_groups[0]["lr"] == 0.05 * 0.5 ** 4
    assert_same(opt, fast, ref, slow)


def test_hypers_edited_in_the_group_between_planned_steps():
    arrs = arrays(seed=15)
    fast, _, slow = twins(arrs)
    opt, ref = Adam(fast, lr=0.05), _slow_only(Adam(slow, lr=0.05))
    edits = {3: {"betas": (0.5, 0.9)}, 5: {"weight_decay": 0.1}, 7: {"maximize": True},
             9: {"eps": 1e-3, "decoupled_weight_decay": True}}
    for step in range(1, 12):
        for o in (opt, ref):
            o.param_groups[0].update(edits.get(step, {}))
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
    assert_same(opt, fast, ref, slow)


@pytest.mark.parametrize("cls,hypers,key,value,state", [
    (Adam, {"lr": 0.01}, "amsgrad", True, "max_exp_avg_sq"),
    (AdamW, {"lr": 0.01, "amsgrad": True}, "amsgrad", False, "max_exp_avg_sq"),
    (SGD, {"lr": 0.01}, "momentum", 0.9, "momentum_buffer"),
    (RMSprop, {"lr": 0.01}, "centered", True, "grad_avg"),
], ids=["amsgrad-on", "amsgrad-off", "sgd-momentum-on", "rmsprop-centered-on"])
def test_a_conditional_state_turned_on_or_off_mid_run(cls, hypers, key, value, state,
                                                     planned):
    arrs = arrays(seed=16)
    fast, _, slow = twins(arrs)
    opt, ref = cls(fast, **hypers), _slow_only(cls(slow, **hypers))
    for step in range(1, 13):
        if step == 6:
            opt.param_groups[0][key] = value
            ref.param_groups[0][key] = value
        planned.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        if step > 6:
            assert len(planned) == 1
    assert all(state in opt.state[p] for p in fast)  # kept when turned off, as in torch
    assert_same(opt, fast, ref, slow)


def _mixed_amsgrad_state_dict(opt):
    """Both params at step 3; only the first has max_exp_avg_sq (it stepped with
    amsgrad in an earlier run)."""
    sd = opt.state_dict()
    sd["state"] = {0: {"step": 3, "exp_avg": np.full(3, 0.1), "exp_avg_sq": np.full(3, 0.1),
                       "max_exp_avg_sq": np.full(3, 0.2)},
                   1: {"step": 3, "exp_avg": np.full(2, 0.1), "exp_avg_sq": np.full(2, 0.1)}}
    return sd


def test_amsgrad_turned_on_when_only_some_params_have_its_state():
    """amsgrad turned on when the first param already has max_exp_avg_sq (from a loaded
    state_dict) and the second has not: the second must get one too, as on the
    param-by-param path, not step from a buffer row its state does not list."""
    fast, _, slow = twins([np.ones(3), np.ones(2)])
    opt, ref = Adam(fast, lr=0.1), _slow_only(Adam(slow, lr=0.1))
    for o in (opt, ref):
        o.load_state_dict(_mixed_amsgrad_state_dict(o))
    for step in range(1, 6):
        if step == 3:
            opt.param_groups[0]["amsgrad"] = ref.param_groups[0]["amsgrad"] = True
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
    assert "max_exp_avg_sq" in ref.state[slow[1]]
    assert "max_exp_avg_sq" in opt.state[fast[1]]
    assert_same(opt, fast, ref, slow)


def test_load_state_dict_mid_run(planned):
    arrs = arrays(seed=17)
    fast, _, slow = twins(arrs)
    opt = RMSprop(fast, lr=0.01, centered=True, momentum=0.9)
    ref = _slow_only(RMSprop(slow, lr=0.01, centered=True, momentum=0.9))
    for step in range(1, 13):
        if step == 4:
            saved = opt.state_dict()
        if step == 8:  # back to the state of step 3 (the params keep their values)
            opt.load_state_dict(saved)
            ref.load_state_dict(saved)
        planned.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        if step > 8:
            assert len(planned) == 1
    assert opt.state[fast[0]]["step"] == 3 + 5
    assert_same(opt, fast, ref, slow)


def test_load_state_dict_with_other_hypers_mid_run():
    arrs = arrays(seed=18)
    fast, _, slow = twins(arrs)
    opt, ref = Adam(fast, lr=0.01), _slow_only(Adam(slow, lr=0.01))
    for step in range(1, 10):
        if step == 5:
            sd = opt.state_dict()
            sd["param_groups"][0].update(lr=0.1, amsgrad=True)
            opt.load_state_dict(sd)
            ref.load_state_dict(sd)
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
    assert opt.param_groups[0]["lr"] == 0.1
    assert_same(opt, fast, ref, slow)


def test_add_param_group_mid_run():
    arrs, more = arrays(seed=19), arrays(shapes=SHAPES[:8], dtypes=(np.float64,), seed=20)
    fast, _, slow = twins(arrs)
    fast2, _, slow2 = twins(more)
    opt = AdamW(fast, lr=0.01, amsgrad=True)
    ref = _slow_only(AdamW(slow, lr=0.01, amsgrad=True))
    for step in range(1, 12):
        if step == 5:
            opt.add_param_group({"params": fast2, "lr": 0.1, "amsgrad": False})
            ref.add_param_group({"params": slow2, "lr": 0.1, "amsgrad": False})
        step_fast(opt, fast + fast2, step)
        step_slow(ref, slow + slow2, step, skip=set(range(30, 38)) if step < 5 else ())
    assert_same(opt, fast + fast2, ref, slow + slow2)


@pytest.mark.parametrize("flat_too", [False, True], ids=["alone", "with-flat-params"])
def test_non_contiguous_params(flat_too, launches):
    """A transposed view as .data: stepped through a contiguous copy, written back into
    the view (its base moves), and never run from a plan."""
    bases = [np.arange(12.0).reshape(3, 4) / 7, np.arange(30.0).reshape(5, 6) / 11]
    arrs = arrays(shapes=[(3,), (2, 2)], seed=21) if flat_too else []
    fast, _, slow = twins(arrs)
    fast_bases, slow_bases = [b.copy() for b in bases], [b.copy() for b in bases]
    for b in fast_bases:
        fast.append(Param(b.T, grad=np.zeros(b.T.shape)))
    slow += [Param(b.T) for b in slow_bases]
    opt, ref = Adam(fast, lr=0.1), _slow_only(Adam(slow, lr=0.1))
    for step in range(1, 8):
        launches.clear()
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
        assert len(calls_of(launches, opt)) == len(fast)
    assert_same(opt, fast, ref, slow)
    for f, s, b in zip(fast_bases, slow_bases, bases, strict=True):
        assert_bits_equal(f, s)
        assert not np.array_equal(f, b)  # the base array itself moved
    assert fast[-1].data.base is fast_bases[-1]


def test_a_non_contiguous_grad_is_right():
    fast, _, slow = twins(arrays(shapes=[(4, 3), (5,)], seed=22))
    opt, ref = SGD(fast, lr=0.1, momentum=0.9), _slow_only(SGD(slow, lr=0.1, momentum=0.9))
    fast[0].grad = np.zeros((3, 4)).T
    for step in range(1, 6):
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
    assert_same(opt, fast, ref, slow)


def test_a_deepcopy_of_the_optimizer_steps_on_its_own():
    fast, _, _ = twins(arrays(shapes=[(3,), (2,)], seed=25))
    opt = Adam(fast, lr=0.1)
    step_fast(opt, fast, 1)
    step_fast(opt, fast, 2)
    twin = copy.deepcopy(opt)
    params = twin.param_groups[0]["params"]
    for step in (3, 4):
        step_fast(opt, fast, step)
        step_fast(twin, params, step)
    assert_same(opt, fast, twin, params)
    assert not np.shares_memory(params[0].data, fast[0].data)


def test_a_deepcopy_of_the_state_is_plain_dicts(planned):
    fast, _, _ = twins(arrays(shapes=[(3,), (2,)]))
    opt = Adam(fast, lr=0.1)
    step_fast(opt, fast, 1)
    step_fast(opt, fast, 2)
    copied = copy.deepcopy(opt.state)
    assert type(copied) is dict
    assert all(type(entry) is dict for entry in copied.values())
    entry = copy.deepcopy(opt.state[fast[0]])
    assert type(entry) is dict and entry["step"] == 2
    assert_bits_equal(entry["exp_avg"], opt.state[fast[0]]["exp_avg"])
    assert not np.shares_memory(entry["exp_avg"], opt.state[fast[0]]["exp_avg"])
    assert type(copy.copy(opt.state[fast[0]])) is dict
    # the copy is detached: editing it changes nothing, and the plan stays in use
    next(iter(copied.values()))["exp_avg"][...] = 99.0
    planned.clear()
    step_fast(opt, fast, 3)
    assert len(planned) == 1
    assert not np.any(opt.state[fast[0]]["exp_avg"] == 99.0)


def test_a_state_mapping_swapped_in_by_the_user_is_tracked_too():
    """torch code resets an optimizer with ``opt.state = defaultdict(dict)`` (or puts in
    a mapping of its own). Arrays replaced in it later must still be honoured."""
    fast, _, slow = twins(arrays(shapes=[(3,), (2,)], seed=23))
    opt, ref = SGD(fast, lr=0.1, momentum=0.5), _slow_only(SGD(slow, lr=0.1, momentum=0.5))
    for step in range(1, 9):
        if step == 3:
            opt.state = defaultdict(dict)
            ref.state = defaultdict(dict)
        if step == 6:
            opt.state[fast[0]]["momentum_buffer"] = np.full(3, 4.0)
            ref.state[slow[0]]["momentum_buffer"] = np.full(3, 4.0)
        step_fast(opt, fast, step)
        step_slow(ref, slow, step)
    assert_same(opt, fast, ref, slow)


# --- new arrays that take a freed array's id (CPython reuses the memory) ------------------


def test_a_new_grad_that_reuses_a_freed_grads_id():
    """zero_grad() drops the grads; the next 'backward' sets new ones, views of fresh
    arrays (reshape, as autograd code often returns). CPython hands the new view the
    freed view's address, so the new grad has the old one's id."""
    p = Param(np.zeros(3))
    opt = SGD([p], lr=1.0)
    for step in range(1, 6):
        opt.zero_grad()
        p.grad = np.full(3, float(step)).reshape(3)
        opt.step()
        assert_bits_equal(p.data, np.full(3, -step * (step + 1) / 2), f"step {step}")


def test_a_flattened_grad_rebound_to_a_view_that_reuses_its_id():
    params = [Param(np.ones(3)), Param(np.ones(3))]
    optdsl.flatten(params)
    opt = SGD(params, lr=1.0)
    opt.step()
    opt.step()  # zero grads: the plan is in use
    mine = np.full((2, 3), 1.0)  # the user's own gradient buffer
    for i, p in enumerate(params):
        p.grad = None
        p.grad = mine[i]
    opt.step()
    for p in params:
        assert_bits_equal(p.data, np.zeros(3))


def test_flattened_data_rebound_to_a_view_that_reuses_its_id():
    (p,) = params = [Param(np.zeros(3))]
    optdsl.flatten(params)
    opt = SGD(params, lr=1.0)
    p.grad[...] = 1.0
    opt.step()
    opt.step()
    loaded = np.full((1, 3), 100.0)  # new weights, e.g. from a checkpoint
    p.data = None
    p.data = loaded[0]
    opt.step()
    assert_bits_equal(p.data, np.full(3, 99.0))


# --- threads ------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    yield
    optdsl.set_num_threads(None)


def test_flattened_adam_is_bit_identical_for_one_and_two_threads(restore_threads, launches):
    rng = np.random.default_rng(24)
    sizes = list(rng.integers(1, 50_000, size=39))
    sizes.append(2_000_000 - sum(sizes))  # 2M elements in all, params of odd sizes
    assert len(pool.ranges(2_000_000, CHUNK, 2)) == 2  # two threads do split it
    arrs = [rng.standard_normal(int(n)).astype(np.float32) for n in sizes]
    results = []
    for threads in (1, 2):
        optdsl.set_num_threads(threads)
        params = [Param(a.copy()) for a in arrs]
        optdsl.flatten(params)
        opt = Adam(params, lr=1e-2, amsgrad=True, backend="numpy")
        for step in range(1, 4):
            launches.clear()
            for i, p in enumerate(params):
                p.grad[...] = arrs[i] * np.float32(0.1 * step) - np.float32(0.05)
            opt.step()
        assert calls_of(launches, opt) == [(2_000_000, np.dtype(np.float32))]
        results.append((np.concatenate([p.data.ravel() for p in params]), opt.state_dict()))
    assert_bits_equal(results[0][0], results[1][0])
    assert_state_dicts_equal(results[0][1], results[1][1])


def test_a_param_replaced_in_the_groups_list_is_seen():
    """Replacing an element of a group's params list in place (same length, no Param
    attribute assigned since) sends the step back to the param-by-param path."""
    a, b, c = (optdsl.Param(np.full(3, v)) for v in (1.0, 2.0, 3.0))
    optdsl.flatten([a, b, c])
    opt = optdsl.optim.SGD([a, b], lr=1.0)
    for p in (a, b, c):
        p.grad[...] = 1.0
    opt.step()
    opt.step()  # planned
    opt.param_groups[0]["params"][1] = c
    opt.step()
    np.testing.assert_array_equal(c.data, np.full(3, 2.0))
    np.testing.assert_array_equal(b.data, np.full(3, 0.0))
