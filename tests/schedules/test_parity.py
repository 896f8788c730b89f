"""Parity of ``optdsl.schedules`` with torch.optim.lr_scheduler, on the cases of
``schedule_cases.py`` (every torch-parity schedule and its important options, two param
groups, ~120 steps).

* ``test_matches_torch_golden``: replays every case against ``golden/torch_schedules.json``
  (recorded from torch 2.13.0 by ``make_schedule_golden.py``): each group's lr after
  construction and after every step, and the momentum / ``betas[0]`` (moved by OneCycleLR,
  left alone by every other schedule). Needs no torch.
* ``test_matches_torch_live``: the same cases side by side with torch, so the golden file
  cannot go stale silently; skipped without torch 2.13.0.
* ``test_golden_file_is_current``: the golden file holds exactly the current case table.
* ``test_every_schedule_has_a_parity_case``: a schedule added to the stdlib without a case
  here fails.
* ``test_warmup_cosine_matches_its_definition``: WarmupCosineLR (no torch class) against an
  independent NumPy transcription of its definition, past total_steps too; its golden cases
  compare it with torch's SequentialLR(LinearLR, CosineAnnealingLR) up to total_steps.

The optdsl import is deliberately unguarded: a broken library must fail this module loudly,
not skip it.
"""

from __future__ import annotations

import json
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
GOLDEN_FILE = HERE / "golden" / "torch_schedules.json"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from schedule_cases import (  # noqa: E402
    CASES,
    GROUP_LRS,
    MOMENTUM_KEY,
    OPTIMIZER_KWARGS,
    build_schedule,
    case_ids,
    metric_values,
    param_groups,
    read_value,
    schedule_names,
)

import optdsl.optim  # noqa: E402
import optdsl.schedules  # noqa: E402
from optdsl import Param, ScheduleError  # noqa: E402

TORCH_VERSION = "2.13.0"
# torch and optdsl evaluate the same expressions in the same order; the bar leaves room for
# a libm that differs in the last bit, not for a different formula.
RTOL = 1e-9

# Schedules without a torch class: checked against a transcription of their definition (and
# against torch's spelling of them, the case's ``torch_schedule``).
NO_TORCH_CLASS = {"WarmupCosineLR"}


# --------------------------------------------------------------------------------------------
# Helpers


@cache
def load_golden() -> dict[str, Any]:
    """The golden file (a missing or broken file fails loudly, as it should)."""
    return json.loads(GOLDEN_FILE.read_text())


@cache
def golden_by_id() -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in load_golden()["cases"]}


def golden_case(case_id: str) -> dict[str, Any]:
    try:
        return golden_by_id()[case_id]
    except KeyError:
        raise AssertionError(f"{case_id}: not in {GOLDEN_FILE.name}; rerun "
                             "python tests/schedules/make_schedule_golden.py") from None


def make_optdsl(case: dict[str, Any]) -> tuple[Any, Any]:
    """optdsl's optimizer (two param groups) and the case's schedule on it."""
    name = case["optimizer"]
    groups = param_groups(name, lambda: Param(np.zeros(2)))
    optimizer = getattr(optdsl.optim, name)(groups, **OPTIMIZER_KWARGS[name])
    return optimizer, build_schedule(case["schedule"], optimizer, optdsl.schedules)


def values(optimizer: Any, key: str) -> list[float]:
    return [read_value(g, key) for g in optimizer.param_groups]


def step(schedule: Any, metrics: list[float] | None, i: int) -> None:
    if metrics is None:
        schedule.step()
    else:
        schedule.step(metrics[i])


def assert_close(actual: list[float], expected: list[float], what: str) -> None:
    np.testing.assert_allclose(np.array(actual, dtype=np.float64),
                               np.array(expected, dtype=np.float64),
                               rtol=RTOL, atol=0.0, err_msg=what)


def check_last_lr(schedule: Any, optimizer: Any, what: str) -> None:
    """get_last_lr() is what the groups hold (as torch's is)."""
    assert schedule.get_last_lr() == values(optimizer, "lr"), f"{what}: get_last_lr()"


# --------------------------------------------------------------------------------------------
# Golden-file parity (no torch needed)


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_matches_torch_golden(case: dict[str, Any]) -> None:
    golden = golden_case(case["id"])
    metrics = metric_values(case)
    momentum_key = MOMENTUM_KEY[case["optimizer"]]
    optimizer, schedule = make_optdsl(case)

    for i in range(case["steps"] + 1):
        what = f"{case['id']}: after construction" if i == 0 else f"{case['id']}: step {i}"
        if i:
            step(schedule, metrics, i - 1)
        assert_close(values(optimizer, "lr"), golden["lr"][i], f"{what}, lr")
        check_last_lr(schedule, optimizer, what)
        if momentum_key in golden:
            assert_close(values(optimizer, momentum_key), golden[momentum_key][i],
                         f"{what}, {momentum_key}")
        else:  # torch left it alone: so must optdsl, exactly
            assert values(optimizer, momentum_key) == golden["constant"][momentum_key], (
                f"{what}: {momentum_key} changed")
    assert schedule.last_epoch == case["steps"]


