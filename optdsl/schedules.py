"""Learning-rate schedules: compiled from ``.opt`` files, with torch's interface.

Every schedule takes the optimizer first and torch.optim.lr_scheduler's keyword names::

    sched = CosineAnnealingLR(opt, T_max=100)
    for epoch in range(100):
        train(...)
        sched.step()                 # ReduceLROnPlateau: sched.step(val_loss)

A schedule applies itself once at construction (epoch 0), as torch's do, and each
``step()`` advances the epoch and writes the new values into every param group. Besides
the compiled schedules (``stdlib/schedules/*.opt`` or any ``optdsl.compile``\\ d file) there
are the Python-callable ones (:class:`LambdaLR`, :class:`MultiplicativeLR`) and the
composites (:class:`SequentialLR`, :class:`ChainedScheduler`), which accept any schedule,
ReduceLROnPlateau and other composites included.

All of them share :class:`LRScheduler`'s API: ``step()`` / ``step(metric)``,
``get_last_lr()``, ``last_epoch``, ``base_lrs``, ``state_dict()`` / ``load_state_dict()``
(plain JSON-able data, no callables) and ``preview(steps)``.
"""

from __future__ import annotations

import bisect
import copy
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import hypers as H
from .api import StdlibModule
from .compiler import CompiledSpec
from .errors import HyperError, HyperTypeError, ScheduleError, StateDictError

STDLIB = {
    "StepLR": "schedules/steplr.opt",
    "MultiStepLR": "schedules/multisteplr.opt",
    "ExponentialLR": "schedules/exponentiallr.opt",
    "CosineAnnealingLR": "schedules/cosineannealinglr.opt",
    "CosineAnnealingWarmRestarts": "schedules/cosineannealingwarmrestarts.opt",
    "ReduceLROnPlateau": "schedules/reducelronplateau.opt",
    "OneCycleLR": "schedules/onecyclelr.opt",
    "LinearLR": "schedules/linearlr.opt",
    "ConstantLR": "schedules/constantlr.opt",
    "PolynomialLR": "schedules/polynomiallr.opt",
    "WarmupCosineLR": "schedules/warmupcosinelr.opt",
}
# Schedules written in Python: they take Python callables, which a .opt file cannot hold.
PYTHON_SCHEDULES = ("LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler")

__all__ = list(STDLIB) + list(PYTHON_SCHEDULES) + [
    "LRScheduler", "Schedule", "load", "preview", "STDLIB"]


