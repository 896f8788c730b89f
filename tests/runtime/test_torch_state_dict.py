"""Loading a torch.optim state_dict (tensors, torch's keys) into optdsl and continuing must
match torch continuing."""

from __future__ import annotations

import numpy as np
import pytest
from rt_util import grad, make_arrays

torch = pytest.importorskip("torch", reason="compares with torch.optim")

from optdsl import Param  # noqa: E402
from optdsl.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop  # noqa: E402

CASES = [
    ("Adam", Adam, {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 1e-2}),
    ("Adam", Adam, {"lr": 1e-2, "amsgrad": True}),
    ("AdamW", AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    ("SGD", SGD, {"lr": 0.05, "momentum": 0.9}),
    ("SGD", SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-2}),
    ("SGD", SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", SGD, {"lr": 0.05}),
    ("RMSprop", RMSprop, {"lr": 1e-2, "centered": True, "momentum": 0.5}),
    ("Adagrad", Adagrad, {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.2}),
    ("Adadelta", Adadelta, {"lr": 0.5, "rho": 0.8, "weight_decay": 1e-2}),
]


def _torch_step(opt, tensors, step):
    for i, t in enumerate(tensors):
        t.grad = torch.from_numpy(grad(step, t.detach().numpy(), i))
    opt.step()


@pytest.mark.parametrize(
    "name, cls, kwargs", CASES, ids=[f"{c[0]}-{'-'.join(c[2])}" for c in CASES]
)
def test_continue_from_a_torch_state_dict(name, cls, kwargs):
    arrays = make_arrays(np.float64, seed=5)
    tensors = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    topt = getattr(torch.optim, name)(
        [{"params": tensors[:1]}, {"params": tensors[1:], "lr": 0.02}], **kwargs
    )
    for step in range(1, 4):
        _torch_step(topt, tensors, step)
    sd = topt.state_dict()
    if name == "SGD":
        assert all("step" not in entry for entry in sd["state"].values())

    params = [Param(t.detach().numpy().copy()) for t in tensors]
    opt = cls([{"params": params[:1]}, {"params": params[1:]}])
    opt.load_state_dict(sd)
    assert opt.param_groups[1]["lr"] == 0.02
    assert "foreach" in opt.param_groups[0]  # torch's own keys are kept, as extras

    for step in range(4, 8):
        _torch_step(topt, tensors, step)
        for i, p in enumerate(params):
            p.grad = grad(step, p.data, i)
        opt.step()
        for p, t in zip(params, tensors, strict=True):
            np.testing.assert_allclose(
                p.data, t.detach().numpy(), rtol=1e-10, atol=1e-13, err_msg=f"step {step}"
            )
    tsd = topt.state_dict()
    for i, p in enumerate(params):
        for key, value in tsd["state"].get(i, {}).items():
            if key == "step":
                assert opt.state[p]["step"] == int(value)
            else:
                np.testing.assert_allclose(
                    opt.state[p][key], value.numpy(), rtol=1e-10, atol=1e-13, err_msg=key
                )


def _step_both(topt, tensors, opt, params, steps) -> None:
    """Step torch and optdsl side by side on the same gradients."""
    for step in steps:
        _torch_step(topt, tensors, step)
        for i, p in enumerate(params):
            p.grad = grad(step, p.data, i)
        opt.step()


def test_float32_torch_adam_state_into_float32_params():
    arrays = make_arrays(np.float32, seed=6)
    tensors = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    topt = torch.optim.Adam(tensors, lr=1e-2)
    for step in range(1, 3):
        _torch_step(topt, tensors, step)
    params = [Param(t.detach().numpy().copy()) for t in tensors]
    opt = Adam(params)
    opt.load_state_dict(topt.state_dict())
    assert opt.state[params[0]]["exp_avg"].dtype == np.float32
    assert opt.state[params[0]]["step"] == 2
    _step_both(topt, tensors, opt, params, range(3, 6))
    for p, t in zip(params, tensors, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_adagrad_state_from_before_any_step():
    """torch.optim.Adagrad creates its state (step 0, sum) at construction: loading that
    must start from step 1 with the given accumulator."""
    arrays = make_arrays(np.float64, seed=7)
    tensors = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    topt = torch.optim.Adagrad(tensors, lr=0.1, initial_accumulator_value=0.3)
    sd = topt.state_dict()
    assert all(float(e["step"]) == 0 for e in sd["state"].values())
    params = [Param(a.copy()) for a in arrays]
    opt = Adagrad(params)
    opt.load_state_dict(sd)
    _step_both(topt, tensors, opt, params, range(1, 4))
    for p, t in zip(params, tensors, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-13)
