"""Schedules: state_dict() / load_state_dict() resume a run exactly, from any step.

For a 100-step run, the run is interrupted after every step k in 0..100: a fresh
optimizer and schedule (same constructor arguments) load the optimizer's and the
schedule's state_dicts saved at step k and run on to step 100. Every lr (and momentum or
betas where a schedule sets them), get_last_lr() and last_epoch must equal the
uninterrupted run's exactly (==), and so must the final state_dict. The same holds when
the schedule's state_dict went through JSON. (Second configurations of a schedule, and the
JSON copies, are resumed at fewer k to keep the time down.)
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

import optdsl
import optdsl.schedules as S
from optdsl import Param
from optdsl.optim import SGD, Adam

STEPS = 100


# --- the runs ----------------------------------------------------------------------------

def sgd1():
    return SGD([Param(np.zeros(2))], lr=0.3, momentum=0.9)


def sgd():
    return SGD([{"params": [Param(np.zeros(2))], "lr": 0.5},
                {"params": [Param(np.zeros(3))]}], lr=0.2, momentum=0.9)


def adam1():
    return Adam([Param(np.zeros(2))], lr=0.01, betas=(0.8, 0.99))


def bumpy_metric(e: int) -> float:
    """A validation loss that improves, stalls, and improves again (deterministic)."""
    return 1.0 / (1 + e // 7) + 0.05 * math.sin(1.3 * e) + (0.3 if e % 23 == 0 else 0.0)


def rising_metric(e: int) -> float:
    return 1.0 - 1.0 / (1 + e // 9) + 0.02 * math.cos(0.7 * e)


def warmup_then_plateau(opt):
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=10),
                                S.ReduceLROnPlateau(opt, factor=0.5, patience=2)],
                          milestones=[10])


def nested(opt):
    """A SequentialLR inside a SequentialLR, whose last part chains an exponential decay
    with a plateau schedule."""
    inner = S.SequentialLR(opt, [
        S.LinearLR(opt, start_factor=0.2, total_iters=5),
        S.ChainedScheduler([S.ExponentialLR(opt, gamma=0.98),
                            S.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=2)]),
    ], milestones=[8])
    return S.SequentialLR(opt, [S.ConstantLR(opt, factor=0.5, total_iters=100), inner],
                          milestones=[20])


# name: (optimizer factory, schedule factory, metric or None)
CASES = {
    "StepLR": (sgd1, lambda o: S.StepLR(o, step_size=7, gamma=0.5), None),
    "MultiStepLR": (sgd1, lambda o: S.MultiStepLR(o, milestones=[10, 30, 30, 70], gamma=0.5),
                    None),
    "ExponentialLR": (sgd1, lambda o: S.ExponentialLR(o, gamma=0.97), None),
    "CosineAnnealingLR": (sgd1, lambda o: S.CosineAnnealingLR(o, T_max=30, eta_min=1e-3),
                          None),
    "CosineAnnealingWarmRestarts": (
        sgd1, lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-3), None),
    "ReduceLROnPlateau": (
        sgd1, lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=2, cooldown=1,
                                           threshold=0.01), bumpy_metric),
    "ReduceLROnPlateau-max-abs": (
        sgd, lambda o: S.ReduceLROnPlateau(o, mode="max", threshold_mode="abs",
                                           threshold=0.01, factor=0.7, patience=3,
                                           min_lr=[0.05, 0.0]), rising_metric),
    "OneCycleLR-Adam": (adam1, lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=STEPS), None),
    "OneCycleLR-SGD-three-phase": (
        sgd1, lambda o: S.OneCycleLR(o, max_lr=1.0, epochs=10, steps_per_epoch=11,
                                    three_phase=True, anneal_strategy="linear"), None),
    "LinearLR": (sgd1, lambda o: S.LinearLR(o, start_factor=0.1, total_iters=20), None),
    "ConstantLR": (sgd1, lambda o: S.ConstantLR(o, factor=0.5, total_iters=30), None),
    "PolynomialLR": (sgd1, lambda o: S.PolynomialLR(o, total_iters=60, power=2.0), None),
    "WarmupCosineLR": (sgd1, lambda o: S.WarmupCosineLR(o, warmup_steps=10, total_steps=80,
                                                       min_lr=1e-4), None),
    "LambdaLR": (sgd, lambda o: S.LambdaLR(o, [lambda e: 0.99 ** e, lambda e: 1 / (1 + e)]),
                 None),
    "MultiplicativeLR": (sgd1, lambda o: S.MultiplicativeLR(o, lambda e: 0.95 if e % 3 else 1.0),
                         None),
    "SequentialLR": (sgd1, lambda o: S.SequentialLR(o, [
        S.LinearLR(o, start_factor=0.1, total_iters=10),
        S.CosineAnnealingLR(o, T_max=40),
        S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2),
    ], milestones=[10, 50]), None),
    "ChainedScheduler": (sgd1, lambda o: S.ChainedScheduler([
        S.LinearLR(o, start_factor=0.1, total_iters=10),
        S.StepLR(o, step_size=15, gamma=0.5),
        S.ExponentialLR(o, gamma=0.99),
    ]), None),
    "warmup-then-plateau": (sgd, warmup_then_plateau, bumpy_metric),
    "nested": (sgd1, nested, bumpy_metric),
}

# Resumed from a JSON copy of the state_dict as well: ReduceLROnPlateau (whose best starts
# at inf) at every k, the others at some k (milestones included), to keep the time down.
JSON_EVERY_K = ["ReduceLROnPlateau"]
SOME_K = {0, 1, 2, 9, 10, 11, 19, 20, 21, 49, 50, 51, 99, STEPS}
# Second configurations of a schedule already resumed at every k: resumed at some k only.
VARIANTS = ["ReduceLROnPlateau-max-abs", "OneCycleLR-SGD-three-phase"]


def snapshot(opt, sched):
    groups = tuple((g["lr"], g.get("momentum"), g.get("betas")) for g in opt.param_groups)
    return sched.last_epoch, tuple(sched.get_last_lr()), groups


def drive(opt, sched, metric, start, stop):
    """Steps start+1 .. stop; the snapshot after each."""
    out = []
    for e in range(start, stop):
        sched.step(metric(e + 1) if metric is not None else None)
        out.append(snapshot(opt, sched))
    return out


def uninterrupted(case):
    make_opt, make_sched, metric = CASES[case]
    opt = make_opt()
    sched = make_sched(opt)
    snaps = [snapshot(opt, sched)]
    saved = [(copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict()))]
    for e in range(STEPS):
        snaps += drive(opt, sched, metric, e, e + 1)
        saved.append((copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())))
    return snaps, saved, sched.state_dict()


def resume(case, k, opt_sd, sched_sd):
    make_opt, make_sched, metric = CASES[case]
    opt = make_opt()
    sched = make_sched(opt)
    opt.load_state_dict(copy.deepcopy(opt_sd))  # the group lrs live in the optimizer
    sched.load_state_dict(sched_sd)
    return [snapshot(opt, sched)] + drive(opt, sched, metric, k, STEPS), sched.state_dict()


# --- the tests -------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_resuming_at_every_step_continues_exactly(case):
    snaps, saved, final = uninterrupted(case)
    assert len({s[1] for s in snaps}) > 1, "the schedule should actually move the lr"
    ks = sorted(SOME_K | set(range(0, STEPS, 7))) if case in VARIANTS else range(STEPS + 1)
    for k in ks:
        opt_sd, sched_sd = saved[k]
        got, got_final = resume(case, k, opt_sd, copy.deepcopy(sched_sd))
        assert got == snaps[k:], f"{case}: resumed at step {k}"
        assert got_final == final, f"{case}: resumed at step {k}"
        if case in JSON_EVERY_K or k in SOME_K:
            got, got_final = resume(case, k, opt_sd, json.loads(json.dumps(sched_sd)))
            assert got == snaps[k:], f"{case}: resumed at step {k} from JSON"
            assert got_final == final, f"{case}: resumed at step {k} from JSON"


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_is_plain_json_data(case):
    _, saved, _ = uninterrupted(case)
    for k in (0, 1, 10, 11, 20, 21, 50, STEPS):
        sd = saved[k][1]
        assert json.loads(json.dumps(sd)) == sd
        assert _plain(sd), f"{case}: state_dict at step {k} holds non-plain data: {sd!r}"


def _plain(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return type(x) in (int, float, str, bool) or x is None


def test_plateau_infinite_best_survives_json():
    """ReduceLROnPlateau starts with best = inf (mode="min") or -inf (mode="max"). Python's
    json writes them as Infinity / -Infinity (an extension of JSON, refused with
    allow_nan=False) and reads them back."""
    for mode, best in (("min", math.inf), ("max", -math.inf)):
        opt = sgd()
        sched = S.ReduceLROnPlateau(opt, mode=mode, patience=0)
        sd = sched.state_dict()
        assert [s["best"] for s in sd["state"]] == [best, best]
        text = json.dumps(sd)
        assert "Infinity" in text
        back = json.loads(text)
        assert back == sd
        with pytest.raises(ValueError):
            json.dumps(sd, allow_nan=False)
        fresh = S.ReduceLROnPlateau(sgd(), mode=mode, patience=0)
        fresh.load_state_dict(back)
        assert fresh.state_dict() == sd
        # The first metric is an improvement on +-inf, the second is not: one reduction.
        first, second = (5.0, 6.0) if mode == "min" else (5.0, 4.0)
        fresh.step(first)
        fresh.step(second)
        assert fresh.get_last_lr() == [0.5 * 0.1, 0.2 * 0.1]


def test_resume_with_the_optimizer_stepping_too():
    """OneCycleLR on Adam with real optimizer steps: params, moments, lrs and betas all
    continue exactly after a resume from the JSON copy of the schedule's state."""

    def build():
        params = [Param(np.linspace(-1, 1, 4)), Param(np.linspace(0, 2, 3))]
        opt = Adam([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.05}], lr=0.01)
        return opt, params, S.OneCycleLR(opt, max_lr=[0.3, 0.1], total_steps=40)

    def train(opt, params, sched, start, stop):
        for t in range(start, stop):
            for p in params:
                p.grad = np.sin(p.data * (t + 1)) + 0.1
            opt.step()
            sched.step()
        return [p.data.copy() for p in params], snapshot(opt, sched)

    opt, params, sched = build()
    ref_params, ref_snap = train(opt, params, sched, 0, 40)
    for k in (0, 1, 11, 12, 25, 39, 40):
        opt, params, sched = build()
        train(opt, params, sched, 0, k)
        opt_sd, sched_sd = copy.deepcopy(opt.state_dict()), json.dumps(sched.state_dict())
        opt2, params2, sched2 = build()
        opt2.load_state_dict(opt_sd)
        sched2.load_state_dict(json.loads(sched_sd))
        for p, q in zip(params2, params, strict=True):
            p.data[...] = q.data
        got_params, got_snap = train(opt2, params2, sched2, k, 40)
        assert got_snap == ref_snap, f"resumed at {k}"
        for got, ref in zip(got_params, ref_params, strict=True):
            np.testing.assert_array_equal(got, ref)


