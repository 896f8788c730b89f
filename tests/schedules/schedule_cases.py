"""The case table behind the schedule golden data: every torch.optim.lr_scheduler-parity
schedule of ``optdsl.schedules``, with its important options, on two param groups.

Shared by ``make_schedule_golden.py`` (which runs torch on every case and records the values
to ``golden/torch_schedules.json``) and ``test_parity.py`` (which runs optdsl on them and
compares). Pure Python on purpose: neither torch nor optdsl is imported here, so the parity
test can rebuild every case without torch installed.

A case is plain JSON-able data:

* ``schedule``: ``{"name": ..., "kwargs": {...}}`` -- the same class name and keywords on both
  sides (torch's keyword names). Composites: ``{"name": "SequentialLR", "schedulers": [...],
  "milestones": [...]}`` and ``{"name": "ChainedScheduler", "schedulers": [...]}``. A
  ``lr_lambda`` is the name of a module-level function of this module (or a list of names,
  one per group), so both sides call the very same callable.
* ``torch_schedule``: where torch spells the schedule differently (WarmupCosineLR has no
  torch class); absent otherwise.
* ``optimizer``: ``"SGD"`` (momentum in ``group["momentum"]``) or ``"Adam"``
  (``group["betas"][0]``), with the param groups of :func:`param_groups`.
* ``steps``: how many ``step()`` calls after construction; ``metrics``: for
  ReduceLROnPlateau, the name of a metric sequence in :data:`METRICS` (``step(metric)``).

Changing anything here invalidates ``golden/torch_schedules.json``: rerun
``python tests/schedules/make_schedule_golden.py``. ``test_golden_file_is_current`` catches a
stale file.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

STEPS = 120

# Two param groups with different lrs (and different momenta, so a schedule that wrote one
# group's value into the other would show).
GROUP_LRS = (0.1, 0.3)
OPTIMIZER_KWARGS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "Adam": {"lr": 0.1},
}
GROUP_EXTRAS: dict[str, tuple[dict[str, Any], ...]] = {
    "SGD": ({"momentum": 0.9}, {"momentum": 0.8}),
    "Adam": ({"betas": (0.9, 0.999)}, {"betas": (0.8, 0.99)}),
}
# The group value besides lr that a schedule may move (OneCycleLR's cycle_momentum).
MOMENTUM_KEY = {"SGD": "momentum", "Adam": "betas[0]"}


def param_groups(optimizer: str, make_param: Callable[[], Any]) -> list[dict[str, Any]]:
    """The two param groups (torch's dict form), each with one fresh parameter."""
    return [
        {"params": [make_param()], "lr": lr, **copy.deepcopy(extra)}
        for lr, extra in zip(GROUP_LRS, GROUP_EXTRAS[optimizer], strict=True)
    ]


def read_value(group: dict[str, Any], key: str) -> float:
    """``group["lr"]``, ``group["momentum"]`` or, for ``"betas[0]"``, ``group["betas"][0]``."""
    if key == "betas[0]":
        return float(group["betas"][0])
    return float(group[key])


# --------------------------------------------------------------------------------------------
# Callables for LambdaLR / MultiplicativeLR (module level and named, so both sides use the
# same function object and the case table can name them).


def warmup_inverse_sqrt(epoch: int) -> float:
    """Linear warm-up over 10 epochs, then 1/sqrt decay (the Transformer schedule)."""
    return min((epoch + 1) / 10, math.sqrt(10 / (epoch + 1)))


def exp_decay(epoch: int) -> float:
    return 0.97**epoch


def cosine_steps(epoch: int) -> float:
    """A cosine sampled every 10 epochs (piecewise constant), never 0."""
    return 0.55 + 0.45 * math.cos(math.pi * (epoch // 10) / 12)


def constant_097(epoch: int) -> float:
    return 0.97


def sawtooth(epoch: int) -> float:
    """Grow for 3 epochs out of 10, shrink otherwise (MultiplicativeLR: lr keeps the product)."""
    return 1.1 if epoch % 10 < 3 else 0.95


LAMBDAS: dict[str, Callable[[int], float]] = {
    fn.__name__: fn for fn in (warmup_inverse_sqrt, exp_decay, cosine_steps, constant_097, sawtooth)
}


# --------------------------------------------------------------------------------------------
# Metric sequences for ReduceLROnPlateau: improvements, plateaus with noise, worsening
# stretches, and improvements smaller than the thresholds.


def _wiggle(t: int) -> float:
    """Deterministic noise in [-1, 1]."""
    return ((t * 7) % 13 - 6) / 6


def plateau_loss(n: int) -> list[float]:
    """Period 30: 8 epochs of clear improvement, 16 of plateau (level fixed, 0.2% noise,
    so some epochs beat the best by less than a threshold and some by more), 6 of worsening;
    the last stretch improves by tiny steps only."""
    values = []
    level = 2.0
    for t in range(n):
        phase = t % 30
        if t >= 100:
            level *= 0.9995  # below threshold=1e-2 (abs), above 1e-4 (rel)
        elif phase < 8:
            level *= 0.9
        elif phase >= 24:
            level *= 1.01
        values.append(level * (1 + 0.002 * _wiggle(t)))
    return values


def plateau_accuracy(n: int) -> list[float]:
    """A rising metric for mode="max": the mirror image of :func:`plateau_loss`."""
    return [1.0 - 0.4 * v for v in plateau_loss(n)]


METRICS: dict[str, Callable[[int], list[float]]] = {
    "plateau_loss": plateau_loss,
    "plateau_accuracy": plateau_accuracy,
}


# --------------------------------------------------------------------------------------------
# The cases


def _s(name: str, **kwargs: Any) -> dict[str, Any]:
    return {"name": name, "kwargs": kwargs}


def _case(case_id: str, schedule: dict[str, Any], *, optimizer: str = "SGD",
          steps: int = STEPS, metrics: str | None = None,
          torch_schedule: dict[str, Any] | None = None) -> dict[str, Any]:
    case: dict[str, Any] = {"id": case_id, "optimizer": optimizer, "steps": steps,
                            "schedule": schedule}
    if metrics is not None:
        case["metrics"] = metrics
    if torch_schedule is not None:
        case["torch_schedule"] = torch_schedule
    return case


def _warmup_cosine_torch(warmup_steps: int, total_steps: int, min_lr: float,
                         start_factor: float) -> dict[str, Any]:
    """WarmupCosineLR as torch spells it (start_factor > 0; equal up to total_steps)."""
    return {"name": "SequentialLR", "milestones": [warmup_steps], "schedulers": [
        _s("LinearLR", start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps),
        _s("CosineAnnealingLR", T_max=total_steps - warmup_steps, eta_min=min_lr),
    ]}


# OneCycleLR defines exactly total_steps steps after construction (torch raises after).
ONE_CYCLE_STEPS = 120

CASES: list[dict[str, Any]] = [
    # StepLR
    _case("StepLR-step10-gamma0.5", _s("StepLR", step_size=10, gamma=0.5)),
    _case("StepLR-step25-gamma0.3-Adam", _s("StepLR", step_size=25, gamma=0.3),
          optimizer="Adam"),
    _case("StepLR-step7-default-gamma", _s("StepLR", step_size=7)),
    # MultiStepLR
    _case("MultiStepLR-30-60-90", _s("MultiStepLR", milestones=[30, 60, 90], gamma=0.1)),
    _case("MultiStepLR-duplicate-unsorted", _s("MultiStepLR", milestones=[50, 20, 50, 100],
                                                gamma=0.5)),
    _case("MultiStepLR-milestone0", _s("MultiStepLR", milestones=[0, 40], gamma=0.3)),
    # ExponentialLR
    _case("ExponentialLR-0.97", _s("ExponentialLR", gamma=0.97)),
    _case("ExponentialLR-1.01-Adam", _s("ExponentialLR", gamma=1.01), optimizer="Adam"),
    # CosineAnnealingLR: T_max < steps, so the lr comes back up past T_max (torch's periodic
    # quirk, period 2 * T_max).
    _case("CosineAnnealingLR-T30", _s("CosineAnnealingLR", T_max=30)),
    _case("CosineAnnealingLR-T25-eta_min", _s("CosineAnnealingLR", T_max=25, eta_min=0.01)),
    _case("CosineAnnealingLR-T100-eta_min-Adam",
          _s("CosineAnnealingLR", T_max=100, eta_min=1e-3), optimizer="Adam"),
    # CosineAnnealingWarmRestarts
    _case("CosineAnnealingWarmRestarts-T10", _s("CosineAnnealingWarmRestarts", T_0=10)),
    _case("CosineAnnealingWarmRestarts-T5-mult2-eta_min",
          _s("CosineAnnealingWarmRestarts", T_0=5, T_mult=2, eta_min=0.005)),
    _case("CosineAnnealingWarmRestarts-T7-mult3-eta_min",
          _s("CosineAnnealingWarmRestarts", T_0=7, T_mult=3, eta_min=1e-3)),
    # ReduceLROnPlateau
    _case("ReduceLROnPlateau-min-rel", _s("ReduceLROnPlateau", factor=0.5, patience=5),
          metrics="plateau_loss"),
    _case("ReduceLROnPlateau-min-abs-cooldown-min_lr-list",
          _s("ReduceLROnPlateau", mode="min", factor=0.6, patience=2, threshold=0.01,
             threshold_mode="abs", cooldown=3, min_lr=[1e-3, 0.02]),
          metrics="plateau_loss"),
    _case("ReduceLROnPlateau-max-rel-Adam",
          _s("ReduceLROnPlateau", mode="max", factor=0.5, patience=3, threshold=0.01),
          metrics="plateau_accuracy", optimizer="Adam"),
    _case("ReduceLROnPlateau-max-abs-cooldown-min_lr-list",
          _s("ReduceLROnPlateau", mode="max", factor=0.7, patience=1, threshold=0.005,
             threshold_mode="abs", cooldown=5, min_lr=[0.05, 0.01]),
          metrics="plateau_accuracy"),
    # eps=0.01: once a group's lr is below 0.02 its halving (< eps) is skipped, while the
    # other group's still goes through.
    _case("ReduceLROnPlateau-eps-skips",
          _s("ReduceLROnPlateau", factor=0.5, patience=1, eps=0.01),
          metrics="plateau_loss"),
    # OneCycleLR (exactly total_steps steps; the last value is torch's overshoot "trap")
    _case("OneCycleLR-cos-SGD", _s("OneCycleLR", max_lr=1.0, total_steps=ONE_CYCLE_STEPS),
          steps=ONE_CYCLE_STEPS),
    _case("OneCycleLR-linear-three_phase-SGD",
          _s("OneCycleLR", max_lr=1.0, total_steps=ONE_CYCLE_STEPS, anneal_strategy="linear",
             three_phase=True),
          steps=ONE_CYCLE_STEPS),
    _case("OneCycleLR-cos-three_phase-Adam",
          _s("OneCycleLR", max_lr=0.5, total_steps=ONE_CYCLE_STEPS, three_phase=True,
             pct_start=0.2),
          optimizer="Adam", steps=ONE_CYCLE_STEPS),
    _case("OneCycleLR-linear-epochs-Adam",
          _s("OneCycleLR", max_lr=0.5, epochs=10, steps_per_epoch=12,
             anneal_strategy="linear"),
          optimizer="Adam", steps=ONE_CYCLE_STEPS),
    _case("OneCycleLR-no-momentum-max_lr-list-divs",
          _s("OneCycleLR", max_lr=[1.0, 2.0], total_steps=ONE_CYCLE_STEPS,
             cycle_momentum=False, div_factor=10.0, final_div_factor=100.0, pct_start=0.25),
          steps=ONE_CYCLE_STEPS),
    _case("OneCycleLR-momentum-lists-epochs",
          _s("OneCycleLR", max_lr=[0.8, 1.6], epochs=8, steps_per_epoch=15, pct_start=0.4,
             base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.99], div_factor=5.0),
          steps=ONE_CYCLE_STEPS),
    _case("OneCycleLR-no-momentum-linear-Adam",
          _s("OneCycleLR", max_lr=0.2, total_steps=ONE_CYCLE_STEPS, cycle_momentum=False,
             anneal_strategy="linear", final_div_factor=1e3),
          optimizer="Adam", steps=ONE_CYCLE_STEPS),
    # LinearLR
    _case("LinearLR-warmup", _s("LinearLR", start_factor=0.01, total_iters=20)),
    _case("LinearLR-decay", _s("LinearLR", start_factor=1.0, end_factor=0.05,
                               total_iters=80)),
    _case("LinearLR-defaults", _s("LinearLR")),
    # ConstantLR
    _case("ConstantLR-0.5-30", _s("ConstantLR", factor=0.5, total_iters=30)),
    _case("ConstantLR-defaults", _s("ConstantLR")),
    _case("ConstantLR-total_iters0", _s("ConstantLR", factor=0.25, total_iters=0)),
    # PolynomialLR (past total_iters the lr stays at 0)
    _case("PolynomialLR-power1", _s("PolynomialLR", total_iters=80, power=1.0)),
    _case("PolynomialLR-power2", _s("PolynomialLR", total_iters=100, power=2.0)),
    _case("PolynomialLR-power0.5-defaults-iters", _s("PolynomialLR", power=0.5)),
    # LambdaLR / MultiplicativeLR
    _case("LambdaLR-warmup_inverse_sqrt", _s("LambdaLR", lr_lambda="warmup_inverse_sqrt")),
    _case("LambdaLR-per-group", _s("LambdaLR", lr_lambda=["exp_decay", "cosine_steps"])),
    _case("MultiplicativeLR-constant", _s("MultiplicativeLR", lr_lambda="constant_097")),
    _case("MultiplicativeLR-per-group",
          _s("MultiplicativeLR", lr_lambda=["sawtooth", "constant_097"])),
    # SequentialLR
    _case("SequentialLR-linear-cosine-exponential",
          {"name": "SequentialLR", "milestones": [10, 70], "schedulers": [
              _s("LinearLR", start_factor=0.1, total_iters=10),
              _s("CosineAnnealingLR", T_max=60, eta_min=1e-3),
              _s("ExponentialLR", gamma=0.95)]}),
    _case("SequentialLR-milestone0",
          {"name": "SequentialLR", "milestones": [0, 50], "schedulers": [
              _s("ConstantLR", factor=0.5, total_iters=10),
              _s("LinearLR", start_factor=0.2, total_iters=30),
              _s("StepLR", step_size=15, gamma=0.5)]}),
    _case("SequentialLR-lambda-after-milestone",
          {"name": "SequentialLR", "milestones": [40], "schedulers": [
              _s("ExponentialLR", gamma=0.9),
              _s("LambdaLR", lr_lambda="warmup_inverse_sqrt")]}),
    # torch's quirks at milestones: MultiplicativeLR has no closed form (it multiplies the
    # current lr by lr_lambda(0)), and OneCycleLR overwrites the groups' initial_lr.
    _case("SequentialLR-multiplicative-after-milestone",
          {"name": "SequentialLR", "milestones": [30], "schedulers": [
              _s("ExponentialLR", gamma=0.95),
              _s("MultiplicativeLR", lr_lambda="constant_097")]}),
    _case("SequentialLR-linear-then-onecycle",
          {"name": "SequentialLR", "milestones": [10], "schedulers": [
              _s("LinearLR", start_factor=0.1, total_iters=10),
              _s("OneCycleLR", max_lr=1.0, total_steps=110)]}),
    _case("SequentialLR-onecycle-then-exponential",
          {"name": "SequentialLR", "milestones": [60], "schedulers": [
              _s("OneCycleLR", max_lr=1.0, total_steps=60, cycle_momentum=False),
              _s("ExponentialLR", gamma=0.97)]}),
    # ChainedScheduler
    _case("ChainedScheduler-constant-exponential-step",
          {"name": "ChainedScheduler", "schedulers": [
              _s("ConstantLR", factor=0.5, total_iters=20),
              _s("ExponentialLR", gamma=0.98),
              _s("StepLR", step_size=30, gamma=0.5)]}),
    _case("ChainedScheduler-linear-multistep",
          {"name": "ChainedScheduler", "schedulers": [
              _s("LinearLR", start_factor=0.1, total_iters=15),
              _s("MultiStepLR", milestones=[10, 30, 60, 90], gamma=0.5)]}),
    # WarmupCosineLR: no torch class; torch spells it SequentialLR(LinearLR, CosineAnnealingLR)
    # for start_factor > 0, equal up to total_steps (then torch's cosine comes back up).
    _case("WarmupCosineLR-w20-t120-min_lr",
          _s("WarmupCosineLR", warmup_steps=20, total_steps=120, min_lr=1e-3,
             start_factor=0.1),
          steps=120, torch_schedule=_warmup_cosine_torch(20, 120, 1e-3, 0.1)),
    _case("WarmupCosineLR-w30-t120-sf0.5",
          _s("WarmupCosineLR", warmup_steps=30, total_steps=120, start_factor=0.5),
          steps=120, torch_schedule=_warmup_cosine_torch(30, 120, 0.0, 0.5)),
]


def case_ids() -> list[str]:
    return [c["id"] for c in CASES]


def schedule_names(spec: dict[str, Any]) -> set[str]:
    """Every schedule class a spec uses, composites and their children included."""
    names = {spec["name"]}
    for child in spec.get("schedulers", ()):
        names |= schedule_names(child)
    return names


def metric_values(case: dict[str, Any]) -> list[float] | None:
    """The case's metric for step 1, 2, ... (None when the schedule reads none)."""
    name = case.get("metrics")
    return None if name is None else METRICS[name](case["steps"])


def _resolve(value: Any) -> Any:
    if isinstance(value, str):
        return LAMBDAS[value]
    return [LAMBDAS[v] for v in value]


def build_schedule(spec: dict[str, Any], optimizer: Any, classes: Any) -> Any:
    """Build ``spec`` on ``optimizer`` from ``classes`` (``torch.optim.lr_scheduler`` or
    ``optdsl.schedules``: same class names, same keywords)."""
    name = spec["name"]
    cls = getattr(classes, name)
    if name == "SequentialLR":
        children = [build_schedule(s, optimizer, classes) for s in spec["schedulers"]]
        return cls(optimizer, schedulers=children, milestones=list(spec["milestones"]))
    if name == "ChainedScheduler":
        return cls([build_schedule(s, optimizer, classes) for s in spec["schedulers"]])
    kwargs = copy.deepcopy(spec["kwargs"])
    if "lr_lambda" in kwargs:
        kwargs["lr_lambda"] = _resolve(kwargs["lr_lambda"])
    return cls(optimizer, **kwargs)