@pytest.mark.parametrize("case", [c for c in CASES if c["schedule"]["name"] == "OneCycleLR"],
                         ids=lambda c: c["id"])
def test_one_cycle_refuses_to_step_past_total_steps(case: dict[str, Any]) -> None:
    """torch defines total_steps steps after construction and raises a ValueError after."""
    optimizer, schedule = make_optdsl(case)
    for _ in range(case["steps"]):
        schedule.step()
    before = values(optimizer, "lr")
    with pytest.raises(ScheduleError, match="total_steps"):
        schedule.step()
    assert values(optimizer, "lr") == before


def test_golden_file_is_current() -> None:
    """The golden file was generated from the current schedule_cases.py."""
    golden = load_golden()
    assert golden["meta"]["torch_version"].startswith(TORCH_VERSION)
    recorded = [c["id"] for c in golden["cases"]]
    assert recorded == case_ids(), "stale golden file: rerun make_schedule_golden.py"
    for case in CASES:
        entry = golden_case(case["id"])
        # JSON turns tuples into lists, as the generator's dump did.
        assert entry["case"] == json.loads(json.dumps(case)), (
            f"{case['id']}: case changed since the golden file was made; rerun "
            "make_schedule_golden.py")
        assert entry.get("metrics") == metric_values(case), f"{case['id']}: metrics changed"
        assert len(entry["lr"]) == case["steps"] + 1
        assert all(len(row) == 2 for row in entry["lr"])


def test_every_schedule_has_a_parity_case() -> None:
    """Every stdlib schedule, LambdaLR and MultiplicativeLR is the top-level schedule of some
    case, and the composites compose at least one; one without a torch class has its
    transcription below."""
    top = {c["schedule"]["name"] for c in CASES}
    wanted = set(optdsl.schedules.STDLIB) | {"LambdaLR", "MultiplicativeLR"}
    missing = wanted - top
    assert not missing, f"schedules without a torch parity case in schedule_cases.py: {missing}"
    assert {"SequentialLR", "ChainedScheduler"} <= top
    used = set().union(*(schedule_names(c["schedule"]) for c in CASES))
    assert used <= set(optdsl.schedules.__all__)
    respelled = {c["schedule"]["name"] for c in CASES if "torch_schedule" in c}
    assert respelled == NO_TORCH_CLASS <= set(TRANSCRIPTIONS)


def test_cases_exercise_the_quirks() -> None:
    """The golden data really covers what the case table says it does."""
    lr = {c["id"]: np.array(golden_case(c["id"])["lr"]) for c in CASES}

    # CosineAnnealingLR past T_max: back up to base_lr at 2 * T_max.
    cos = lr["CosineAnnealingLR-T30"]
    assert cos[30, 0] == 0.0 and cos[60, 0] == pytest.approx(0.1) and cos[90, 0] < 1e-12

    # ReduceLROnPlateau: per-group min_lr floors are reached; eps skips a reduction of one
    # group (lr > min_lr = 0) at a step where the other group's goes through.
    floors = lr["ReduceLROnPlateau-min-abs-cooldown-min_lr-list"]
    assert list(floors[-1]) == [1e-3, 0.02]
    eps = lr["ReduceLROnPlateau-eps-skips"]
    changed = eps[1:] != eps[:-1]
    assert np.any(changed[:, 1] & ~changed[:, 0] & (eps[:-1, 0] > 0))

    # MultiStepLR: a milestone listed twice decays twice; milestone 0 decays at construction.
    dup = lr["MultiStepLR-duplicate-unsorted"]
    assert dup[50, 0] == pytest.approx(dup[49, 0] * 0.25)
    assert lr["MultiStepLR-milestone0"][0, 0] == pytest.approx(0.1 * 0.3)

    # OneCycleLR: the last value (epoch total_steps) overshoots to a negative lr with
    # anneal_strategy="linear" -- torch's number, kept.
    assert lr["OneCycleLR-linear-three_phase-SGD"][-1, 0] < 0

    # PolynomialLR: 0 at total_iters and after.
    assert np.all(lr["PolynomialLR-power1"][80:] == 0.0)


