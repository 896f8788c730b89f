"""Bad input at run time raises a clear error and leaves everything as it was.

Each case sets up two param groups that have stepped twice (so the third step would go
through the groups' plans), puts the bad input in the *second* group, and checks the exact
message and that params and state are bit-identical afterwards: the first group must not
have stepped either. Putting the input right then lets the run go on as if nothing had
happened.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from rt_util import assert_bits_equal, assert_state_dicts_equal, grad, make_arrays

import optdsl
from optdsl import (
    GradientError,
    GradientTypeError,
    HyperError,
    OptdslError,
    Param,
    ParamGroupError,
    ParamGroupTypeError,
    optim,
)
from optdsl.schedules import LambdaLR

SHAPES = ((4, 3), (5,), (2,))


class Run:
    """Adam over params a | b, c in two groups, stepped twice, and a twin that is never
    given bad input, to compare with once the input is put right."""

    def __init__(self, steps: int = 2):
        arrays = make_arrays(np.float64, SHAPES, seed=11)
        self.a, self.b, self.c = (Param(x.copy(), name=n) for x, n in zip(arrays, "abc",
                                                                           strict=True))
        self.params = [self.a, self.b, self.c]
        self.opt = optim.Adam([{"params": [self.a]}, {"params": [self.b, self.c],
                                                      "lr": 0.02}], lr=0.01, amsgrad=True)
        self.twin_params = [Param(x.copy()) for x in arrays]
        t = self.twin_params
        self.twin = optim.Adam([{"params": t[:1]}, {"params": t[1:], "lr": 0.02}], lr=0.01,
                               amsgrad=True)
        self.step = 0
        for _ in range(steps):
            self.both()

    def grads(self, params) -> None:
        for i, p in enumerate(params):
            p.grad = grad(self.step + 1, p.data, i)

    def both(self) -> None:
        self.grads(self.params)
        self.opt.step()
        self.grads(self.twin_params)
        self.twin.step()
        self.step += 1

    def snapshot(self):
        """Each param's data and state (by param: a bad ``params`` list would renumber a
        state_dict), and each group's hypers (by repr: nan == nan)."""
        data = [p.data.copy() for p in self.params]
        state = {p.name: {k: np.copy(v) if k != "step" else v
                          for k, v in self.opt.state[p].items()} for p in self.params}
        hypers = [repr({k: v for k, v in g.items() if k != "params"})
                  for g in self.opt.param_groups]
        return data, state, hypers

    def assert_untouched(self, snapshot) -> None:
        data, state, hypers = self.snapshot()
        for p, before, after in zip(self.params, snapshot[0], data, strict=True):
            assert_bits_equal(after, before, f"param {p.name} changed although step() raised")
        assert_state_dicts_equal(state, snapshot[1])
        assert hypers == snapshot[2]

    def assert_as_twin(self) -> None:
        for p, q in zip(self.params, self.twin_params, strict=True):
            assert_bits_equal(p.data, q.data, p.name)
        sd, twin = self.opt.state_dict(), self.twin.state_dict()
        assert_state_dicts_equal(sd["state"], twin["state"])


def _raises(exc_type, message: str, call):
    """``call()`` raises ``exc_type`` with exactly ``message`` (twice: still bad, still
    raising, nothing half-done by the first try)."""
    for _ in range(2):
        with pytest.raises(exc_type, match="^" + re.escape(message) + "$"):
            call()


# --- gradients ------------------------------------------------------------------------------

BAD_GRADS = [
    ("shape", lambda: np.zeros(4), GradientError,
     "Adam: param 'b' (param 0 of group 1): gradient shape (4,) does not match parameter "
     "shape (5,)"),
    ("dtype", lambda: np.zeros(5, np.float32), GradientTypeError,
     "Adam: param 'b' (param 0 of group 1): gradient dtype float32 does not match parameter "
     "dtype float64"),
    ("list", lambda: [0.5] * 5, GradientTypeError,
     "Adam: param 'b' (param 0 of group 1): the gradient must be an array like the parameter "
     "(numpy.ndarray float64 of shape (5,)), got list"),
    ("float", lambda: 0.5, GradientTypeError,
     "Adam: param 'b' (param 0 of group 1): the gradient must be an array like the parameter "
     "(numpy.ndarray float64 of shape (5,)), got float"),
    ("numpy-scalar", lambda: np.float64(0.5), GradientTypeError,
     "Adam: param 'b' (param 0 of group 1): the gradient must be an array like the parameter "
     "(numpy.ndarray float64 of shape (5,)), got numpy.float64"),
]


