"""torch.optim's Adamax, RAdam and Rprop as optdsl's stdlib has them: the same constructor
keywords, defaults and validation as torch 2.13. (Their trajectories are checked against
torch's in tests/stdlib/test_torch_parity.py, on the golden problem, and in
tests/stdlib/test_conformance.py; their state_dicts in tests/test_torch_interop.py.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from optdsl import HyperError, Param, optim
from optdsl.torch import TORCH_ONLY_KEYS

torch = pytest.importorskip("torch", reason="compares with torch.optim's constructors")

NAMES = ("Adamax", "RAdam", "Rprop")

# Keyword sets torch.optim refuses (ValueError) and optdsl must refuse too (HyperError).
INVALID: dict[str, list[dict[str, Any]]] = {
    "Adamax": [{"lr": -1e-3}, {"eps": -1e-8}, {"betas": (1.0, 0.9)}, {"betas": (0.9, 1.0)},
               {"betas": (-0.1, 0.9)}, {"weight_decay": -0.1}],
    "RAdam": [{"lr": -1e-3}, {"eps": -1e-8}, {"betas": (1.0, 0.9)}, {"betas": (0.9, 1.0)},
              {"betas": (0.9, -0.1)}, {"weight_decay": -0.1}],
    "Rprop": [{"lr": -1e-3}, {"etas": (0.0, 1.2)}, {"etas": (1.0, 1.2)}, {"etas": (0.5, 1.0)},
              {"etas": (0.5, 0.9)}, {"etas": (1.2, 0.5)}],
}
# ...and edge values both accept.
VALID: dict[str, list[dict[str, Any]]] = {
    "Adamax": [{"lr": 0.0, "eps": 0.0, "betas": (0.0, 0.0), "weight_decay": 0.0}],
    "RAdam": [{"lr": 0.0, "eps": 0.0, "betas": (0.0, 0.0), "decoupled_weight_decay": True}],
    "Rprop": [{"lr": 0.0, "etas": (1e-9, 1.000001), "step_sizes": (0.0, 0.0)},
              {"step_sizes": (-1.0, 1e9), "maximize": True}],
}


def _param() -> Param:
    return Param(np.zeros(3))


@pytest.mark.parametrize("name", NAMES)
def test_keywords_and_defaults_are_torchs(name):
    theirs = dict(getattr(torch.optim, name)([torch.zeros(3)]).defaults)
    theirs = {k: v for k, v in theirs.items() if k not in TORCH_ONLY_KEYS}
    ours = {k: v for k, v in optim.load(name)([_param()]).param_groups[0].items()
            if k != "params"}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == value, key  # (0.9, 0.999) == (0.9, 0.999); 50 == 50.0


@pytest.mark.parametrize(("name", "kwargs"),
                         [(n, k) for n in NAMES for k in INVALID[n]])
def test_refuses_what_torch_refuses(name, kwargs):
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.zeros(3)], **kwargs)
    with pytest.raises(HyperError, match=name):
        optim.load(name)([_param()], **kwargs)


@pytest.mark.parametrize(("name", "kwargs"), [(n, k) for n in NAMES for k in VALID[n]])
def test_accepts_what_torch_accepts(name, kwargs):
    getattr(torch.optim, name)([torch.zeros(3)], **kwargs)
    opt = optim.load(name)([_param()], **kwargs)
    for key, value in kwargs.items():
        assert opt.param_groups[0][key] == value


def test_rprop_step_sizes_start_at_the_lr_of_the_first_step_only():
    """torch fills step_size with the group's lr at a parameter's first step; a later lr
    does nothing (Rprop reads lr nowhere else)."""
    values = np.array([0.3, -0.2, 0.1])
    ours, theirs = Param(values.copy()), torch.tensor(values.copy())
    opt = optim.Rprop([ours], lr=0.01)
    ref = torch.optim.Rprop([theirs], lr=0.01, foreach=False)
    for step, lr in enumerate((0.05, 0.05, 0.5, 0.0, 0.5), start=1):
        for group in (*opt.param_groups, *ref.param_groups):
            group["lr"] = lr
        g = np.array([1.0, -1.0, 0.5]) * (-1.0) ** (step // 2)
        ours.grad, theirs.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step()
        ref.step()
        np.testing.assert_array_equal(ours.data, theirs.numpy())
        np.testing.assert_array_equal(opt.state[ours]["step_size"],
                                      ref.state[theirs]["step_size"].numpy())
    assert opt.state[ours]["step_size"][0] != 0.05  # moved from the first step's lr
