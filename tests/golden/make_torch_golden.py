"""Regenerate ``torch_trajectories.json``: torch.optim's trajectories on the golden problem.

Usage (needs torch 2.13.0 exactly, CPU is fine)::

    python tests/golden/make_torch_golden.py

For every optimizer, constructor config (``problem.CONFIGS``) and dtype (float64, float32) it
runs ``torch.optim.<Name>(params, foreach=False, **kwargs)`` -- torch's single-tensor
reference implementation -- for ``N_STEPS`` steps and records the parameters at step 0 and
at every ``CHECK_STEPS`` step, plus each parameter's optimizer state after the last step.

All floats are written with Python's ``repr`` (the json module's default), which round-trips
float64 exactly; float32 values are stored as their exact float64 value.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problem import (  # noqa: E402
    CHECK_STEPS,
    CONFIGS,
    DTYPES,
    N_STEPS,
    config_id,
    make_grad,
    make_params,
)

OUT_PATH = Path(__file__).resolve().parent / "torch_trajectories.json"
TORCH_VERSION = "2.13.0"

# Group entries that only select torch's implementation, not the math.
_IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable")


def _flat(array: np.ndarray) -> list[float]:
    """Row-major flat list of exact float64 values (float32 widens exactly)."""
    return [float(x) for x in np.asarray(array, dtype=np.float64).ravel()]


def _jsonable(value: Any) -> Any:
    """A param-group hyperparameter as JSON (tuples become lists, tensors become numbers)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _state_entry(value: Any) -> Any:
    """One optimizer-state value: a scalar (``step``) as a number, a tensor as a flat list."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return float(value.item())
        return _flat(value.detach().numpy())
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"unexpected optimizer state value {value!r}")


def run_case(name: str, kwargs: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Run one torch optimizer config for N_STEPS steps and record its trajectory."""
    params = [torch.from_numpy(p.copy()) for p in make_params(dtype)]
    optimizer = getattr(torch.optim, name)(params, foreach=False, **kwargs)
    initial_state_keys = list(optimizer.state.get(params[0], {}).keys())  # Adagrad: eager

    trajectory = {"0": [_flat(p.numpy()) for p in params]}
    for step in range(1, N_STEPS + 1):
        grads = make_grad(step, [p.detach().numpy() for p in params])
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g)
        optimizer.step()
        optimizer.zero_grad()
        for p in params:
            if not torch.isfinite(p).all():
                raise RuntimeError(f"{name} {kwargs} {dtype}: non-finite params at {step}")
            if p.dtype != getattr(torch, dtype):
                raise RuntimeError(f"{name} {kwargs} {dtype}: dtype changed to {p.dtype}")
        if step in CHECK_STEPS:
            trajectory[str(step)] = [_flat(p.detach().numpy()) for p in params]

    # Every param of one group has the same state keys; record torch's own key order.
    state_keys = list(optimizer.state[params[0]].keys())
    for p in params:
        if list(optimizer.state[p].keys()) != state_keys:
            raise RuntimeError(f"{name} {kwargs}: state keys differ between params")
    state = [{k: _state_entry(v) for k, v in optimizer.state[p].items()} for p in params]

    group = optimizer.state_dict()["param_groups"][0]
    param_group = {
        k: _jsonable(v) for k, v in group.items() if k != "params" and k not in _IMPL_KEYS
    }
    return {
        "optimizer": name,
        "id": config_id(name, kwargs),
        "kwargs": {k: _jsonable(v) for k, v in kwargs.items()},
        "dtype": dtype,
        "params": trajectory,
        "state": state,
        "state_keys": state_keys,
        # Informational (not compared): state right after construction, and torch's
        # resolved hyperparameters (defaults filled in) as they appear in state_dict().
        "initial_state_keys": initial_state_keys,
        "param_group": param_group,
    }


def main() -> None:
    assert torch.__version__.startswith(TORCH_VERSION), (
        f"the golden file must come from torch {TORCH_VERSION}, found {torch.__version__}"
    )
    torch.set_num_threads(1)
    cases = [
        run_case(name, kwargs, dtype)
        for name, configs in CONFIGS.items()
        for kwargs in configs
        for dtype in DTYPES
    ]
    ids = [(c["id"], c["dtype"]) for c in cases]
    assert len(set(ids)) == len(ids), "duplicate config ids in problem.CONFIGS"

    meta = {
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "date": datetime.date.today().isoformat(),
        "generator": "tests/golden/make_torch_golden.py",
        "N_STEPS": N_STEPS,
        "CHECK_STEPS": list(CHECK_STEPS),
        # Fingerprint of the problem itself, to tell "numpy's RNG stream changed" apart from
        # "the optimizer is wrong": the step-1 gradient at the initial params, per dtype.
        "grad_step1": {
            dtype: [_flat(g) for g in make_grad(1, make_params(dtype))] for dtype in DTYPES
        },
    }
    text = json.dumps({"meta": meta, "cases": cases}, allow_nan=False, separators=(",", ":"))
    OUT_PATH.write_text(text + "\n")
    print(f"wrote {len(cases)} cases, {len(text) / 1e6:.2f} MB -> {OUT_PATH}")


if __name__ == "__main__":
    main()
