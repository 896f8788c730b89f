"""Parity of optdsl's stdlib optimizers with torch.optim (SGD, Adam, AdamW, RMSprop, Adagrad,
Adadelta), on the golden problem of ``tests/golden/problem.py``.

* ``test_matches_torch_golden``: replays every case of ``tests/golden/torch_trajectories.json``
  (recorded from torch 2.13.0 by ``tests/golden/make_torch_golden.py``, float64 and float32)
  and compares the parameters at every CHECK_STEPS step and the final optimizer state.
  Needs no torch.
* ``test_matches_torch_live``: runs torch side by side (float64) and compares at every step;
  skipped when torch 2.13.0 is not installed.
* ``test_golden_file_is_current``: the golden file covers exactly problem.CONFIGS.
* ``test_problem_reproduces_golden_inputs``: numpy still yields the recorded initial params
  and step-1 gradient (tells a changed RNG stream apart from a wrong optimizer).

The optdsl import is deliberately unguarded: a broken library must fail this module loudly,
not skip it.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
GOLDEN_FILE = GOLDEN_DIR / "torch_trajectories.json"
if str(GOLDEN_DIR) not in sys.path:
    sys.path.insert(0, str(GOLDEN_DIR))

from problem import (  # noqa: E402
    CHECK_STEPS,
    CONFIGS,
    DTYPES,
    N_STEPS,
    canonical_kwargs,
    config_id,
    make_grad,
    make_params,
)

import optdsl.optim  # noqa: E402

TORCH_VERSION = "2.13.0"

# The bar: rtol 1e-9 over 40 steps in float64, rtol 1e-5 in float32.
RTOL = {"float64": 1e-9, "float32": 1e-5}
# Absolute tolerance, *relative to the largest magnitude in the compared array*: entries that
# pass near zero (a parameter crossing zero, a momentum buffer changing sign) carry an absolute
# rounding error of a few ulps of the array's scale, which no rtol can absorb. 1e-12 is
# ~4500 float64 ulps and 1e-6 is ~8 float32 ulps of the array's largest entry -- still far
# below any real bug (a misplaced eps or bias correction is off by 1e-4 or more). Scaling
# (rather than a fixed atol) keeps tiny-valued state meaningful, e.g. Adadelta's acc_delta,
# which is ~1e-5 here: a fixed atol of 1e-6 would make that comparison vacuous.
ATOL_REL = {"float64": 1e-12, "float32": 1e-6}


# --------------------------------------------------------------------------------------------
# Helpers


@cache
def load_golden() -> dict[str, Any]:
    """The golden file (a missing or broken file fails collection loudly, as it should)."""
    return json.loads(GOLDEN_FILE.read_text())


def golden_cases() -> list[dict[str, Any]]:
    return load_golden()["cases"]


def assert_close(actual: Any, expected: np.ndarray, dtype: str, what: str) -> None:
    """Compare with the dtype's rtol and an atol scaled to the expected array's magnitude."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(
        actual.astype(np.float64),
        expected,
        rtol=RTOL[dtype],
        atol=ATOL_REL[dtype] * scale,
        err_msg=what,
    )


def make_optdsl(name: str, kwargs: dict[str, Any], dtype: str) -> tuple[Any, list[optdsl.Param]]:
    """An optdsl optimizer of class ``name`` over fresh copies of the problem's params."""
    params = [optdsl.Param(a.copy()) for a in make_params(dtype)]
    optimizer = getattr(optdsl.optim, name)(params, **kwargs)
    return optimizer, params


def optdsl_step(optimizer: Any, params: list[optdsl.Param], step: int) -> None:
    """One optimizer step with the problem's gradient at the current parameter values."""
    grads = make_grad(step, [np.asarray(p.data) for p in params])
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad()


def optdsl_state(optimizer: Any, param: optdsl.Param) -> dict[str, Any]:
    """``optimizer.state[param]``; a param with no state entry counts as empty (as in torch,
    whose ``state`` is a defaultdict: SGD without momentum never stores anything)."""
    try:
        state = optimizer.state[param]
    except KeyError:
        return {}
    return dict(state)


def check_params(
    params: list[optdsl.Param], expected: list[np.ndarray], dtype: str, what: str
) -> None:
    """Parameter values match ``expected`` and the parameters kept their dtype."""
    assert len(params) == len(expected)
    for i, (p, exp) in enumerate(zip(params, expected, strict=True)):
        data = np.asarray(p.data)
        assert data.dtype == np.dtype(dtype), f"{what} param {i}: dtype became {data.dtype}"
        assert_close(data, exp, dtype, f"{what} param {i}")


def check_state(
    optimizer: Any,
    params: list[optdsl.Param],
    expected: list[dict[str, Any]],
    dtype: str,
    what: str,
) -> None:
    """Per param: the same state keys as torch; tensors compared as arrays (and of the param's
    dtype, as torch's ``zeros_like`` buffers are); scalars (``step``) compared exactly."""
    for i, (p, exp_state) in enumerate(zip(params, expected, strict=True)):
        state = optdsl_state(optimizer, p)
        if "step" not in exp_state and exp_state == {} and state:
            # torch's SGD keeps no step count; optdsl keeps 'step' for every optimizer,
            # because t is a built-in of the language (a documented difference).
            assert isinstance(state.get("step"), int) and state["step"] > 0
            state = {k: v for k, v in state.items() if k != "step"}
        elif "step" not in exp_state:
            assert isinstance(state.pop("step", None), int), f"{what}: no step count"
        assert set(state) == set(exp_state), (
            f"{what} param {i}: state keys {sorted(state)} != torch's {sorted(exp_state)}"
        )
        for key, exp in exp_state.items():
            value = np.asarray(state[key])
            label = f"{what} param {i} state[{key!r}]"
            if np.ndim(exp) == 0:
                # torch keeps 'step' as a float32 0-d tensor; any exact count is fine here.
                assert value.size == 1, f"{label}: expected a scalar, got shape {value.shape}"
                assert float(value.reshape(())) == float(exp), f"{label}: {value} != {exp}"
            else:
                assert value.dtype == np.dtype(dtype), f"{label}: dtype {value.dtype}"
                assert_close(value, exp, dtype, label)