class LRScheduler:
    """What every schedule shares. Subclasses define how one step changes the groups
    (``_advance``), how to go back to their freshly-built state (``_reset``), and what
    happens at construction (``_initial``)."""

    optimizer: Any
    last_epoch: int
    base_lrs: list[float]
    needs_metric: bool = False

    def _check_optimizer(self, optimizer: Any) -> None:
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an "
                            "optimizer")

    def _bind(self, optimizer: Any) -> None:
        """Attach to ``optimizer``; the first change a constructor makes, after every check."""
        self._check_optimizer(optimizer)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self._last_lr = self._current_lrs()

    def _current_lrs(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    # --- the step --------------------------------------------------------------------
    def step(self, metric: float | None = None) -> None:
        """Advance one epoch (or step) and write the new values into the param groups.

        Schedules that read a metric (ReduceLROnPlateau, or a composite holding one) need
        ``step(metric)``; the others take no argument (torch's deprecated ``step(epoch)``
        is not supported)."""
        name = type(self).__name__
        if metric is None and self._needs_metric_now():
            raise ScheduleError(f"{name}.step() needs the metric: call step(metric), "
                                "e.g. step(val_loss)")
        if metric is not None and not self.needs_metric:
            raise ScheduleError(f"{name}.step() takes no metric; torch's deprecated "
                                "step(epoch) form is not supported")
        value = None if metric is None else _as_metric(metric, name)
        groups = len(self.optimizer.param_groups)
        if groups != len(self.base_lrs):
            raise ScheduleError(f"{name}: the optimizer has {groups} param groups but the "
                                f"schedule was built for {len(self.base_lrs)}; build a new "
                                "schedule after add_param_group()")
        self._advance(value)
        self._last_lr = self._current_lrs()

    def _needs_metric_now(self) -> bool:
        """Whether the coming step reads the metric."""
        return self.needs_metric

    def _advance(self, metric: float | None) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        """Back to the state just after construction, before the construction step."""
        self.last_epoch = -1

    def _initial(self) -> None:
        """The construction step: apply epoch 0 (metric schedules wait for a metric)."""
        if self.needs_metric:
            self.last_epoch = 0
        else:
            self._advance(None)
        self._last_lr = self._current_lrs()

    def _restart(self) -> None:
        """Start over as if built now on an optimizer whose lrs are ``base_lrs``; used by
        SequentialLR at a milestone (torch applies the closed form at epoch 0 there)."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base
        self._reset()
        self._initial()

    def get_last_lr(self) -> list[float]:
        """The lr of each param group after the latest step (or construction)."""
        return list(self._last_lr)

    # --- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data (numbers, strings, lists, dicts): JSON-able, no callables."""
        return {"schedule": type(self).__name__, "last_epoch": int(self.last_epoch),
                "base_lrs": list(self.base_lrs), "_last_lr": list(self._last_lr)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. Everything is checked before anything
        changes; a mismatch raises :class:`optdsl.StateDictError`."""
        self._apply_state(self._parse_state(state_dict))

    def _parse_state(self, sd: dict[str, Any]) -> dict[str, Any]:
        name = type(self).__name__
        if not isinstance(sd, dict):
            raise StateDictError(f"{name}.load_state_dict: expected a dict, got "
                                 f"{type(sd).__name__}")
        saved_as = sd.get("schedule", name)
        if saved_as != name:
            raise StateDictError(f"{name}.load_state_dict: this state_dict was saved by "
                                 f"{saved_as!r}, not {name!r}")
        try:
            parsed = {"last_epoch": int(sd["last_epoch"]),
                      "base_lrs": [float(x) for x in sd["base_lrs"]],
                      "_last_lr": [float(x) for x in sd["_last_lr"]]}
        except (KeyError, TypeError, ValueError) as exc:
            raise StateDictError(f"{name}.load_state_dict: malformed state ({exc!r})") from None
        groups = len(self.optimizer.param_groups)
        if not len(parsed["base_lrs"]) == len(parsed["_last_lr"]) == groups:
            raise StateDictError(f"{name}.load_state_dict: saved for a different number of "
                                 f"param groups (the optimizer has {groups})")
        return parsed

    def _apply_state(self, parsed: dict[str, Any]) -> None:
        self.last_epoch = parsed["last_epoch"]
        self.base_lrs = parsed["base_lrs"]
        self._last_lr = parsed["_last_lr"]

    # --- looking ahead ---------------------------------------------------------------
    def preview(self, steps: int, metrics: Sequence[float] | None = None,
                key: str = "lr") -> np.ndarray:
        """The values of ``key`` (``"lr"``, ``"momentum"``, ``"betas[0]"``, ...) for the
        next ``steps`` optimizer steps, one row per step and one column per param group:
        row 0 is the current value, row i the value after i more ``step()`` calls.

        Runs on a copy: the optimizer and this schedule are not touched. Schedules that
        read a metric need ``metrics`` (at least ``steps - 1`` values)."""
        steps = int(steps)
        if steps < 0:
            raise ValueError("preview: steps must be >= 0")
        if self.needs_metric and steps > 1 and (metrics is None or len(metrics) < steps - 1):
            raise ScheduleError(f"{type(self).__name__}.preview: this schedule reads a "
                                f"metric; pass metrics= with at least {steps - 1} values")
        stub = _GroupsOnly([{k: v for k, v in g.items() if k != "params"}
                            for g in self.optimizer.param_groups])
        clone = copy.deepcopy(self, memo={id(self.optimizer): stub})
        read = _reader(key)
        rows = []
        for i in range(steps):
            if i:
                clone.step(metrics[i - 1] if clone.needs_metric else None)
            rows.append([read(g) for g in stub.param_groups])
        return np.array(rows, dtype=np.float64).reshape(steps, len(stub.param_groups))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"


class _GroupsOnly:
    """A stand-in optimizer for previews: param groups without params."""

    def __init__(self, groups: list[dict[str, Any]]):
        self.param_groups = groups


_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def _reader(key: str) -> Callable[[dict[str, Any]], float]:
    m = _KEY.match(key)
    if m is None:
        raise ValueError(f"preview: key must look like 'lr' or 'betas[0]', got {key!r}")
    name, index = m.group(1), m.group(2)

    def read(group: dict[str, Any]) -> float:
        if name not in group:
            raise KeyError(f"preview: the param groups have no {name!r}")
        value = group[name]
        return float(value[int(index)]) if index is not None else float(value)

    return read


def _as_metric(metric: Any, owner: str) -> float:
    try:
        value = float(metric)
    except (TypeError, ValueError):
        raise ScheduleError(f"{owner}.step(metric): the metric must be a number, got "
                            f"{metric!r}") from None
    return value


# --- compiled schedules ----------------------------------------------------------------

class Schedule(LRScheduler):
    """Base class of every compiled schedule; subclasses carry a ``_spec``.

    Hyper keywords take one value for all param groups, or (for number, bool and string
    hypers) a list with one value per group, as torch's ``max_lr=[...]``."""

    _spec: CompiledSpec

    def __init__(self, optimizer: Any, *, last_epoch: int = -1, **hypers: Any):
        name = type(self).__name__
        self._check_optimizer(optimizer)
        if last_epoch != -1:
            _check_resume_epoch(optimizer, last_epoch, name)
        groups = optimizer.param_groups
        self.hypers = _resolve_per_group(self._spec, hypers, len(groups), name)
        self._check_requires(0)
        self._bindings = [self._resolve_groups(i, g, h)
                          for i, (g, h) in enumerate(zip(groups, self.hypers, strict=True))]
        self._bind(optimizer)
        self.state = [self._spec.host["schedule_init"](h) for h in self.hypers]
        if last_epoch == -1:
            self.last_epoch = -1
            self._initial()
        else:
            # Continue the count from here: the group values are used as they are.
            self.last_epoch = int(last_epoch)

    @property
    def needs_metric(self) -> bool:  # type: ignore[override]
        return "metric" in self._spec.host["USED_BUILTINS"]

    def _check_requires(self, epoch: int, requires: Callable | None = None) -> None:
        requires = requires or self._spec.host["requires"]
        for h in self.hypers:
            failing = requires(h, epoch)
            if failing >= 0:
                message = f"{type(self).__name__}: {self._spec.spec.requires[failing].message}"
                if epoch > 0:
                    raise ScheduleError(f"{message} (at epoch {epoch})")
                raise HyperError(message)

    def _resolve_groups(self, i: int, group: dict[str, Any], h: dict[str, Any]
                        ) -> dict[str, tuple[str, int | None] | None]:
        """Where each declared group value lives in param group ``i``: its own key, or
        an element of a tuple (``betas[0]``); None when its condition is off."""
        enabled = self._spec.host["group_enabled"](h)
        out: dict[str, tuple[str, int | None] | None] = {}
        for decl in self._spec.spec.groups:
            if not enabled[decl.name]:
                out[decl.name] = None
            elif decl.name in group:
                out[decl.name] = (decl.name, None)
            elif decl.alt is not None and isinstance(group.get(decl.alt), (tuple, list)) \
                    and len(group[decl.alt]) > decl.alt_index:
                out[decl.name] = (decl.alt, decl.alt_index)
            else:
                wanted = repr(decl.name) + (f" or {decl.alt!r}" if decl.alt else "")
                why = ""
                if decl.cond is not None:
                    why = " (turn this off with the hyper that enables it)"
                raise HyperError(f"{type(self).__name__}: param group {i} has no {wanted}, "
                                 f"which this schedule sets{why}")
        return out

    def _advance(self, metric: float | None) -> None:
        epoch = self.last_epoch + 1
        # The generated functions unwrapped (see optdsl.ops.quiet), under one errstate:
        # this runs every step, and the context manager costs more than the arithmetic.
        host = self._spec.host
        fn = _unwrapped(host["schedule_step"])
        value = math.nan if metric is None else metric
        results = []
        with np.errstate(all="ignore"):
            self._check_requires(epoch, _unwrapped(host["requires"]))  # before any change
            for i, group in enumerate(self.optimizer.param_groups):
                binding = self._bindings[i]
                values = {"lr": group["lr"]}
                for key, where in binding.items():
                    values[key] = math.nan if where is None else _read(group, where)
                results.append(fn(self.hypers[i], epoch, self.base_lrs[i], value, values,
                                  self.state[i]))
        # Check every group before writing any: a schedule never writes nan or inf (torch
        # raises ZeroDivisionError in the same places, e.g. ConstantLR(factor=0)).
        for i, (updates, _) in enumerate(results):
            for key, new in updates.items():
                if key in self._bindings[i] and self._bindings[i][key] is None:
                    continue  # a group value whose condition is off is never written
                if not math.isfinite(new):
                    raise ScheduleError(f"{type(self).__name__}: {key} would become {new} in "
                                        f"param group {i} at epoch {epoch}; check the "
                                        "schedule's arguments")
        self.last_epoch = epoch
        for i, (group, (updates, state)) in enumerate(
                zip(self.optimizer.param_groups, results, strict=True)):
            self.state[i] = state
            for key, new in updates.items():
                if key == "base_lr":  # the group's initial_lr, as torch's OneCycleLR sets it
                    self.base_lrs[i] = group["initial_lr"] = float(new)
                    continue
                where = ("lr", None) if key == "lr" else self._bindings[i][key]
                if where is not None:
                    _write(group, where, float(new))

    def _reset(self) -> None:
        self.last_epoch = -1
        self.state = [self._spec.host["schedule_init"](h) for h in self.hypers]

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["hypers"] = [{k: list(v) if isinstance(v, tuple) else v for k, v in h.items()}
                         for h in self.hypers]
        out["state"] = [{k: float(v) for k, v in s.items()} for s in self.state]
        return out

    def _parse_state(self, sd: dict[str, Any]) -> dict[str, Any]:
        parsed = super()._parse_state(sd)
        name = type(self).__name__
        groups = len(parsed["base_lrs"])
        try:
            saved = sd.get("hypers", [{}] * groups)
            if len(saved) != groups:
                raise ValueError("hypers for a different number of param groups")
            parsed["hypers"] = [H.resolve(self._spec.hypers, dict(s), name, defaults=h)
                                for s, h in zip(saved, self.hypers, strict=True)]
            state = sd.get("state", [self._spec.host["schedule_init"](h)
                                     for h in parsed["hypers"]])
            parsed["state"] = [{k: np.float64(v) for k, v in s.items()} for s in state]
        except (KeyError, TypeError, ValueError, HyperError) as exc:
            raise StateDictError(f"{name}.load_state_dict: {exc}") from None
        names = {s.name for s in self._spec.spec.states}
        if len(parsed["state"]) != groups or any(set(s) != names for s in parsed["state"]):
            raise StateDictError(f"{name}.load_state_dict: the saved schedule state does not "
                                 f"match this schedule's (expected {sorted(names)} per group)")
        return parsed

    def _apply_state(self, parsed: dict[str, Any]) -> None:
        super()._apply_state(parsed)
        self.hypers, self.state = parsed["hypers"], parsed["state"]

    @classmethod
    def source(cls) -> str:
        """The generated host code of this schedule."""
        return cls._spec.host_source


def _unwrapped(fn: Callable) -> Callable:
    return getattr(fn, "__wrapped__", fn)


def _read(group: dict[str, Any], where: tuple[str, int | None]) -> float:
    key, index = where
    return group[key] if index is None else group[key][index]


def _write(group: dict[str, Any], where: tuple[str, int | None], value: float) -> None:
    key, index = where
    if index is None:
        group[key] = value
    else:
        items = list(group[key])
        items[index] = value
        group[key] = tuple(items)


def _check_resume_epoch(optimizer: Any, last_epoch: Any, owner: str) -> None:
    if not isinstance(last_epoch, numbers.Integral) or last_epoch < -1:
        raise HyperTypeError(f"{owner}: last_epoch must be an integer >= -1, got "
                             f"{last_epoch!r}")
    for i, group in enumerate(getattr(optimizer, "param_groups", ())):
        if "initial_lr" not in group:
            raise KeyError(f"{owner}: param 'initial_lr' is not specified in param_groups[{i}] "
                           "when resuming with last_epoch; load the optimizer's state_dict "
                           "first, or better, restore the schedule with load_state_dict()")


def _resolve_per_group(spec: CompiledSpec, given: dict[str, Any], groups: int, owner: str
                       ) -> list[dict[str, Any]]:
    """Validated hypers for each param group; a list value for a scalar hyper gives one
    value per group."""
    per_group: list[dict[str, Any]] = [{} for _ in range(groups)]
    for key, value in given.items():
        info = spec.hypers.get(key)
        if value is None and info is not None and not info.required:
            continue  # torch's optional keywords take None for "not given"
        if info is not None and info.type != "tuple" and isinstance(value, (list, tuple)):
            if len(value) != groups:
                raise HyperError(f"{owner}: expected {groups} values for {key} (one per "
                                 f"param group), got {len(value)}")
            for i, v in enumerate(value):
                per_group[i][key] = v
        else:
            for d in per_group:
                d[key] = value
    return [H.resolve(spec.hypers, d, owner) for d in per_group]


# --- schedules that take Python callables -------------------------------------------------

class _LambdaBase(LRScheduler):
    def __init__(self, optimizer: Any, lr_lambda: Callable[[int], float] | Sequence[Callable],
                 last_epoch: int = -1):
        name = type(self).__name__
        self._check_optimizer(optimizer)
        if last_epoch != -1:
            _check_resume_epoch(optimizer, last_epoch, name)
        groups = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != groups:
                raise HyperError(f"{name}: expected {groups} lr_lambdas (one per param "
                                 f"group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * groups
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise HyperTypeError(f"{name}: lr_lambda must be callable, got "
                                     f"{type(fn).__name__}")
        self._bind(optimizer)
        if last_epoch == -1:
            self.last_epoch = -1
            self._initial()
        else:
            self.last_epoch = int(last_epoch)

    def _factor(self, i: int) -> float:
        value = self.lr_lambdas[i](self.last_epoch)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ScheduleError(f"{type(self).__name__}: lr_lambda({self.last_epoch}) returned "
                                f"{value!r}, not a number") from None


class LambdaLR(_LambdaBase):
    """``lr = base_lr * lr_lambda(epoch)``, as torch.optim.lr_scheduler.LambdaLR.

    ``state_dict()`` holds the epoch, not the callables: pass the same ``lr_lambda`` when
    rebuilding the schedule before ``load_state_dict()``."""

    def _advance(self, metric: float | None) -> None:
        self.last_epoch += 1
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.base_lrs[i] * self._factor(i)


class MultiplicativeLR(_LambdaBase):
    """``lr = lr * lr_lambda(epoch)`` from epoch 1 on, as torch's MultiplicativeLR.

    It has no closed form, so at a SequentialLR milestone it does what torch's does: it
    multiplies the current lr by ``lr_lambda(0)`` instead of starting from the base lr."""

    def _restart(self) -> None:
        self.last_epoch = 0
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = group["lr"] * self._factor(i)

    def _advance(self, metric: float | None) -> None:
        self.last_epoch += 1
        if self.last_epoch == 0:
            return
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = group["lr"] * self._factor(i)


# --- composition -----------------------------------------------------------------------

class _Composite(LRScheduler):
    _schedulers: list[LRScheduler]

    def _check_children(self, schedulers: Sequence[LRScheduler], optimizer: Any) -> None:
        name = type(self).__name__
        if len(schedulers) < 1:
            raise HyperError(f"{name} expects at least one schedule")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise HyperTypeError(f"{name}: schedulers[{i}] is a {type(s).__name__}, not an "
                                     "optdsl schedule")
            if s.optimizer is not optimizer:
                raise HyperError(f"{name}: schedulers[{i}] ({type(s).__name__}) belongs to "
                                 "another optimizer")
        if len({id(s) for s in schedulers}) != len(schedulers):
            raise HyperError(f"{name}: the same schedule appears twice")

    @property
    def needs_metric(self) -> bool:  # type: ignore[override]
        return any(s.needs_metric for s in self._schedulers)

    def _reset(self) -> None:
        self.last_epoch = -1
        for s in self._schedulers:
            s._reset()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["schedulers"] = [s.state_dict() for s in self._schedulers]
        return out

    def _parse_state(self, sd: dict[str, Any]) -> dict[str, Any]:
        parsed = super()._parse_state(sd)
        children = sd.get("schedulers")
        if not isinstance(children, list) or len(children) != len(self._schedulers):
            raise StateDictError(f"{type(self).__name__}.load_state_dict: saved with a "
                                 "different number of schedules")
        parsed["schedulers"] = [s._parse_state(c)
                                for s, c in zip(self._schedulers, children, strict=True)]
        return parsed

    def _apply_state(self, parsed: dict[str, Any]) -> None:
        super()._apply_state(parsed)
        for s, p in zip(self._schedulers, parsed["schedulers"], strict=True):
            s._apply_state(p)


class SequentialLR(_Composite):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]``, and so on,
    as torch.optim.lr_scheduler.SequentialLR.

    At a milestone the next schedule starts over from the base lrs (torch's numbers), on
    its own timeline: its epoch counts from 0 at the milestone. Unlike torch, any schedule
    can take part: ReduceLROnPlateau (give ``step(metric)`` every step; the schedules that
    don't read it ignore it, and a plateau schedule starting at a milestone counts metrics
    from the step after) and other composites, nested as deep as you like."""

    def __init__(self, optimizer: Any, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1):
        name = type(self).__name__
        self._check_children(schedulers, optimizer)
        milestones = list(milestones)
        if len(milestones) != len(schedulers) - 1:
            raise HyperError(f"{name}: expected {len(schedulers) - 1} milestones (one fewer "
                             f"than the schedules), got {len(milestones)}")
        for m in milestones:
            if not isinstance(m, numbers.Integral) or isinstance(m, bool) or m < 0:
                raise HyperTypeError(f"{name}: milestones must be integers >= 0, got {m!r}")
        if milestones != sorted(milestones):
            raise HyperError(f"{name}: milestones must be in increasing order, got "
                             f"{milestones}")
        if last_epoch != -1:
            raise HyperError(f"{name}: last_epoch is not supported; restore a SequentialLR "
                             "with load_state_dict()")
        self._schedulers = list(schedulers)
        self.milestones = [int(m) for m in milestones]
        self._bind(optimizer)
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base
        self._reset()
        self._initial()

    def _active(self, epoch: int) -> int:
        return bisect.bisect_right(self.milestones, epoch)

    def _needs_metric_now(self) -> bool:
        epoch = self.last_epoch + 1
        if epoch in self.milestones:
            return False  # a schedule starting over reads no metric at its epoch 0
        return self._schedulers[self._active(epoch)]._needs_metric_now()

    def _initial(self) -> None:
        self.last_epoch = 0
        self._schedulers[self._active(0)]._initial()
        self._last_lr = self._current_lrs()

    def _advance(self, metric: float | None) -> None:
        self.last_epoch += 1
        idx = self._active(self.last_epoch)
        child = self._schedulers[idx]
        if idx > 0 and self.milestones[idx - 1] == self.last_epoch:
            child._restart()
        else:
            child._advance(metric if child.needs_metric else None)
        child._last_lr = child._current_lrs()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["milestones"] = list(self.milestones)
        return out

    def _parse_state(self, sd: dict[str, Any]) -> dict[str, Any]:
        parsed = super()._parse_state(sd)
        if list(sd.get("milestones", self.milestones)) != self.milestones:
            raise StateDictError(f"SequentialLR.load_state_dict: saved with milestones "
                                 f"{list(sd['milestones'])}, this one has {self.milestones}")
        return parsed


class ChainedScheduler(_Composite):
    """Step every schedule in ``schedulers`` in order each step, as torch's
    ChainedScheduler: with recursive schedules (all of the stdlib's but the closed-form
    ones) their factors multiply. ReduceLROnPlateau may take part (``step(metric)``)."""

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer: Any = None):
        if len(schedulers) < 1:
            raise HyperError("ChainedScheduler expects at least one schedule")
        if optimizer is None:
            optimizer = getattr(schedulers[0], "optimizer", None)
        self._check_children(schedulers, optimizer)
        self._schedulers = list(schedulers)
        self._bind(optimizer)
        self.last_epoch = 0  # the children applied their construction steps already

    def _initial(self) -> None:
        self.last_epoch = 0
        for s in self._schedulers:
            s._initial()
        self._last_lr = self._current_lrs()

    def _advance(self, metric: float | None) -> None:
        self.last_epoch += 1
        for s in self._schedulers:
            s._advance(metric if s.needs_metric else None)
            s._last_lr = s._current_lrs()


# --- the stdlib ------------------------------------------------------------------------

_stdlib = StdlibModule(__name__, "schedule", STDLIB)
load = _stdlib.load


def preview(schedule: str | type, steps: int, *, lr: float = 0.1, momentum: float = 0.9,
            metrics: Sequence[float] | None = None, **hypers: Any) -> dict[str, np.ndarray]:
    """The lr (and momentum) a schedule produces over ``steps`` steps, without an
    optimizer: ``preview("OneCycleLR", 100, max_lr=1.0, total_steps=100)``.

    ``schedule`` is a stdlib name, a ``.opt`` path or a compiled schedule class. Returns
    ``{"lr": values, "momentum": values}`` (1-D arrays of length ``steps``)."""
    cls = _schedule_class(schedule)
    stub = _GroupsOnly([{"lr": float(lr), "momentum": float(momentum)}])
    sched = cls(stub, **hypers)
    return {key: sched.preview(steps, metrics=metrics, key=key)[:, 0]
            for key in ("lr", "momentum")}


def _schedule_class(schedule: str | type) -> type:
    if isinstance(schedule, type):
        return schedule
    if schedule in STDLIB:
        return load(schedule)
    if isinstance(schedule, str) and "\n" not in schedule and not schedule.endswith(".opt"):
        known = ", ".join(STDLIB)
        raise KeyError(f"no stdlib schedule {schedule!r} (and not a .opt path); available: "
                       f"{known}")
    from .api import compile as compile_spec

    cls = compile_spec(schedule)
    if not issubclass(cls, Schedule):
        raise HyperTypeError(f"{schedule!r} is an optimizer, not a schedule")
    return cls


def __getattr__(name: str) -> type[Schedule]:
    return _stdlib.getattr(globals(), name)