# --- load_state_dict validation --------------------------------------------------------

def _steps(sched, n, metric=None):
    for e in range(n):
        sched.step(None if metric is None else metric(e))
    return sched


def _class_mismatches():
    """(name, build the schedule to load into, build the schedule whose state is loaded)."""
    plateau = lambda o: S.ReduceLROnPlateau(o, patience=1)  # noqa: E731
    return [
        ("StepLR<-LinearLR", lambda o: S.StepLR(o, step_size=3),
         lambda o: S.LinearLR(o, total_iters=4)),
        ("ExponentialLR<-StepLR", lambda o: S.ExponentialLR(o, gamma=0.9),
         lambda o: S.StepLR(o, step_size=3)),
        ("StepLR<-ReduceLROnPlateau", lambda o: S.StepLR(o, step_size=3), plateau),
        ("ReduceLROnPlateau<-StepLR", plateau, lambda o: S.StepLR(o, step_size=3)),
        ("StepLR<-ExponentialLR", lambda o: S.StepLR(o, step_size=3),
         lambda o: S.ExponentialLR(o, gamma=0.5)),
        ("StepLR<-LambdaLR", lambda o: S.StepLR(o, step_size=3),
         lambda o: S.LambdaLR(o, lambda e: 0.5)),
        ("LambdaLR<-StepLR", lambda o: S.LambdaLR(o, lambda e: 0.5),
         lambda o: S.StepLR(o, step_size=3)),
        ("SequentialLR<-ChainedScheduler",
         lambda o: S.SequentialLR(o, [S.StepLR(o, step_size=3), S.ExponentialLR(o, gamma=0.5)],
                                  milestones=[4]),
         lambda o: S.ChainedScheduler([S.StepLR(o, step_size=3),
                                       S.ExponentialLR(o, gamma=0.5)])),
        ("ChainedScheduler<-SequentialLR",
         lambda o: S.ChainedScheduler([S.StepLR(o, step_size=3),
                                       S.ExponentialLR(o, gamma=0.5)]),
         lambda o: S.SequentialLR(o, [S.StepLR(o, step_size=3), S.ExponentialLR(o, gamma=0.5)],
                                  milestones=[4])),
        ("StepLR<-SequentialLR", lambda o: S.StepLR(o, step_size=3),
         lambda o: S.SequentialLR(o, [S.StepLR(o, step_size=3), S.ExponentialLR(o, gamma=0.5)],
                                  milestones=[4])),
    ]