def golden_state(case: dict[str, Any], shapes: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """The case's final torch state with flat lists reshaped to the param shapes."""
    return [
        {k: v if np.isscalar(v) else np.reshape(v, shape) for k, v in state.items()}
        for state, shape in zip(case["state"], shapes, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Golden-file parity (no torch needed)


@pytest.mark.parametrize(
    "case", golden_cases(), ids=[f"{c['id']}-{c['dtype']}" for c in golden_cases()]
)
def test_matches_torch_golden(case: dict[str, Any]) -> None:
    name, dtype = case["optimizer"], case["dtype"]
    kwargs = canonical_kwargs(case["kwargs"])
    optimizer, params = make_optdsl(name, kwargs, dtype)
    shapes = [np.shape(p.data) for p in params]

    for step in range(1, N_STEPS + 1):
        optdsl_step(optimizer, params, step)
        if str(step) in case["params"]:
            expected = [
                np.reshape(v, s) for v, s in zip(case["params"][str(step)], shapes, strict=True)
            ]
            check_params(params, expected, dtype, f"step {step}")

    assert set(case["state_keys"]) == set(case["state"][0])
    check_state(optimizer, params, golden_state(case, shapes), dtype, f"after step {N_STEPS}")


def test_problem_reproduces_golden_inputs() -> None:
    """make_params / make_grad still produce the exact recorded inputs. If this fails, numpy's
    random streams changed and every golden case fails for that reason, not the optimizers'."""
    golden = load_golden()
    for dtype in DTYPES:
        params = make_params(dtype)
        for case in golden["cases"]:
            if case["dtype"] == dtype:
                for p, recorded in zip(params, case["params"]["0"], strict=True):
                    assert p.ravel().tolist() == recorded, f"{case['id']} {dtype}: initial params"
        grads = make_grad(1, params)
        for g, recorded in zip(grads, golden["meta"]["grad_step1"][dtype], strict=True):
            assert g.dtype == np.dtype(dtype)
            assert g.ravel().tolist() == recorded, f"{dtype}: step-1 gradient"


def test_golden_file_is_current() -> None:
    """The golden file was generated from the current problem.py (configs, steps, dtypes)."""
    golden = load_golden()
    meta = golden["meta"]
    assert meta["torch_version"].startswith(TORCH_VERSION)
    assert meta["N_STEPS"] == N_STEPS
    assert tuple(meta["CHECK_STEPS"]) == CHECK_STEPS

    # json.dumps turns tuples (betas) into lists, as the generator did.
    expected = sorted(
        (name, json.dumps(kwargs, sort_keys=True), dtype)
        for name, configs in CONFIGS.items()
        for kwargs in configs
        for dtype in DTYPES
    )
    actual = sorted(
        (c["optimizer"], json.dumps(c["kwargs"], sort_keys=True), c["dtype"])
        for c in golden["cases"]
    )
    assert actual == expected, "stale golden file: rerun tests/golden/make_torch_golden.py"
    for case in golden["cases"]:
        assert case["id"] == config_id(case["optimizer"], case["kwargs"])
        assert sorted(case["params"], key=int) == ["0", *map(str, CHECK_STEPS)]


# --------------------------------------------------------------------------------------------
# Live parity against torch (float64, every step)

LIVE_CASES = [(name, kwargs) for name, configs in CONFIGS.items() for kwargs in configs]


def import_torch() -> Any:
    torch = pytest.importorskip(
        "torch", reason="torch not installed; test_matches_torch_golden covers parity"
    )
    if not torch.__version__.startswith(TORCH_VERSION):
        pytest.skip(f"live parity is pinned to torch {TORCH_VERSION}, found {torch.__version__}")
    return torch


def torch_state(torch: Any, optimizer: Any, params: list[Any]) -> list[dict[str, Any]]:
    """Torch's per-param state as numpy arrays / floats (the layout check_state expects)."""
    out = []
    for p in params:
        state = {}
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                state[key] = value.detach().numpy().copy()
            else:
                state[key] = float(value)
        out.append(state)
    return out


@pytest.mark.parametrize(
    ("name", "kwargs"), LIVE_CASES, ids=[config_id(n, k) for n, k in LIVE_CASES]
)
def test_matches_torch_live(name: str, kwargs: dict[str, Any]) -> None:
    torch = import_torch()
    dtype = "float64"
    t_params = [torch.from_numpy(a.copy()) for a in make_params(dtype)]
    t_opt = getattr(torch.optim, name)(t_params, foreach=False, **kwargs)
    optimizer, params = make_optdsl(name, kwargs, dtype)

    for step in range(1, N_STEPS + 1):
        # Each side's gradient comes from its own current params, as in the golden run.
        t_grads = make_grad(step, [p.detach().numpy() for p in t_params])
        for p, g in zip(t_params, t_grads, strict=True):
            p.grad = torch.from_numpy(g)
        t_opt.step()
        t_opt.zero_grad()
        optdsl_step(optimizer, params, step)

        what = f"step {step}"
        check_params(params, [p.detach().numpy() for p in t_params], dtype, what)
        check_state(optimizer, params, torch_state(torch, t_opt, t_params), dtype, what)
