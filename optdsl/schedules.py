"""Learning-rate schedules compiled from ``.opt`` files, with torch's interface.

``StepLR(optimizer, step_size=30)`` applies itself once at construction (epoch 0), as
torch's schedulers do; each ``step()`` (or ``step(metric)``) advances the epoch and
writes the new values into every param group.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import hypers as H
from .api import StdlibModule
from .compiler import CompiledSpec
from .errors import HyperError, OptdslError, StateDictError

STDLIB = {"StepLR": "schedules/steplr.opt"}

__all__ = list(STDLIB) + ["Schedule", "load", "STDLIB"]


class Schedule:
    """Base class of every compiled schedule; subclasses carry a ``_spec``."""

    _spec: CompiledSpec

    def __init__(self, optimizer: Any, *, last_epoch: int = -1, **hypers: Any):
        name = type(self).__name__
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{name}: {type(optimizer).__name__} is not an optimizer")
        self.optimizer = optimizer
        self.hypers = H.resolve(self._spec.hypers, hypers, name)
        failing = self._spec.host["requires"](self.hypers)
        if failing >= 0:
            raise HyperError(f"{name}: {self._spec.spec.requires[failing].message}")
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{name}: param 'initial_lr' is not specified in "
                                   f"param_groups[{i}] when resuming an optimizer")
        self.base_lrs = [float(group["initial_lr"]) for group in groups]
        self.last_epoch = last_epoch
        self.state = [self._spec.host["schedule_init"](self.hypers) for _ in groups]
        self._last_lr: list[float] = [float(group["lr"]) for group in groups]
        if "metric" in self._spec.host["USED_BUILTINS"]:
            self.last_epoch += 1  # nothing to apply before the first metric, as in torch
        else:
            self.step()  # epoch 0, as torch's schedulers apply themselves on construction

    def step(self, metric: float | None = None) -> None:
        """Advance one epoch (or step) and write the new values into the param groups."""
        uses_metric = "metric" in self._spec.host["USED_BUILTINS"]
        if uses_metric and metric is None:
            raise OptdslError(f"{type(self).__name__}.step() needs the metric: "
                              "call step(metric)")
        value = math.nan if metric is None else float(metric)
        self.last_epoch += 1
        fn = self._spec.host["schedule_step"]
        with np.errstate(all="ignore"):
            for i, group in enumerate(self.optimizer.param_groups):
                updates, self.state[i] = fn(self.hypers, self.last_epoch, self.base_lrs[i],
                                            value, group, self.state[i])
                for key, new in updates.items():
                    group[key] = float(new)
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "_last_lr": list(self._last_lr), "hypers": dict(self.hypers),
                "state": [{k: float(v) for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = type(self).__name__
        try:
            last_epoch = int(state_dict["last_epoch"])
            base_lrs = [float(x) for x in state_dict["base_lrs"]]
            last_lr = [float(x) for x in state_dict["_last_lr"]]
            hypers = H.resolve(self._spec.hypers, dict(state_dict.get("hypers", {})), name,
                               defaults=self.hypers)
            state = [{k: np.float64(v) for k, v in s.items()}
                     for s in state_dict.get("state", [{} for _ in base_lrs])]
        except (KeyError, TypeError, ValueError, HyperError) as exc:
            raise StateDictError(f"{name}.load_state_dict: {exc}") from None
        groups = len(self.optimizer.param_groups)
        if not (len(base_lrs) == len(last_lr) == len(state) == groups):
            raise StateDictError(f"{name}.load_state_dict: saved for a different number of "
                                 f"param groups (optimizer has {groups})")
        names = {s.name for s in self._spec.spec.states}
        if any(set(s) != names for s in state):
            raise StateDictError(f"{name}.load_state_dict: schedule state names differ")
        self.last_epoch, self.base_lrs, self._last_lr = last_epoch, base_lrs, last_lr
        self.hypers, self.state = hypers, state


_stdlib = StdlibModule(__name__, "schedule", STDLIB)
load = _stdlib.load


def __getattr__(name: str) -> type[Schedule]:
    return _stdlib.getattr(globals(), name)