def _assert_load_fails_and_changes_nothing(opt, sched, bad, match=None):
    before, groups_before = copy.deepcopy(sched.state_dict()), copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    last_lr, last_epoch = sched.get_last_lr(), sched.last_epoch
    with pytest.raises(optdsl.StateDictError, match=match):
        sched.load_state_dict(bad)
    assert sched.state_dict() == before
    assert sched.get_last_lr() == last_lr and sched.last_epoch == last_epoch
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] \
        == groups_before


@pytest.mark.parametrize("into,source", [c[1:] for c in _class_mismatches()],
                         ids=[c[0] for c in _class_mismatches()])
def test_a_state_dict_from_another_schedule_class_is_refused(into, source):
    opt = sgd()
    sched = into(opt)
    _steps(sched, 2, (lambda e: 1.0) if sched.needs_metric else None)
    other_opt = sgd()
    other = source(other_opt)
    _steps(other, 5, (lambda e: 2.0 - e) if other.needs_metric else None)
    _assert_load_fails_and_changes_nothing(opt, sched, copy.deepcopy(other.state_dict()))


def test_a_state_dict_for_another_number_of_param_groups_is_refused():
    def one_group():
        return SGD([Param(np.zeros(2))], lr=0.1)

    for make in (lambda o: S.StepLR(o, step_size=2),
                 lambda o: S.LambdaLR(o, lambda e: 0.5 ** e),
                 lambda o: S.ChainedScheduler([S.StepLR(o, step_size=2)]),
                 lambda o: S.SequentialLR(o, [S.LinearLR(o), S.StepLR(o, step_size=2)],
                                          milestones=[3])):
        source = _steps(make(one_group()), 3).state_dict()
        opt = sgd()
        sched = _steps(make(opt), 1)
        _assert_load_fails_and_changes_nothing(opt, sched, copy.deepcopy(source),
                                               match="number of param groups")


