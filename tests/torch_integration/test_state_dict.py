"""optdsl.torch's state_dict is torch.optim's: a checkpoint moves from optdsl.torch.X to
torch.optim.X and back mid-training, and both runs continue with the same numbers.
``opt.state`` shows the optdsl state as torch's tensors, sharing its memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch_cases import assert_close, mlp, torch, train_step

import optdsl
import optdsl.torch as ot
from optdsl import StateDictError

CASES = {
    "SGD": {"lr": 0.05, "momentum": 0.9},
    "Adam": {"lr": 0.01, "betas": (0.8, 0.99), "amsgrad": True},
    "AdamW": {"lr": 0.01, "weight_decay": 0.1},
    "RMSprop": {"lr": 0.01, "momentum": 0.5, "centered": True},
    "Adagrad": {"lr": 0.1, "lr_decay": 0.01},
    "Adadelta": {"lr": 0.5, "rho": 0.8},
    "Adamax": {"lr": 0.01, "weight_decay": 0.1},
    "RAdam": {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1},
    "Rprop": {"lr": 0.01, "etas": (0.4, 1.3)},
}


def same_layout(ours: dict, theirs: dict) -> None:
    """Two torch state_dicts with the same keys, values and tensor dtypes."""
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for pid, entry in theirs["state"].items():
        assert ours["state"][pid].keys() == entry.keys()
        for key, value in entry.items():
            assert isinstance(ours["state"][pid][key], torch.Tensor)
            assert ours["state"][pid][key].dtype == value.dtype, key
            assert_close(ours["state"][pid][key].double(), value.double())


@pytest.mark.parametrize("name", list(CASES))
def test_checkpoints_move_both_ways_between_optdsl_torch_and_torch_optim(name):
    kwargs = CASES[name]
    ours, theirs = mlp(), mlp()
    opt = getattr(ot, name)(ours.parameters(), **kwargs)
    ref = getattr(torch.optim, name)(theirs.parameters(), **kwargs)
    for step in range(3):
        train_step(ours, opt, step)
        train_step(theirs, ref, step)
    same_layout(opt.state_dict(), ref.state_dict())

    # optdsl.torch -> torch.optim, and torch.optim -> optdsl.torch, then all four go on
    ours2, theirs2 = mlp(seed=1), mlp(seed=1)
    ours2.load_state_dict(theirs.state_dict())
    theirs2.load_state_dict(ours.state_dict())
    opt2 = getattr(ot, name)(ours2.parameters())
    ref2 = getattr(torch.optim, name)(theirs2.parameters())
    opt2.load_state_dict(ref.state_dict())
    ref2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]
    for step in range(3, 6):
        for model, o in ((ours, opt), (theirs, ref), (ours2, opt2), (theirs2, ref2)):
            train_step(model, o, step)
    for model in (ours2, theirs, theirs2):
        assert_close(ours.parameters(), model.parameters())
    same_layout(opt2.state_dict(), ref2.state_dict())


def test_state_dict_keeps_scheduler_keys_and_is_a_copy():
    model = mlp()
    opt = ot.Adam(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    train_step(model, opt, 0)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["initial_lr"] == 0.1
    assert sd["state"][0]["step"].item() == 1.0
    before = sd["state"][0]["exp_avg"].clone()
    train_step(model, opt, 1)
    assert torch.equal(sd["state"][0]["exp_avg"], before)  # not the live state


def test_a_user_rule_round_trips_its_state_dict():
    Rule = ot.from_rule(LION)
    model = mlp()
    opt = Rule(model.parameters(), lr=0.01)
    for step in range(2):
        train_step(model, opt, step)
    sd = opt.state_dict()
    assert sd["state"][0].keys() == {"step", "exp_avg"}
    assert sd["state"][0]["step"].dtype == torch.float32
    model2 = mlp()
    model2.load_state_dict(model.state_dict())
    opt2 = Rule(model2.parameters())
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.01
    for step in range(2, 4):
        train_step(model, opt, step)
        train_step(model2, opt2, step)
    assert_close(model2.parameters(), model.parameters())


def test_a_bad_state_dict_changes_nothing():
    model = mlp()
    opt = ot.Adam(model.parameters(), lr=0.1)
    train_step(model, opt, 0)
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["state"][1]["exp_avg"] = torch.zeros(7)
    with pytest.raises(StateDictError, match=r"'exp_avg' has shape \(7,\)"):
        opt.load_state_dict(bad)
    with pytest.raises(StateDictError, match="param groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    other = mlp()
    wrong = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    train_step(other, wrong, 0)
    with pytest.raises(StateDictError, match="Adam has no state 'momentum_buffer'"):
        opt.load_state_dict(wrong.state_dict())
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(torch.equal(after["state"][i]["exp_avg"], before["state"][i]["exp_avg"])
               for i in before["state"])


def test_state_entries_are_tensors_sharing_the_optdsl_state():
    model = mlp()
    opt = ot.Adam(model.parameters(), lr=0.1)
    w = model[0].weight
    assert len(opt.state) == 0 and dict(opt.state[w]) == {}
    train_step(model, opt, 0)
    assert len(opt.state) == 4 and list(opt.state)[0] is w
    entry = opt.state[w]
    assert sorted(entry) == ["exp_avg", "exp_avg_sq", "step"]
    assert entry["step"].item() == 1.0
    inner = opt.inner.state[opt.inner.param_groups[0]["params"][0]]
    entry["exp_avg"].zero_()  # in place: the optdsl state sees it
    assert not inner["exp_avg"].any()
    entry["exp_avg_sq"] = torch.ones_like(w)  # a new tensor: its values are taken
    entry["step"] = 5
    assert inner["step"] == 5 and np.array_equal(inner["exp_avg_sq"], np.ones((12, 6)))
    train_step(model, opt, 1)
    assert opt.state[w]["step"].item() == 6.0
    with pytest.raises(KeyError):
        entry["exp_avgg"] = torch.ones_like(w)
    with pytest.raises(KeyError):
        opt.state[torch.zeros(1)]


def test_sgd_state_has_no_step_as_in_torch():
    model = mlp()
    opt = ot.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt, 0)
    assert sorted(opt.state[model[0].weight]) == ["momentum_buffer"]
    assert optdsl.torch.SGD is ot.from_rule(optdsl.optim.SGD)


# DESIGN.md's normative Lion, the demo's user rule.
LION = (Path(__file__).parents[2] / "examples" / "lion.opt").read_text()
