"""Schedules: SequentialLR and ChainedScheduler.

With torch's semantics where torch supports the case (compared live with torch), and what
torch cannot do: ReduceLROnPlateau inside a SequentialLR or a ChainedScheduler, and
composites nested in composites, each on its own timeline (checked against values
derived by hand).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import optdsl
import optdsl.schedules as S
from optdsl import Param
from optdsl.optim import SGD, Adam

# --- building the same schedules in torch and in optdsl --------------------------------

# name -> keywords, the same in both libraries.
CONFIGS = {
    "StepLR": dict(step_size=3, gamma=0.5),
    "MultiStepLR": dict(milestones=[2, 5, 5], gamma=0.5),
    "ExponentialLR": dict(gamma=0.8),
    "CosineAnnealingLR": dict(T_max=6, eta_min=0.01),
    "CosineAnnealingWarmRestarts": dict(T_0=3, T_mult=2, eta_min=0.01),
    "LinearLR": dict(start_factor=0.2, total_iters=4),
    "ConstantLR": dict(factor=0.5, total_iters=4),
    "PolynomialLR": dict(total_iters=6, power=2.0),
    "OneCycleLR": dict(max_lr=1.0, total_steps=20),
}
CALLABLES = {"LambdaLR": lambda e: 1 / (e + 1), "MultiplicativeLR": lambda e: 0.9}


def make(module, opt, name, **overrides):
    if name in CALLABLES:
        return getattr(module, name)(opt, CALLABLES[name])
    return getattr(module, name)(opt, **{**CONFIGS[name], **overrides})


def torch_and_optdsl(build, steps, optimizer="SGD", key="momentum", lrs=(0.1, 0.05)):
    """Run ``build(module, opt)`` in torch and in optdsl side by side for ``steps`` steps;
    the lr and ``key`` of each group before each step, for both."""
    torch = pytest.importorskip("torch", reason="live comparison with torch's schedules")
    groups = [dict(lr=lr) for lr in lrs]
    if optimizer == "SGD":
        topt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], **g}
                                for g in groups], lr=lrs[0], momentum=0.9)
        opt = SGD([{"params": [Param(np.zeros(1))], **g} for g in groups], lr=lrs[0],
                  momentum=0.9)
    else:
        topt = torch.optim.Adam([{"params": [torch.zeros(1, requires_grad=True)], **g}
                                 for g in groups], lr=lrs[0])
        opt = Adam([{"params": [Param(np.zeros(1))], **g} for g in groups], lr=lrs[0])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module, o in ((torch.optim.lr_scheduler, topt), (S, opt)):
            sched = build(module, o)
            rows = []
            for _ in range(steps):
                rows.append([(g["lr"], _value(g, key)) for g in o.param_groups])
                o.step()
                sched.step()
            rows.append([(g["lr"], _value(g, key)) for g in o.param_groups])
            out.append(rows)
    return out


def _value(group, key):
    return group["betas"][0] if key == "betas[0]" else group[key]


def assert_same(torch_rows, ours):
    assert len(torch_rows) == len(ours)
    for i, (t, o) in enumerate(zip(torch_rows, ours, strict=True)):
        assert np.array(o) == pytest.approx(np.array(t), rel=1e-12, abs=1e-15), f"step {i}"


SEQUENTIAL_PAIRS = [
    ("LinearLR", "ExponentialLR"),
    ("ConstantLR", "CosineAnnealingLR"),
    ("LinearLR", "CosineAnnealingWarmRestarts"),
    ("StepLR", "MultiStepLR"),
    ("PolynomialLR", "LinearLR"),
    ("ExponentialLR", "ConstantLR"),
    ("LinearLR", "LambdaLR"),
    ("CosineAnnealingLR", "PolynomialLR"),
    ("LinearLR", "OneCycleLR"),
    ("OneCycleLR", "StepLR"),
]


@pytest.mark.parametrize("first,second", SEQUENTIAL_PAIRS,
                         ids=["-".join(p) for p in SEQUENTIAL_PAIRS])
def test_sequential_matches_torch(first, second):
    def build(m, opt):
        return m.SequentialLR(opt, [make(m, opt, first), make(m, opt, second)],
                              milestones=[5])

    assert_same(*torch_and_optdsl(build, 24))


@pytest.mark.parametrize("milestones", [[4, 12], [0, 6], [5, 5], [0, 0], [30, 40]],
                         ids=str)
def test_sequential_with_three_schedules_matches_torch(milestones):
    def build(m, opt):
        return m.SequentialLR(opt, [make(m, opt, "LinearLR"), make(m, opt, "ExponentialLR"),
                                    make(m, opt, "CosineAnnealingLR")], milestones=milestones)

    assert_same(*torch_and_optdsl(build, 25))


def test_multiplicative_lr_after_a_milestone_matches_torch():
    """torch's SequentialLR starts a schedule at a milestone with _update_lr(0), which for
    MultiplicativeLR (no closed form) multiplies the group's current lr by lr_lambda(0):
    it continues from the lr the previous schedule left (0.5 * base here) instead of
    starting over from the base lr."""
    def build(m, opt):
        return m.SequentialLR(opt, [m.ConstantLR(opt, factor=0.5, total_iters=10),
                                    m.MultiplicativeLR(opt, lambda e: 0.9)], milestones=[3])

    torch_rows, ours = torch_and_optdsl(build, 8)
    assert [row[0][0] for row in torch_rows] == pytest.approx(
        [0.05, 0.05, 0.05, 0.045, 0.0405, 0.03645, 0.032805, 0.0295245, 0.02657205],
        rel=1e-12)
    assert_same(torch_rows, ours)


@pytest.mark.parametrize("optimizer,key", [("SGD", "momentum"), ("Adam", "betas[0]")])
def test_one_cycle_inside_sequential_matches_torch_with_momentum(optimizer, key):
    def build(m, opt):
        return m.SequentialLR(opt, [make(m, opt, "LinearLR", start_factor=0.5),
                                    make(m, opt, "OneCycleLR", max_lr=[1.0, 0.5])],
                              milestones=[4])

    torch_rows, ours = torch_and_optdsl(build, 24, optimizer, key)
    assert_same(torch_rows, ours)
    assert len({row[1][1] for row in ours}) > 10, "the momentum should cycle"


CHAINS = [
    ("ConstantLR", "ExponentialLR"),
    ("LinearLR", "StepLR"),
    ("LinearLR", "MultiStepLR", "ExponentialLR"),
    ("ExponentialLR", "PolynomialLR"),
    ("MultiplicativeLR", "ConstantLR"),
    ("LinearLR", "CosineAnnealingLR"),
]


@pytest.mark.parametrize("names", CHAINS, ids=["-".join(c) for c in CHAINS])
def test_chained_matches_torch(names):
    def build(m, opt):
        return m.ChainedScheduler([make(m, opt, n) for n in names])

    assert_same(*torch_and_optdsl(build, 20))


def test_chained_with_one_cycle_matches_torch():
    def build(m, opt):
        return m.ChainedScheduler([make(m, opt, "OneCycleLR"), make(m, opt, "ExponentialLR")],
                                  optimizer=opt)

    assert_same(*torch_and_optdsl(build, 20))


# --- without torch: the values by hand ---------------------------------------------------

def sgd(lr=1.0, groups=1):
    return SGD([{"params": [Param(np.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)],
               lr=lr, momentum=0.9)


def lrs(sched, steps, metric=None):
    """get_last_lr()[0] now and after each of ``steps`` steps."""
    out = [sched.get_last_lr()[0]]
    for e in range(1, steps + 1):
        sched.step(None if metric is None else metric(e))
        out.append(sched.get_last_lr()[0])
    return out


def test_sequential_resets_the_lr_and_applies_only_the_first_schedule_at_construction():
    opt = sgd(2.0)
    warm = S.LinearLR(opt, start_factor=0.5, total_iters=2)
    const = S.ConstantLR(opt, factor=0.1, total_iters=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # both applied themselves
    seq = S.SequentialLR(opt, [warm, const], milestones=[2])
    assert opt.param_groups[0]["lr"] == 1.0 and seq.get_last_lr() == [1.0]
    assert seq.last_epoch == 0 and seq.base_lrs == [2.0]
    assert lrs(seq, 7) == pytest.approx([1.0, 1.5, 0.2, 0.2, 0.2, 2.0, 2.0, 2.0], rel=1e-14)


def test_warmup_then_plateau():
    """LinearLR for 4 steps, then ReduceLROnPlateau. step(metric) is given every step; the
    warm-up ignores it, and the plateau, starting over at the milestone from the base lr,
    counts metrics from the step after the milestone."""
    opt = sgd(1.0, groups=2)
    seq = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.25, total_iters=4),
                               S.ReduceLROnPlateau(opt, factor=0.5, patience=1)],
                         milestones=[4])
    assert seq.needs_metric
    # Steps 1..4 see metric 0.0, which would make every later metric a bad one were it
    # counted; from step 5 on: 5, 4 (better), 4, 4 (2 bad: halve), 4, 4 (halve), 3 (better).
    metrics = {5: 5.0, 6: 4.0, 7: 4.0, 8: 4.0, 9: 4.0, 10: 4.0, 11: 3.0, 12: 3.0}
    got = lrs(seq, 12, lambda e: metrics.get(e, 0.0))
    warmup = [0.25, 0.4375, 0.625, 0.8125]
    assert got[:4] == pytest.approx(warmup, rel=1e-15)
    assert got[4:] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert opt.param_groups[1]["lr"] == 0.5  # the second group (base 2.0) likewise
    # The plateau phase is a ReduceLROnPlateau built at the milestone, fed from step 5.
    alone = S.ReduceLROnPlateau(sgd(1.0), factor=0.5, patience=1)
    assert lrs(alone, 8, lambda e: metrics[e + 4]) == got[4:]


def test_warmup_then_plateau_needs_the_metric_only_once_the_plateau_reads_it():
    opt = sgd()
    seq = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.5, total_iters=2),
                               S.ReduceLROnPlateau(opt, factor=0.5, patience=0)],
                         milestones=[3])
    seq.step()
    seq.step()
    seq.step()  # the milestone: the plateau starts over and reads no metric yet
    assert seq.last_epoch == 3 and seq.get_last_lr() == [1.0]
    before = seq.state_dict()
    with pytest.raises(optdsl.ScheduleError, match=r"step\(metric\)"):
        seq.step()
    assert seq.state_dict() == before  # nothing moved
    seq.step(1.0)
    seq.step(2.0)
    assert seq.get_last_lr() == [0.5]
    with pytest.raises(optdsl.ScheduleError, match="metric must be a number"):
        seq.step("low")


def test_plateau_inside_chained():
    """ExponentialLR and ReduceLROnPlateau chained: every step multiplies by gamma, then
    the plateau halves on a bad metric. step() without the metric is refused."""
    opt = sgd(1.0)
    chain = S.ChainedScheduler([S.ExponentialLR(opt, gamma=0.9),
                                S.ReduceLROnPlateau(opt, factor=0.5, patience=0)])
    assert chain.needs_metric and chain.get_last_lr() == [1.0]
    with pytest.raises(optdsl.ScheduleError, match=r"step\(metric\)"):
        chain.step()
    metrics = [3.0, 2.0, 2.5, 1.0, 1.0, 0.5, 0.6, 0.7]
    expected, lr, best = [1.0], 1.0, math.inf
    for m in metrics:
        lr *= 0.9
        if m < best * (1 - 1e-4):
            best = m
        else:
            lr *= 0.5
        expected.append(lr)
    assert lrs(chain, len(metrics), lambda e: metrics[e - 1]) == expected
    with pytest.raises(optdsl.ScheduleError, match=r"step\(metric\)"):
        chain.step()


def test_nested_sequential_keeps_its_own_timeline():
    """ConstantLR(0.5) for 3 steps, then a SequentialLR of LinearLR(0.5 -> 1 over 2 steps)
    and StepLR(2, 0.1) with its milestone at 4: its epoch counts from 0 at the outer
    milestone 3, so the StepLR starts at outer step 3 + 4 = 7, not at 4."""
    opt = sgd(1.0)
    inner = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.5, total_iters=2),
                                 S.StepLR(opt, step_size=2, gamma=0.1)], milestones=[4])
    outer = S.SequentialLR(opt, [S.ConstantLR(opt, factor=0.5, total_iters=10), inner],
                           milestones=[3])
    got = lrs(outer, 14)
    expected = [0.5, 0.5, 0.5,           # ConstantLR
                0.5, 0.75, 1.0, 1.0,     # inner epochs 0..3: LinearLR
                1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3]  # inner 4..: StepLR from 0
    assert got == pytest.approx(expected, rel=1e-14)
    assert outer.last_epoch == 14 and inner.last_epoch == 11


def test_nested_composites_with_a_plateau_deep_inside():
    opt = sgd(1.0)
    inner = S.SequentialLR(opt, [S.ConstantLR(opt, factor=0.5, total_iters=10),
                                 S.ReduceLROnPlateau(opt, patience=0, factor=0.5)],
                           milestones=[3])
    outer = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.5, total_iters=2), inner],
                           milestones=[4])
    assert outer.needs_metric
    for _ in range(7):  # the plateau starts at outer step 4 + 3 = 7
        outer.step()
    assert outer.get_last_lr() == [1.0]
    with pytest.raises(optdsl.ScheduleError, match=r"step\(metric\)"):
        outer.step()
    for metric in (2.0, 3.0, 1.0, 1.5):
        outer.step(metric)
    assert outer.get_last_lr() == [0.25]


def test_chained_inside_sequential_starts_over_at_the_milestone():
    opt = sgd(1.0)
    chain = S.ChainedScheduler([S.ExponentialLR(opt, gamma=0.9),
                                S.StepLR(opt, step_size=3, gamma=0.5)])
    seq = S.SequentialLR(opt, [S.ConstantLR(opt, factor=0.1, total_iters=20), chain],
                         milestones=[4])
    got = lrs(seq, 16)
    assert got[:4] == pytest.approx([0.1] * 4, rel=1e-15)
    closed = [0.9 ** j * 0.5 ** (j // 3) for j in range(13)]
    assert got[4:] == pytest.approx(closed, rel=1e-14)


def test_one_cycle_inside_sequential_runs_on_its_own_timeline():
    """OneCycleLR after a 5-step warm-up gives exactly the values of a OneCycleLR built
    alone (lr and momentum), shifted by the milestone, and stepping it past its
    total_steps is an error at outer step 5 + total_steps + 1 (torch raises there too)."""
    def standalone():
        opt = sgd(0.1)
        sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=12)
        rows = [(opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])]
        for _ in range(12):
            sched.step()
            rows.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        return rows

    opt = sgd(0.1)
    seq = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.5, total_iters=5),
                               S.OneCycleLR(opt, max_lr=1.0, total_steps=12)], milestones=[5])
    rows = [(opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])]
    for _ in range(17):
        seq.step()
        rows.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
    # As torch's, OneCycleLR sets the group's initial_lr to max_lr / div_factor at
    # construction, and the SequentialLR built after it (and its warm-up) start from that.
    assert opt.param_groups[0]["initial_lr"] == 0.04 and seq.base_lrs == [0.04]
    assert [r[0] for r in rows[:5]] == pytest.approx([0.02, 0.024, 0.028, 0.032, 0.036],
                                                     rel=1e-14)
    assert rows[5:] == standalone()
    with pytest.raises(optdsl.ScheduleError, match="total_steps"):
        seq.step()


# --- errors ------------------------------------------------------------------------------

def _unchanged(opt):
    return [g["lr"] for g in opt.param_groups]


def test_composites_need_at_least_one_schedule():
    opt = sgd()
    with pytest.raises(optdsl.HyperError, match="at least one schedule"):
        S.SequentialLR(opt, [], milestones=[])
    with pytest.raises(optdsl.HyperError, match="at least one schedule"):
        S.ChainedScheduler([], optimizer=opt)
    with pytest.raises(optdsl.HyperError, match="at least one schedule"):
        S.ChainedScheduler([])


def test_sequential_milestones_are_checked():
    opt = sgd()
    a, b = S.StepLR(opt, step_size=2), S.ExponentialLR(opt, gamma=0.5)
    c = S.ConstantLR(opt)
    lr_before = _unchanged(opt)
    with pytest.raises(optdsl.HyperError, match="expected 1 milestones .* got 2"):
        S.SequentialLR(opt, [a, b], milestones=[2, 4])
    with pytest.raises(optdsl.HyperError, match="expected 2 milestones .* got 0"):
        S.SequentialLR(opt, [a, b, c], milestones=[])
    with pytest.raises(optdsl.HyperError, match=r"increasing order, got \[5, 3\]"):
        S.SequentialLR(opt, [a, b, c], milestones=[5, 3])
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(optdsl.HyperTypeError, match="milestones must be integers"):
            S.SequentialLR(opt, [a, b], milestones=[bad])
    with pytest.raises(optdsl.HyperError, match="last_epoch"):
        S.SequentialLR(opt, [a, b], milestones=[3], last_epoch=4)
    assert _unchanged(opt) == lr_before  # a refused composite touches nothing
    assert S.SequentialLR(opt, [a, b], milestones=[np.int64(3)]).milestones == [3]


@pytest.mark.parametrize("kind", ["SequentialLR", "ChainedScheduler"])
def test_children_must_be_distinct_optdsl_schedules_of_the_same_optimizer(kind):
    def build(children, opt):
        if kind == "SequentialLR":
            return S.SequentialLR(opt, children, milestones=list(range(1, len(children))))
        return S.ChainedScheduler(children, optimizer=opt)

    opt, other = sgd(), sgd()
    mine, theirs = S.StepLR(opt, step_size=2), S.StepLR(other, step_size=2)
    with pytest.raises(optdsl.HyperError, match=r"schedulers\[1\] \(StepLR\) belongs to "
                                                "another optimizer"):
        build([mine, theirs], opt)
    with pytest.raises(optdsl.HyperError, match="another optimizer"):
        build([mine], other)
    with pytest.raises(optdsl.HyperError, match="the same schedule appears twice"):
        build([mine, mine], opt)
    for stranger in (object(), "StepLR", lambda e: 1.0):
        with pytest.raises(optdsl.HyperTypeError,
                           match=r"schedulers\[1\] is a \w+, not an optdsl schedule"):
            build([mine, stranger], opt)


def test_chained_default_optimizer_is_the_first_childs():
    opt, other = sgd(), sgd()
    mine, theirs = S.StepLR(opt, step_size=2), S.StepLR(other, step_size=2)
    assert S.ChainedScheduler([mine]).optimizer is opt
    with pytest.raises(optdsl.HyperError, match=r"schedulers\[1\].*another optimizer"):
        S.ChainedScheduler([mine, theirs])


@pytest.mark.parametrize("stranger", [object(), 42, None], ids=["object", "int", "None"])
def test_chained_refuses_a_non_schedule_first_child(stranger):
    """Without optimizer=, ChainedScheduler takes the optimizer from schedulers[0]; a
    first child that is no optdsl schedule must still get the HyperTypeError the other
    positions get, not an AttributeError."""
    opt = sgd()
    with pytest.raises(optdsl.HyperTypeError, match="not an optdsl schedule"):
        S.ChainedScheduler([stranger, S.StepLR(opt, step_size=2)])


def test_a_torch_scheduler_is_not_a_child():
    torch = pytest.importorskip("torch", reason="a torch scheduler as a child")
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2)
    opt = sgd()
    with pytest.raises(optdsl.HyperTypeError, match="StepLR, not an optdsl schedule"):
        S.SequentialLR(opt, [S.LinearLR(opt), tsched], milestones=[3])
    with pytest.raises(optdsl.HyperTypeError, match="StepLR, not an optdsl schedule"):
        S.ChainedScheduler([S.LinearLR(opt), tsched])