def test_a_state_dict_with_other_milestones_is_refused():
    def make(opt, milestones):
        return S.SequentialLR(opt, [S.LinearLR(opt, total_iters=3), S.StepLR(opt, step_size=2),
                                    S.ExponentialLR(opt, gamma=0.9)], milestones=milestones)

    source = _steps(make(sgd(), [3, 9]), 5).state_dict()
    opt = sgd()
    sched = _steps(make(opt, [3, 8]), 2)
    _assert_load_fails_and_changes_nothing(opt, sched, copy.deepcopy(source),
                                           match="milestones")
    # Nested: the inner SequentialLR's milestones are checked too.
    def outer(opt, inner_milestones):
        inner = make(opt, inner_milestones)
        return S.SequentialLR(opt, [S.ConstantLR(opt), inner], milestones=[4])

    source = _steps(outer(sgd(), [3, 9]), 12).state_dict()
    opt = sgd()
    sched = _steps(outer(opt, [3, 8]), 6)
    _assert_load_fails_and_changes_nothing(opt, sched, copy.deepcopy(source),
                                           match="milestones")


def test_a_state_dict_with_another_number_of_children_is_refused():
    opt = sgd()
    three = S.ChainedScheduler([S.StepLR(opt, step_size=2), S.ExponentialLR(opt, gamma=0.9),
                                S.ConstantLR(opt)])
    source = _steps(three, 3).state_dict()
    opt = sgd()
    two = _steps(S.ChainedScheduler([S.StepLR(opt, step_size=2),
                                     S.ExponentialLR(opt, gamma=0.9)]), 1)
    _assert_load_fails_and_changes_nothing(opt, two, source, match="number of schedules")