# --------------------------------------------------------------------------------------------
# Live parity against torch (every case, every step)


def import_torch() -> Any:
    torch = pytest.importorskip(
        "torch", reason="torch not installed; test_matches_torch_golden covers parity")
    if not torch.__version__.startswith(TORCH_VERSION):
        pytest.skip(f"live parity is pinned to torch {TORCH_VERSION}, found {torch.__version__}")
    return torch


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_matches_torch_live(case: dict[str, Any]) -> None:
    torch = import_torch()
    name = case["optimizer"]
    t_groups = param_groups(name, lambda: torch.zeros(2, requires_grad=True))
    t_optimizer = getattr(torch.optim, name)(t_groups, **OPTIMIZER_KWARGS[name])
    metrics = metric_values(case)
    optimizer, schedule = make_optdsl(case)
    momentum_key = MOMENTUM_KEY[name]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_schedule = build_schedule(case.get("torch_schedule", case["schedule"]), t_optimizer,
                                    torch.optim.lr_scheduler)
        for i in range(case["steps"] + 1):
            what = f"{case['id']}: step {i}"
            if i:
                t_optimizer.step()
                step(t_schedule, metrics, i - 1)
                step(schedule, metrics, i - 1)
            for key in ("lr", momentum_key):
                assert_close(values(optimizer, key), values(t_optimizer, key), f"{what}, {key}")
            assert_close(schedule.get_last_lr(), t_schedule.get_last_lr(), f"{what}, last_lr")

        if case["schedule"]["name"] == "OneCycleLR":  # both stop at total_steps
            with pytest.raises(ValueError):
                t_schedule.step()
            with pytest.raises(ValueError):
                schedule.step()


# --------------------------------------------------------------------------------------------
# WarmupCosineLR against its definition


def warmup_cosine_reference(epochs: np.ndarray, base_lr: float, warmup_steps: int,
                            total_steps: int, min_lr: float, start_factor: float) -> np.ndarray:
    """WarmupCosineLR's definition, written independently of the .opt: linear interpolation
    from start_factor * base_lr (epoch 0) to base_lr (epoch warmup_steps), a half cosine from
    base_lr (epoch warmup_steps) to min_lr (epoch total_steps), then min_lr."""
    epochs = np.asarray(epochs, dtype=np.float64)
    out = np.full(epochs.shape, float(min_lr))
    warm = epochs < warmup_steps
    if warmup_steps > 0:
        out[warm] = np.interp(epochs[warm], [0.0, warmup_steps],
                              [start_factor * base_lr, base_lr])
    decay = ~warm & (epochs < total_steps)
    progress = (epochs[decay] - warmup_steps) / (total_steps - warmup_steps)
    out[decay] = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + np.cos(np.pi * progress))
    return out


TRANSCRIPTIONS = {"WarmupCosineLR": warmup_cosine_reference}

WARMUP_COSINE_CONFIGS = [
    # (warmup_steps, total_steps, min_lr, start_factor)
    (20, 100, 0.0, 0.0),
    (20, 100, 1e-3, 0.1),
    (0, 80, 1e-4, 0.0),
    (1, 50, 0.0, 0.5),
    (60, 60, 1e-3, 0.2),  # no decay phase: straight to min_lr at total_steps
    (10, 11, 0.0, 1.0),
]


@pytest.mark.parametrize(("warmup_steps", "total_steps", "min_lr", "start_factor"),
                         WARMUP_COSINE_CONFIGS)
def test_warmup_cosine_matches_its_definition(warmup_steps: int, total_steps: int,
                                              min_lr: float, start_factor: float) -> None:
    groups = param_groups("SGD", lambda: Param(np.zeros(2)))
    optimizer = optdsl.optim.SGD(groups, **OPTIMIZER_KWARGS["SGD"])
    schedule = optdsl.schedules.WarmupCosineLR(
        optimizer, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr,
        start_factor=start_factor)
    steps = total_steps + 20  # past the end: min_lr for good
    seen = [values(optimizer, "lr")]
    for _ in range(steps):
        schedule.step()
        seen.append(values(optimizer, "lr"))
    seen_array = np.array(seen)
    epochs = np.arange(steps + 1)
    for g, base_lr in enumerate(GROUP_LRS):
        expected = warmup_cosine_reference(epochs, base_lr, warmup_steps, total_steps, min_lr,
                                           start_factor)
        np.testing.assert_allclose(seen_array[:, g], expected, rtol=RTOL, atol=0.0,
                                   err_msg=f"group {g}")
    assert np.all(seen_array[total_steps:] == min_lr)
    assert values(optimizer, "momentum") == [0.9, 0.8]
