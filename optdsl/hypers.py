"""Hyperparameters: what a spec declares about each, and checking values against it.

The spec declares types and ranges (``hyper lr = 1e-3 in [0, inf)``); this module is what
enforces them at construction and whenever ``param_groups`` change, so no optimizer has
hand-written validation.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import HyperError, HyperTypeError
from .ir import HOST_BOOL, HOST_FLOAT, HOST_STR, Type, tuple_type

REQUIRED = object()


@dataclass(frozen=True)
class HyperInfo:
    name: str
    type: str  # "float" | "int" | "bool" | "str" | "tuple"
    default: Any = REQUIRED  # a Python value, or REQUIRED
    n: int = 0  # tuple length; -1 for a tuple of any length
    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True
    choices: tuple[str, ...] | None = None

    @property
    def ir_type(self) -> Type:
        return {"float": HOST_FLOAT, "int": HOST_FLOAT, "bool": HOST_BOOL,
                "str": HOST_STR}.get(self.type) or tuple_type(self.n)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_range(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.lo is None:
            return ""
        left = "[" if self.lo_closed else "("
        right = "]" if self.hi_closed else ")"
        return f"in {left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"

    def describe(self) -> str:
        """``lr: float = 0.001 in [0, inf)`` for docs, ``optdsl list`` and errors."""
        shown = self.type
        if self.type == "tuple":
            shown = f"tuple[{self.n}]" if self.n >= 0 else "tuple"
        text = f"{self.name}: {shown}"
        text += " (required)" if self.required else f" = {self.default!r}"
        rng = self.describe_range()
        return f"{text} {rng}" if rng else text


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(int(x)) if float(x).is_integer() else repr(x)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, np.generic):
        return isinstance(value, (np.integer, np.floating))
    return isinstance(value, (int, float))


def coerce(info: HyperInfo, value: Any, owner: str = "") -> Any:
    """Check ``value`` against ``info`` and return it in canonical form, or raise HyperError."""
    where = f"{owner}: " if owner else ""
    name = info.name
    if info.type in ("float", "int"):
        if not _is_number(value):
            raise HyperTypeError(f"{where}{name} must be a number, got {value!r}")
        number = _as_float(value, f"{where}invalid {name}: {value!r}")
        if info.type == "int" and not number.is_integer():  # also rejects inf and nan
            raise HyperTypeError(f"{where}{name} must be a whole number, got {value!r}")
        value = int(value) if info.type == "int" else number
        _check_range(info, value, f"{where}invalid {name}: {value!r}")
        return value
    if info.type == "bool":
        # np.bool_ is not a bool subclass (and is named 'bool' in NumPy 2, 'bool_' before).
        if not isinstance(value, (bool, np.bool_)):
            raise HyperTypeError(f"{where}{name} must be True or False, got {value!r}")
        return bool(value)
    if info.type == "str":
        if not isinstance(value, str):
            raise HyperTypeError(f"{where}{name} must be a string, got {value!r}")
        if info.choices is not None and value not in info.choices:
            raise HyperError(f"{where}invalid {name}: {value!r}; expected "
                             f"{info.describe_range()}")
        return value
    # tuple
    length_ok = info.n < 0 or (isinstance(value, (tuple, list)) and len(value) == info.n)
    if not isinstance(value, (tuple, list)) or not length_ok or not all(
            _is_number(v) for v in value):
        what = f"a tuple of {info.n} numbers" if info.n >= 0 else "a tuple (or list) of numbers"
        raise HyperTypeError(f"{where}{name} must be {what}, got {value!r}")
    value = tuple(_as_float(v, f"{where}invalid {name}: {value!r}") for v in value)
    for i, v in enumerate(value):
        _check_range(info, v, f"{where}invalid {name}[{i}]: {v!r}")
    return value


def _as_float(value: Any, message: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise HyperError(f"{message}; too large") from None


def _check_range(info: HyperInfo, value: float, message: str) -> None:
    if math.isnan(value):  # never meaningful, with or without a declared range
        raise HyperError(f"{message}; expected a number, not nan")
    if info.lo is None:
        return
    ok = (value >= info.lo if info.lo_closed else value > info.lo) and (
        value <= info.hi if info.hi_closed else value < info.hi)
    if not ok or math.isnan(value):
        raise HyperError(f"{message}; expected {info.describe_range()}")


def resolve(infos: dict[str, HyperInfo], given: dict[str, Any], owner: str,
            defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full, validated hyper values from keywords; unknown or missing keywords raise."""
    for key in given:
        if key not in infos:
            close = difflib.get_close_matches(key, list(infos), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise HyperTypeError(f"{owner}: unknown keyword {key!r}{hint} "
                                 f"(accepted: {', '.join(infos)})")
    out = {}
    for name, info in infos.items():
        if name in given:
            value = given[name]
        elif defaults is not None and name in defaults:
            value = defaults[name]
        elif info.required:
            raise HyperTypeError(f"{owner}: missing required keyword {name!r}")
        else:
            value = info.default
        out[name] = coerce(info, value, owner)
    return out