@pytest.mark.parametrize("what, make, error, message", BAD_GRADS, ids=[b[0] for b in BAD_GRADS])
def test_bad_gradient_in_the_second_group(what, make, error, message):
    run = Run()
    before = run.snapshot()
    run.grads(run.params)
    run.b.grad = make()
    _raises(error, message, run.opt.step)
    run.assert_untouched(before)
    assert issubclass(error, OptdslError) and issubclass(error, ValueError)
    assert issubclass(error, TypeError) == (error is GradientTypeError)
    run.both()  # put right: the run goes on as if the bad step was never asked for
    run.both()
    run.assert_as_twin()


def test_a_torch_tensor_as_gradient_says_how_to_pass_it():
    torch = pytest.importorskip("torch", reason="makes a torch tensor")
    run = Run()
    before = run.snapshot()
    run.grads(run.params)
    run.c.grad = torch.zeros(2, dtype=torch.float64)
    _raises(GradientTypeError,
            "Adam: param 'c' (param 1 of group 1): the gradient must be an array like the "
            "parameter (numpy.ndarray float64 of shape (2,)), got torch.Tensor; for a torch "
            "tensor, assign t.numpy()", run.opt.step)
    run.assert_untouched(before)


def test_unnamed_params_are_told_apart_by_position():
    a, b = Param(np.ones(3)), Param(np.ones(3))
    opt = optim.SGD([a, b], lr=0.1)
    a.grad, b.grad = np.ones(3), np.ones(2)
    _raises(GradientError,
            "SGD: param 1 of group 0: gradient shape (2,) does not match parameter shape (3,)",
            opt.step)


def test_state_replaced_by_an_array_of_the_wrong_shape():
    """torch lets users put arrays into opt.state; one that does not fit the param is
    bad input too, and must not leave the first group stepped."""
    run = Run()
    before_data = [p.data.copy() for p in run.params]
    run.opt.state[run.c]["exp_avg"] = np.zeros(3)
    run.grads(run.params)
    _raises(OptdslError,
            "Adam: param 'c' (param 1 of group 1): state 'exp_avg' has shape (3,), the "
            "parameter has (2,)", run.opt.step)
    for p, d in zip(run.params, before_data, strict=True):
        assert_bits_equal(p.data, d, p.name)
    assert run.opt.state[run.a]["step"] == 2


# --- a param in two groups ------------------------------------------------------------------

def test_a_param_in_two_groups_at_construction_and_add_param_group():
    a, b = Param(np.ones(3), name="a"), Param(np.ones(2))
    _raises(ParamGroupError,
            "Adam: some parameters appear in more than one parameter group: param 'a' "
            "(param 0 of group 0)",
            lambda: optim.Adam([{"params": [a]}, {"params": [b, a]}]))
    opt = optim.Adam([a])
    _raises(ParamGroupError,
            "Adam: some parameters appear in more than one parameter group: param 'a' "
            "(param 0 of group 0)",
            lambda: opt.add_param_group({"params": [b, a]}))
    assert len(opt.param_groups) == 1
    _raises(ParamGroupError, "Adam: a param group holds the same parameter twice",
            lambda: optim.Adam([a, a]))
    assert issubclass(ParamGroupError, ValueError)  # what torch raises


@pytest.mark.parametrize("where", ["other-group", "same-group"])
def test_a_param_put_into_a_second_group_by_hand(where):
    run = Run()
    before = run.snapshot()
    run.grads(run.params)
    if where == "other-group":
        run.opt.param_groups[1]["params"].append(run.a)
        message = ("Adam: param 'a' (param 0 of group 0) is also param 2 of group 1: a "
                   "parameter may be listed only once, in one param group")
    else:
        run.opt.param_groups[1]["params"].append(run.b)
        message = ("Adam: param 'b' (param 0 of group 1) is also param 2 of group 1: a "
                   "parameter may be listed only once, in one param group")
    _raises(ParamGroupError, message, run.opt.step)
    run.opt.param_groups[1]["params"].pop()
    run.assert_untouched(before)
    run.both()
    run.assert_as_twin()


# --- nan hypers -----------------------------------------------------------------------------

def test_nan_hyper_at_construction():
    p = Param(np.ones(3))
    _raises(HyperError, "Adam: invalid lr: nan; expected a number, not nan",
            lambda: optim.Adam([p], lr=math.nan))
    _raises(HyperError, "Adam: invalid betas[1]: nan; expected a number, not nan",
            lambda: optim.Adam([p], betas=(0.9, math.nan)))
    q = Param(np.ones(2))
    _raises(HyperError, "Adam: invalid lr: nan; expected a number, not nan (in param group 1)",
            lambda: optim.Adam([{"params": [p]}, {"params": [q], "lr": math.nan}]))
    opt = optim.Adam([p])
    _raises(HyperError, "Adam: invalid eps: nan; expected a number, not nan (in param group 1)",
            lambda: opt.add_param_group({"params": [q], "eps": math.nan}))
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("key, value, message", [
    ("lr", math.nan, "Adam: invalid lr: nan; expected a number, not nan (in param group 1)"),
    ("lr", np.float64("nan"), "Adam: invalid lr: nan; expected a number, not nan (in param "
                              "group 1)"),
    ("betas", (math.nan, 0.999), "Adam: invalid betas[0]: nan; expected a number, not nan (in "
                                 "param group 1)"),
])
def test_nan_hyper_set_by_hand_between_steps(key, value, message):
    run = Run()
    before = run.snapshot()
    old = run.opt.param_groups[1][key]
    run.opt.param_groups[1][key] = value
    run.grads(run.params)
    _raises(HyperError, message, run.opt.step)
    run.opt.param_groups[1][key] = old  # put right
    run.assert_untouched(before)
    run.both()
    run.assert_as_twin()


