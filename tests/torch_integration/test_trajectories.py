"""optdsl.torch's optimizers train a torch model along torch.optim's trajectory: Adam on
a small MLP under torch's own CosineAnnealingLR, to rtol 1e-6 in float32 and 1e-12 in
float64 (flattened or not), and every stdlib class against its torch.optim namesake,
with non-default hypers in two param groups."""

from __future__ import annotations

import pytest
from torch_cases import assert_close, loss_of, mlp, torch, train_step

import optdsl.torch as ot

STEPS = 12


@pytest.mark.parametrize("flatten", [False, True], ids=["tensors", "flat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_adam_follows_torch_adam_under_cosine_annealing(dtype, flatten):
    ours, theirs = mlp(dtype), mlp(dtype)
    groups = lambda m: [{"params": m[0].parameters()},  # noqa: E731
                        {"params": m[2].parameters(), "lr": 0.02, "weight_decay": 0.1}]
    opt = ot.Adam(groups(ours), lr=0.05, betas=(0.8, 0.99), flatten=flatten)
    ref = torch.optim.Adam(groups(theirs), lr=0.05, betas=(0.8, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=1e-3)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=8, eta_min=1e-3)
    losses = []
    for step in range(STEPS):
        losses.append(train_step(ours, opt, step))
        train_step(theirs, ref, step)
        sched.step()
        ref_sched.step()
        assert_close(ours.parameters(), theirs.parameters(), dtype)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref.param_groups]
    assert losses[-2] < 0.9 * losses[0]  # it trained (the same batch as step 0)
    # the schedule moved the lr, and the kernel used it: lr differs from the start
    assert opt.param_groups[0]["lr"] != 0.05
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], dtype)
        assert opt.state[p]["step"] == ref.state[q]["step"] == STEPS


# Per optimizer: constructor keywords (group 0, the first layer) and the second group's
# overrides, non-default, turning on every state.
CASES = {
    "SGD": ({"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
            {"lr": 0.02, "nesterov": True, "dampening": 0.0, "maximize": True}),
    "Adam": ({"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1, "amsgrad": True},
             {"lr": 0.003, "eps": 1e-6, "maximize": True, "decoupled_weight_decay": True}),
    "AdamW": ({"lr": 0.01, "weight_decay": 0.1},
              {"amsgrad": True, "lr": 0.005, "betas": (0.85, 0.995), "maximize": True}),
    "RMSprop": ({"lr": 0.01, "alpha": 0.9, "momentum": 0.5},
                {"centered": True, "lr": 0.005, "weight_decay": 0.1, "maximize": True}),
    "Adagrad": ({"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
                {"lr": 0.05, "weight_decay": 0.1, "maximize": True}),
    "Adadelta": ({"lr": 0.5, "rho": 0.8},
                 {"weight_decay": 0.1, "lr": 1.0, "eps": 1e-5, "maximize": True}),
    "Adamax": ({"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1},
               {"lr": 0.005, "eps": 1e-6, "maximize": True}),
    "RAdam": ({"lr": 0.01, "betas": (0.8, 0.9), "weight_decay": 0.1},
              {"lr": 0.005, "decoupled_weight_decay": True, "maximize": True}),
    "Rprop": ({"lr": 0.01, "etas": (0.4, 1.3)},
              {"lr": 0.005, "step_sizes": (1e-5, 1.0), "maximize": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_stdlib_class_matches_torch_optim_in_float64(name):
    kwargs, override = CASES[name]
    ours, theirs = mlp(), mlp()
    groups = lambda m: [{"params": m[0].parameters()},  # noqa: E731
                        {"params": m[2].parameters(), **override}]
    opt = getattr(ot, name)(groups(ours), **kwargs)
    ref = getattr(torch.optim, name)(groups(theirs), **kwargs)
    assert isinstance(opt, torch.optim.Optimizer) and type(opt).__name__ == name
    for step in range(5):
        train_step(ours, opt, step)
        train_step(theirs, ref, step)
        assert_close(ours.parameters(), theirs.parameters())
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert sorted(opt.state[p]) == sorted(ref.state[q])
        for key, value in ref.state[q].items():
            assert_close(opt.state[p][key].double(), value.double())


def test_closure_runs_with_gradients_enabled_and_its_loss_is_returned():
    ours, theirs = mlp(), mlp()
    opt, ref = ot.SGD(ours.parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    for model, o in ((ours, opt), (theirs, ref)):
        def closure(model=model, o=o):
            o.zero_grad()
            loss = loss_of(model, 0)
            loss.backward()
            return loss
        with torch.no_grad():  # as in torch, the closure still builds its graph
            loss = o.step(closure)
        assert loss.item() > 0
    assert_close(ours.parameters(), theirs.parameters())