def test_a_bad_child_state_changes_no_child():
    """Everything is checked before anything changes: a bad second child leaves the first
    child (and the composite) as they were."""
    def make(opt):
        return S.SequentialLR(opt, [S.StepLR(opt, step_size=2),
                                    S.ReduceLROnPlateau(opt, patience=1)], milestones=[5])

    source = make(sgd())
    for e in range(8):
        source.step(1.0 + e)
    good = source.state_dict()
    opt = sgd()
    sched = make(opt)
    sched.step(1.0)
    for corrupt in (
        lambda sd: sd["schedulers"][1]["state"][0].pop("best"),
        lambda sd: sd["schedulers"][1]["hypers"][0].update(mode="sideways"),
        lambda sd: sd["schedulers"][1]["hypers"][0].update(bogus=1),
        lambda sd: sd["schedulers"][1].pop("last_epoch"),
        lambda sd: sd["schedulers"][1].update(base_lrs=[0.1]),
        lambda sd: sd.update(last_epoch="soon"),
    ):
        bad = copy.deepcopy(good)
        corrupt(bad)
        _assert_load_fails_and_changes_nothing(opt, sched, bad)
    sched.load_state_dict(copy.deepcopy(good))
    assert sched.state_dict() == good


def test_malformed_state_dicts_are_refused():
    opt = sgd()
    sched = _steps(S.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2), 4)
    good = sched.state_dict()
    for corrupt in (
        lambda sd: sd.pop("last_epoch"),
        lambda sd: sd.pop("base_lrs"),
        lambda sd: sd.update(_last_lr=None),
        lambda sd: sd["state"][1].pop("T_i"),
        lambda sd: sd["state"][1].update(extra=1.0),
        lambda sd: sd.update(state=sd["state"][:1]),
        lambda sd: sd.update(hypers=sd["hypers"][:1]),
        lambda sd: sd["hypers"][0].update(T_0=0),
    ):
        bad = copy.deepcopy(good)
        corrupt(bad)
        _assert_load_fails_and_changes_nothing(opt, sched, bad)