def test_nan_lr_from_a_lambda_schedule_raises_at_the_step():
    """LambdaLR writes whatever its lambda gives (as torch's does); the optimizer's step
    then refuses it before anything moves."""
    run = Run()
    sched = LambdaLR(run.opt, [lambda e: 1.0, lambda e: math.nan if e == 1 else 1.0])
    before = run.snapshot()
    sched.step()
    assert math.isnan(run.opt.param_groups[1]["lr"])
    run.grads(run.params)
    _raises(HyperError, "Adam: invalid lr: nan; expected a number, not nan (in param group 1)",
            run.opt.step)
    run.opt.param_groups[1]["lr"] = 0.02
    run.assert_untouched(before)


def test_a_compiled_schedule_never_writes_nan():
    Blowup = optdsl.compile('schedule Blowup\n"""sqrt of a negative number after epoch 1."""\n'
                            "update:\n    lr = base_lr * sqrt(1 - epoch)\n")
    run = Run()
    sched = Blowup(run.opt)
    sched.step()  # epoch 1: lr = 0
    lrs = [g["lr"] for g in run.opt.param_groups]
    with pytest.raises(optdsl.ScheduleError, match="lr would become nan in param group 0"):
        sched.step()
    assert [g["lr"] for g in run.opt.param_groups] == lrs
    run.grads(run.params)
    run.opt.step()  # with lr = 0 the params stay; the step count goes on
    assert run.opt.state[run.a]["step"] == 3


# --- a set instead of a list ----------------------------------------------------------------

def test_a_set_of_params_is_refused_as_torch_does():
    a, b = Param(np.ones(3)), Param(np.ones(2))
    _raises(ParamGroupTypeError, "Adam: params must be an ordered collection such as a list, "
            "not a set: their order numbers them in the state_dict",
            lambda: optim.Adam({a, b}))
    _raises(ParamGroupTypeError, "Adam: a param group's params must be an ordered collection "
            "such as a list, not a set: their order numbers them in the state_dict",
            lambda: optim.Adam([{"params": {a, b}}]))
    opt = optim.Adam([a])
    _raises(ParamGroupTypeError, "Adam: a param group's params must be an ordered collection "
            "such as a list, not a set: their order numbers them in the state_dict",
            lambda: opt.add_param_group({"params": frozenset([b])}))
    assert issubclass(ParamGroupTypeError, TypeError)  # what torch raises


@pytest.mark.parametrize("container", ["set", "generator"])
def test_a_set_put_into_param_groups_by_hand(container):
    run = Run()
    before = run.snapshot()
    run.grads(run.params)
    members = [run.b, run.c]
    if container == "set":
        run.opt.param_groups[1]["params"] = set(members)
        message = ("Adam: param group 1's params must be a list, got set (a set has no order, "
                   "and the order numbers params in the state_dict)")
    else:
        run.opt.param_groups[1]["params"] = (p for p in members)
        message = "Adam: param group 1's params must be a list, got generator"
    _raises(ParamGroupTypeError, message, run.opt.step)
    run.opt.param_groups[1]["params"] = members
    run.assert_untouched(before)
    run.both()
    run.assert_as_twin()


def test_a_group_appended_to_param_groups_by_hand_is_checked_and_stepped():
    run = Run()
    d = Param(np.ones(3), name="d")
    before = run.snapshot()
    run.opt.param_groups.append({**run.opt.defaults, "params": [d], "lr": math.nan})
    d.grad = np.ones(3)
    run.grads(run.params)
    _raises(HyperError, "Adam: invalid lr: nan; expected a number, not nan (in param group 2)",
            run.opt.step)
    run.opt.param_groups.pop()
    run.assert_untouched(before)
    run.opt.param_groups.append({**run.opt.defaults, "params": [d], "lr": math.nan})
    run.opt.param_groups[2]["lr"] = 0.5
    run.opt.step()
    assert run.opt.state[d]["step"] == 1 and np.all(d.data < 1)
