"""Schedules: the API every schedule shares (LRScheduler), its errors, and preview()."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

import optdsl
import optdsl.schedules as S
from optdsl import Param
from optdsl.optim import SGD, Adagrad, Adam

EXAMPLES = Path(__file__).parents[1] / "examples"


def sgd(*lrs, momentum=0.9):
    lrs = lrs or (0.1,)
    return SGD([{"params": [Param(np.zeros(2))], "lr": lr} for lr in lrs], lr=lrs[0],
               momentum=momentum)


def groups_of(opt):
    """The param groups without their params: what a schedule may change."""
    return copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                          for g in opt.param_groups])


# --- step, get_last_lr, last_epoch, base_lrs ---------------------------------------------

def test_step_last_epoch_base_lrs_and_get_last_lr():
    opt = sgd(0.4, 0.2)
    sched = S.StepLR(opt, step_size=2, gamma=0.5)
    assert sched.last_epoch == 0 and sched.base_lrs == [0.4, 0.2]
    assert sched.get_last_lr() == [0.4, 0.2]
    for epoch in range(1, 7):
        assert sched.step() is None
        assert sched.last_epoch == epoch
        assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
    assert sched.get_last_lr() == [0.05, 0.025]
    assert sched.base_lrs == [0.4, 0.2]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.4, 0.2]
    assert "StepLR" in repr(sched) and "last_epoch=6" in repr(sched)


def test_get_last_lr_returns_a_copy():
    opt = sgd(0.4)
    sched = S.ExponentialLR(opt, gamma=0.5)
    last = sched.get_last_lr()
    last[0] = 123.0
    last.append(1.0)
    assert sched.get_last_lr() == [0.4]
    assert sched.get_last_lr() is not sched.get_last_lr()
    sched.step()
    assert sched.get_last_lr() == [0.2] and opt.param_groups[0]["lr"] == 0.2


def test_step_with_a_metric():
    opt = sgd(1.0)
    sched = S.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    for metric in (3.0, np.float32(2.0), 2.5, 2.5, 1.0, 1.2, np.array(1.3)):
        sched.step(metric)
    assert sched.last_epoch == 7 and sched.get_last_lr() == [0.25]


def test_construction_applies_epoch_zero():
    opt = sgd(0.4, 0.2)
    before = groups_of(opt)
    S.LinearLR(opt, start_factor=0.25, total_iters=3)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]

    opt = sgd(0.4, 0.2, momentum=0.5)
    S.OneCycleLR(opt, max_lr=[1.0, 2.0], total_steps=10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0 / 25, 2.0 / 25])
    assert [g["momentum"] for g in opt.param_groups] == pytest.approx([0.95, 0.95])

    opt = Adam([Param(np.zeros(2))], lr=0.1, betas=(0.5, 0.9))
    S.OneCycleLR(opt, max_lr=1.0, total_steps=10, max_momentum=0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.04)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.9, 0.9))

    opt = sgd(0.4, 0.2)
    sched = S.ReduceLROnPlateau(opt)
    after = groups_of(opt)
    for g in after:
        g.pop("initial_lr")
    assert after == before
    assert sched.last_epoch == 0 and sched.get_last_lr() == [0.4, 0.2]


def test_a_refused_construction_leaves_the_param_groups_alone():
    """A schedule that refuses its arguments must not have written initial_lr into the
    groups: a later schedule would take that stale value as its base lr (torch validates
    before touching the groups)."""
    opt = sgd(0.4)
    before = groups_of(opt)
    with pytest.raises(optdsl.HyperTypeError):
        S.StepLR(opt, step_sz=3)
    with pytest.raises(optdsl.HyperError):
        S.WarmupCosineLR(opt, warmup_steps=10, total_steps=5)
    assert groups_of(opt) == before
    opt.param_groups[0]["lr"] = 0.1
    assert S.WarmupCosineLR(opt, warmup_steps=0, total_steps=5).base_lrs == [0.1]


# --- errors at construction -------------------------------------------------------------

@pytest.mark.parametrize("build,error,message", [
    (lambda o: S.StepLR(o), optdsl.HyperTypeError, "missing required keyword 'step_size'"),
    (lambda o: S.OneCycleLR(o, total_steps=10), optdsl.HyperTypeError,
     "missing required keyword 'max_lr'"),
    (lambda o: S.CosineAnnealingLR(o, T_max=5, eta_mn=0.0), optdsl.HyperTypeError,
     r"unknown keyword 'eta_mn'; did you mean 'eta_min'\?"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_step=10), optdsl.HyperTypeError,
     r"did you mean 'total_steps'\?"),
    (lambda o: S.ReduceLROnPlateau(o, patiense=3), optdsl.HyperTypeError,
     r"did you mean 'patience'\?"),
    (lambda o: S.ExponentialLR(o, gamma=-0.5), optdsl.HyperError,
     r"invalid gamma: -0.5; expected in \[0, inf\)"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), optdsl.HyperError,
     r"invalid factor: 1.0; expected in \[0, 1\)"),
    (lambda o: S.LinearLR(o, start_factor=0), optdsl.HyperError,
     r"invalid start_factor: 0.0; expected in \(0, 1\]"),
    (lambda o: S.ReduceLROnPlateau(o, mode="sideways"), optdsl.HyperError,
     "expected one of 'min', 'max'"),
    (lambda o: S.StepLR(o, step_size=2.5), optdsl.HyperTypeError,
     "step_size must be a whole number"),
    (lambda o: S.CosineAnnealingLR(o, T_max="5"), optdsl.HyperTypeError,
     "T_max must be a number"),
    (lambda o: S.StepLR(o, step_size=None), optdsl.HyperTypeError,
     "step_size must be a number, got None"),
    (lambda o: S.OneCycleLR(o, max_lr=[1.0, 2.0, 3.0], total_steps=10), optdsl.HyperError,
     r"expected 2 values for max_lr \(one per param group\), got 3"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), optdsl.HyperError,
     "expected 2 values for min_lr"),
    (lambda o: S.LambdaLR(o, [lambda e: 1.0]), optdsl.HyperError,
     r"expected 2 lr_lambdas \(one per param group\), got 1"),
    (lambda o: S.LambdaLR(o, 0.5), optdsl.HyperTypeError, "lr_lambda must be callable"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0), optdsl.HyperError,
     r"You must define either total_steps OR \(epochs AND steps_per_epoch\)"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=0.1), optdsl.HyperError,
     "pct_start \\* total_steps must not be 1"),
    (lambda o: S.WarmupCosineLR(o, warmup_steps=10, total_steps=5), optdsl.HyperError,
     "warmup_steps must not exceed total_steps"),
    (lambda o: S.StepLR(o, step_size=2, last_epoch=-2), optdsl.HyperTypeError,
     "last_epoch must be an integer >= -1"),
    (lambda o: S.StepLR(object(), step_size=2), TypeError, "not an optimizer"),
])
def test_construction_errors(build, error, message):
    opt = sgd(0.1, 0.2)
    with pytest.raises(error, match=message) as info:
        build(opt)
    if error is not TypeError:
        assert isinstance(info.value, optdsl.OptdslError)


def test_per_group_lists_give_one_value_per_group():
    opt = sgd(0.1, 0.2)
    sched = S.StepLR(opt, step_size=[1, 2], gamma=[0.5, 0.1])
    sched.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.025, 0.02], rel=1e-15)
    assert [h["step_size"] for h in sched.hypers] == [1, 2]
    # A tuple hyper takes the tuple for every group.
    opt = sgd(0.1, 0.2)
    sched = S.MultiStepLR(opt, milestones=[1, 2], gamma=0.5)
    sched.step()
    assert sched.get_last_lr() == [0.05, 0.1]


# --- errors when stepping -----------------------------------------------------------------

def test_plateau_needs_the_metric():
    opt = sgd(1.0)
    sched = S.ReduceLROnPlateau(opt, patience=0)
    before = sched.state_dict()
    with pytest.raises(optdsl.ScheduleError, match=r"needs the metric: call step\(metric\)"):
        sched.step()
    assert sched.state_dict() == before
    with pytest.raises(optdsl.ScheduleError, match="the metric must be a number, got 'x'"):
        sched.step("x")
    assert sched.state_dict() == before


def test_a_metric_given_to_a_schedule_that_reads_none():
    opt = sgd(1.0)
    for sched in (S.StepLR(opt, step_size=2), S.LambdaLR(opt, lambda e: 1.0),
                  S.ChainedScheduler([S.StepLR(opt, step_size=2)])):
        before = sched.state_dict()
        with pytest.raises(optdsl.ScheduleError, match="takes no metric"):
            sched.step(0.5)
        assert sched.state_dict() == before


def test_one_cycle_stepped_past_total_steps():
    opt = sgd(0.1)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=5)
    for _ in range(5):
        sched.step()
    with pytest.raises(optdsl.ScheduleError,
                       match=r"stepped more than total_steps times \(at epoch 6\)"):
        sched.step()


def test_torch_one_cycle_also_refuses_to_step_past_total_steps():
    torch = pytest.importorskip("torch", reason="torch's OneCycleLR past total_steps")
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=1.0, total_steps=5)
    for _ in range(5):
        topt.step()
        tsched.step()
    with pytest.raises(ValueError, match="Tried to step 6 times"):
        tsched.step()


def test_one_cycle_momentum_needs_momentum_or_betas():
    opt = Adagrad([Param(np.zeros(2))], lr=0.1)
    with pytest.raises(optdsl.HyperError,
                       match=r"param group 0 has no 'momentum' or 'betas', which this "
                             r"schedule sets \(turn this off"):
        S.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
    for _ in range(9):
        sched.step()
    assert "momentum" not in opt.param_groups[0] and "betas" not in opt.param_groups[0]
    assert sched.get_last_lr()[0] == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)


def test_stepping_after_add_param_group():
    opt = sgd(0.1)
    sched = S.StepLR(opt, step_size=1)
    opt.add_param_group({"params": [Param(np.zeros(1))], "lr": 0.3})
    before = groups_of(opt)
    with pytest.raises(optdsl.ScheduleError, match=r"build a new schedule after "
                                                   r"add_param_group\(\)"):
        sched.step()
    assert groups_of(opt) == before and sched.last_epoch == 0
    # A new schedule takes the new group in.
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert sched.get_last_lr() == [0.05, 0.15]


# --- preview ------------------------------------------------------------------------------

def _by_stepping(sched, opt, steps, metrics=None, key="lr"):
    rows = []
    for i in range(steps):
        if i:
            sched.step(None if metrics is None else metrics[i - 1])
        rows.append([g[key] if key != "betas[0]" else g["betas"][0] for g in opt.param_groups])
    return np.array(rows)


PREVIEWED = {
    "StepLR": (lambda o: S.StepLR(o, step_size=3, gamma=[0.5, 0.2]), None),
    "CosineAnnealingWarmRestarts": (
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2), None),
    "OneCycleLR": (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=30), None),
    "ReduceLROnPlateau": (lambda o: S.ReduceLROnPlateau(o, patience=1, factor=0.5),
                          [3, 2, 2, 2, 1, 1, 1, 0.5, 0.6, 0.7, 0.8] * 3),
    "LambdaLR": (lambda o: S.LambdaLR(o, lambda e: 1 / (1 + e)), None),
    "SequentialLR": (lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=4),
            S.ReduceLROnPlateau(o, patience=0, factor=0.5)], milestones=[5]),
        [9, 9, 9, 9, 9, 3, 2, 2.5, 1, 1.5, 1.6] * 3),
    "ChainedScheduler": (lambda o: S.ChainedScheduler(
        [S.ExponentialLR(o, gamma=0.9), S.StepLR(o, step_size=4, gamma=0.5)]), None),
}


@pytest.mark.parametrize("name", list(PREVIEWED))
def test_preview_equals_stepping_and_touches_nothing(name):
    build, metrics = PREVIEWED[name]
    opt = sgd(0.4, 0.2)
    sched = build(opt)
    for i in range(3):  # preview from the middle of a run
        sched.step(None if metrics is None else metrics[i])
    rest = None if metrics is None else metrics[3:]
    params = [p for g in opt.param_groups for p in g["params"]]
    groups, state, last = groups_of(opt), sched.state_dict(), sched.get_last_lr()
    keys = ["lr", "momentum"] if name == "OneCycleLR" else ["lr"]
    previews = {key: sched.preview(25, metrics=rest, key=key) for key in keys}
    assert groups_of(opt) == groups and sched.state_dict() == state
    assert sched.get_last_lr() == last
    assert [p for g in opt.param_groups for p in g["params"]] == params
    for key, preview in previews.items():
        assert preview.shape == (25, 2) and preview.dtype == np.float64
        twin_opt = sgd(0.4, 0.2)
        twin = build(twin_opt)
        for i in range(3):
            twin.step(None if metrics is None else metrics[i])
        np.testing.assert_array_equal(preview, _by_stepping(twin, twin_opt, 25, rest, key))
    assert sched.preview(0, metrics=rest).shape == (0, 2)
    assert sched.preview(1, metrics=rest).tolist() == [last]


def test_preview_of_a_metric_schedule_needs_metrics():
    opt = sgd(1.0)
    sched = S.ReduceLROnPlateau(opt)
    with pytest.raises(optdsl.ScheduleError, match="pass metrics= with at least 9 values"):
        sched.preview(10)
    with pytest.raises(optdsl.ScheduleError, match="pass metrics="):
        sched.preview(10, metrics=[1.0] * 8)
    assert sched.preview(10, metrics=[1.0] * 9).shape == (10, 1)
    seq = S.SequentialLR(opt, [S.LinearLR(opt), S.ReduceLROnPlateau(opt)], milestones=[5])
    with pytest.raises(optdsl.ScheduleError, match="pass metrics="):
        seq.preview(3)


def test_a_preview_that_takes_no_step_needs_no_metrics():
    """preview(1) is the current value and preview(0) is empty: no step, so no metric
    to read (today both ask for metrics=, "with at least 0 / -1 values")."""
    sched = S.ReduceLROnPlateau(sgd(1.0))
    assert sched.preview(1).tolist() == [[1.0]]
    assert sched.preview(0).shape == (0, 1)


def test_preview_of_betas():
    opt = Adam([{"params": [Param(np.zeros(2))]},
                {"params": [Param(np.zeros(2))], "betas": (0.5, 0.9)}], lr=0.01)
    sched = S.OneCycleLR(opt, max_lr=[0.3, 0.1], total_steps=20, base_momentum=0.8)
    betas = sched.preview(20, key="betas[0]")
    assert betas.shape == (20, 2)
    assert betas[0].tolist() == pytest.approx([0.95, 0.95])
    assert betas.min() == pytest.approx(0.8, abs=1e-3)
    np.testing.assert_array_equal(betas, _by_stepping(sched, opt, 20, key="betas[0]"))
    assert opt.param_groups[1]["betas"][1] == 0.9  # the second beta is left alone


def test_preview_key_errors():
    opt = sgd(0.1)
    sched = S.StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match="key must look like 'lr' or 'betas\\[0\\]'"):
        sched.preview(3, key="betas[")
    with pytest.raises(KeyError, match="no 'betas'"):
        sched.preview(3, key="betas[0]")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        sched.preview(-1)


def test_module_preview():
    out = S.preview("OneCycleLR", 50, max_lr=1.0, total_steps=50)
    assert set(out) == {"lr", "momentum"}
    assert out["lr"].shape == out["momentum"].shape == (50,)
    opt = sgd(0.1)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=50)
    expected = _by_stepping(sched, opt, 50)[:, 0]
    np.testing.assert_array_equal(out["lr"], expected)
    assert out["lr"][0] == pytest.approx(0.04) and out["lr"].max() == pytest.approx(1.0)
    assert out["momentum"][0] == pytest.approx(0.95)
    assert out["momentum"].min() == pytest.approx(0.85)
    # A schedule that leaves the momentum alone, a metric schedule, a class, a path.
    steps = S.preview("StepLR", 6, lr=1.0, step_size=2, gamma=0.5)
    assert steps["lr"].tolist() == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert steps["momentum"].tolist() == [0.9] * 6
    plateau = S.preview("ReduceLROnPlateau", 5, lr=1.0, metrics=[1, 2, 3, 4], patience=0)
    assert plateau["lr"] == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.001], rel=1e-15)
    with pytest.raises(optdsl.ScheduleError, match="metrics="):
        S.preview("ReduceLROnPlateau", 5)
    np.testing.assert_array_equal(S.preview(S.StepLR, 6, lr=1.0, step_size=2, gamma=0.5)["lr"],
                                  steps["lr"])
    np.testing.assert_array_equal(
        S.preview(str(EXAMPLES / "design_steplr.opt"), 6, lr=1.0, step_size=2,
                  gamma=0.5)["lr"], steps["lr"])


# --- last_epoch and optional keywords -----------------------------------------------------

def test_last_epoch_at_construction_needs_initial_lr_and_continues_the_count():
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(sgd(0.1), step_size=3, last_epoch=5)
    with pytest.raises(KeyError, match="initial_lr"):
        S.LambdaLR(sgd(0.1), lambda e: 1.0, last_epoch=5)
    opt = sgd(0.1)
    opt.param_groups[0]["initial_lr"] = 0.1
    sched = S.StepLR(opt, step_size=3, gamma=0.5, last_epoch=5)
    assert sched.last_epoch == 5 and sched.get_last_lr() == [0.1]  # nothing applied
    assert sched.base_lrs == [0.1]
    sched.step()  # epoch 6, a multiple of step_size
    assert sched.last_epoch == 6 and sched.get_last_lr() == [0.05]
    opt = sgd(0.4)
    opt.param_groups[0]["initial_lr"] = 0.8
    sched = S.LambdaLR(opt, lambda e: 0.5 ** e, last_epoch=2)
    sched.step()
    assert sched.last_epoch == 3 and sched.get_last_lr() == [0.1]


def test_torch_optional_keywords_accept_none():
    opt = sgd(0.1)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=None, epochs=2, steps_per_epoch=10)
    twin_opt = sgd(0.1)
    twin = S.OneCycleLR(twin_opt, max_lr=1.0, total_steps=20)
    np.testing.assert_array_equal(sched.preview(21), twin.preview(21))
    np.testing.assert_array_equal(sched.preview(21, key="momentum"),
                                  twin.preview(21, key="momentum"))
    for _ in range(20):
        sched.step()
    with pytest.raises(optdsl.ScheduleError, match="total_steps"):
        sched.step()
    cos = S.CosineAnnealingLR(sgd(0.1), T_max=4, eta_min=None)
    assert cos.hypers[0]["eta_min"] == 0.0


def test_stdlib_classes_are_loaded_once():
    assert S.load("StepLR") is S.StepLR
    assert issubclass(S.StepLR, S.Schedule) and issubclass(S.Schedule, S.LRScheduler)
    assert issubclass(S.SequentialLR, S.LRScheduler)
    assert "def schedule_step" in S.StepLR.source()


# --- a user schedule ----------------------------------------------------------------------

SAWTOOTH = '''schedule SawTooth
"""A saw-tooth lr, with the momentum moving the other way, for at most total epochs."""

hyper period: int = 4 in [1, inf)
hyper total: int = 20 in [1, inf)
hyper low = 0.8 in [0, 1)
hyper high = 0.95 in [0, 1)

require low < high, "low must be below high"
require epoch <= total, "ran past total"

group momentum

update:
    phase = epoch % period
    lr = base_lr * (1 - phase / period)
    momentum = low + (high - low) * phase / period
'''


def test_a_user_schedule_end_to_end():
    SawTooth = optdsl.compile(SAWTOOTH)
    assert issubclass(SawTooth, S.Schedule) and SawTooth.__name__ == "SawTooth"
    opt = sgd(1.0, 0.5, momentum=0.5)
    sched = SawTooth(opt, period=4, total=9)
    lrs, moms = [sched.get_last_lr()], [[g["momentum"] for g in opt.param_groups]]
    preview = sched.preview(10)
    for _ in range(9):
        sched.step()
        lrs.append(sched.get_last_lr())
        moms.append([g["momentum"] for g in opt.param_groups])
    phase = [e % 4 for e in range(10)]
    assert [r[0] for r in lrs] == [1 - p / 4 for p in phase]
    assert [r[1] for r in lrs] == [0.5 * (1 - p / 4) for p in phase]
    assert [r[0] for r in moms] == pytest.approx([0.8 + 0.15 * p / 4 for p in phase],
                                                 rel=1e-15)
    np.testing.assert_array_equal(preview, np.array(lrs))
    # The per-step require: stepping past total is an error, at that epoch.
    with pytest.raises(optdsl.ScheduleError, match=r"SawTooth: ran past total \(at epoch 10\)"):
        sched.step()
    # The hyper require, and the group value, at construction.
    with pytest.raises(optdsl.HyperError, match="SawTooth: low must be below high"):
        SawTooth(sgd(1.0), low=0.9, high=0.85)
    with pytest.raises(optdsl.HyperError, match="param group 0 has no 'momentum'"):
        SawTooth(Adagrad([Param(np.zeros(2))], lr=0.1))
    with pytest.raises(optdsl.HyperTypeError, match="did you mean 'period'"):
        SawTooth(sgd(1.0), perod=3)
    # It composes and resumes like the stdlib's.
    opt = sgd(1.0)
    seq = S.SequentialLR(opt, [S.ConstantLR(opt, factor=0.5, total_iters=10),
                               SawTooth(opt, period=3)], milestones=[2])
    for _ in range(5):
        seq.step()
    assert seq.get_last_lr() == [1.0]  # SawTooth's epoch 3: phase 0
    fresh_opt = sgd(1.0)
    fresh = S.SequentialLR(fresh_opt, [S.ConstantLR(fresh_opt, factor=0.5, total_iters=10),
                                       SawTooth(fresh_opt, period=3)], milestones=[2])
    fresh_opt.load_state_dict(opt.state_dict())
    fresh.load_state_dict(seq.state_dict())
    for _ in range(3):
        seq.step()
        fresh.step()
        assert fresh.get_last_lr() == seq.get_last_lr()
        assert fresh_opt.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]
