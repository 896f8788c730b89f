"""Schedules: DESIGN.md's StepLR example and the stdlib StepLR, against torch's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl import Param
from optdsl.optim import SGD, Adam

EXAMPLES = Path(__file__).parents[1] / "examples"


def schedule_classes():
    return [optdsl.compile(EXAMPLES / "design_steplr.opt"), optdsl.schedules.StepLR]


def closed_form(base_lr, gamma, step_size, epochs):
    return [base_lr * gamma ** (e // step_size) for e in range(epochs)]


@pytest.mark.parametrize("cls", schedule_classes(), ids=["design", "stdlib"])
@pytest.mark.parametrize("step_size,gamma", [(3, 0.1), (1, 0.5), (7, 0.9)])
def test_steplr_follows_the_closed_form_and_drives_the_optimizer(cls, step_size, gamma):
    groups = [{"params": [Param(np.ones(2))], "lr": 0.5},
              {"params": [Param(np.ones(2))], "lr": 0.2}]
    opt = SGD(groups, lr=0.1)
    sched = cls(opt, step_size=step_size, gamma=gamma)
    seen = [sched.get_last_lr()]
    for _ in range(20):
        opt.step()
        sched.step()
        seen.append(sched.get_last_lr())
    for i, base in enumerate((0.5, 0.2)):
        expected = closed_form(base, gamma, step_size, 21)
        assert [lrs[i] for lrs in seen] == pytest.approx(expected, rel=1e-15)
        assert opt.param_groups[i]["lr"] == seen[-1][i]
        assert opt.param_groups[i]["initial_lr"] == base
    assert sched.last_epoch == 20


def test_steplr_matches_torch_live():
    torch = pytest.importorskip("torch", reason="live comparison with torch's StepLR")
    w = torch.zeros(3, requires_grad=True)
    topt = torch.optim.SGD([w], lr=0.3)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=4, gamma=0.3)
    opt = SGD([Param(np.zeros(3))], lr=0.3)
    sched = optdsl.schedules.StepLR(opt, step_size=4, gamma=0.3)
    for _ in range(25):
        assert sched.get_last_lr()[0] == pytest.approx(tsched.get_last_lr()[0], rel=1e-12)
        topt.step()
        tsched.step()
        opt.step()
        sched.step()


def test_the_lr_a_schedule_writes_is_the_lr_the_next_step_uses():
    p = Param(np.zeros(1))
    opt = SGD([p], lr=1.0)
    sched = optdsl.schedules.StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(4):
        p.grad = np.ones(1)
        before = p.data.copy()
        opt.step()
        moves.append(float(before[0] - p.data[0]))
        sched.step()
    assert moves == [1.0, 0.5, 0.25, 0.125]


def test_schedule_state_dict_round_trip_resumes_exactly():
    def run(split):
        opt = Adam([Param(np.ones(3))], lr=0.1)
        sched = optdsl.schedules.StepLR(opt, step_size=2, gamma=0.7)
        for _ in range(split):
            sched.step()
        saved, saved_opt = sched.state_dict(), opt.state_dict()
        opt2 = Adam([Param(np.ones(3))], lr=0.1)
        sched2 = optdsl.schedules.StepLR(opt2, step_size=2, gamma=0.7)
        opt2.load_state_dict(saved_opt)  # the group lrs live in the optimizer, as in torch
        sched2.load_state_dict(saved)
        out = []
        for _ in range(6):
            sched2.step()
            out.append(sched2.get_last_lr()[0])
        return out

    uninterrupted = closed_form(0.1, 0.7, 2, 12)[4:10]
    assert run(3) == pytest.approx(uninterrupted, rel=1e-15)


def test_schedule_construction_errors():
    opt = SGD([Param(np.ones(1))], lr=0.1)
    with pytest.raises(optdsl.HyperTypeError, match="missing required keyword 'step_size'"):
        optdsl.schedules.StepLR(opt)
    with pytest.raises(optdsl.HyperError, match=r"invalid step_size: 0; expected in \[1, inf\)"):
        optdsl.schedules.StepLR(opt, step_size=0)
    with pytest.raises(optdsl.HyperTypeError, match="did you mean 'gamma'"):
        optdsl.schedules.StepLR(opt, step_size=2, gama=0.5)
    with pytest.raises(KeyError, match="initial_lr"):
        optdsl.schedules.StepLR(SGD([Param(np.ones(1))], lr=0.1), step_size=2, last_epoch=3)
    with pytest.raises(TypeError, match="not an optimizer"):
        optdsl.schedules.StepLR(object(), step_size=2)


def test_a_schedule_with_state_and_a_metric():
    Plateau = optdsl.compile('''schedule HalveOnPlateau
"""Halve the lr when the metric stops improving (a small ReduceLROnPlateau)."""

hyper factor = 0.5 in (0, 1)

state best = inf

update:
    if metric < best:
        best = metric
    else:
        lr = lr * factor
''')
    opt = SGD([Param(np.ones(1))], lr=1.0)
    sched = Plateau(opt)
    for metric in (5.0, 4.0, 4.5, 3.0, 3.5, 3.2):
        sched.step(metric)
    assert sched.get_last_lr() == [0.125]
    assert sched.state_dict()["state"] == [{"best": 3.0}]
    with pytest.raises(optdsl.OptdslError, match="needs the metric"):
        sched.step()
