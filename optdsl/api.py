"""User entry points: ``optdsl.compile`` and the class it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .compiler import CompiledSpec, load_spec, read_source
from .hypers import HyperInfo
from .runtime import Optimizer

_CLASSES: dict[tuple[str, str, str | None], type[Optimizer]] = {}


def compile(path_or_source: str | Path, *, module: str | None = None) -> type:
    """Compile a ``.opt`` file (a path, or the spec text itself) into an optimizer class
    (or, for a ``schedule`` file, a schedule class).

    The class is cached: compiling the same text again costs a dictionary lookup.
    Raises :class:`optdsl.ParseError` or :class:`optdsl.CheckError` with the file, line,
    column, a caret and a hint for any mistake in the spec.
    """
    text, filename = read_source(path_or_source)
    key = (text, filename, module)
    if key not in _CLASSES:
        _CLASSES[key] = make_class(load_spec(text, filename), module=module)
    return _CLASSES[key]


def make_class(spec: CompiledSpec, module: str | None = None) -> type:
    """The optimizer (or schedule) class for a compiled spec."""
    attrs: dict[str, Any] = {"_spec": spec, "__doc__": _docstring(spec),
                             "__module__": module or "optdsl.generated"}
    if spec.kind == "schedule":
        from .schedules import Schedule

        return type(spec.name, (Schedule,), attrs)
    return type(spec.name, (Optimizer,), attrs)


def _docstring(spec: CompiledSpec) -> str:
    lines = [spec.spec.doc or f"The {spec.name} {spec.kind}.", "", "Hyperparameters:"]
    lines += [f"    {info.describe()}" for info in spec.hypers.values()]
    if spec.spec.states:
        per = "per parameter" if spec.kind == "optimizer" else "per param group"
        lines += ["", f"State ({per}):"]
        for s in spec.spec.states:
            lines.append(f"    {s.name}" + (" (conditional)" if s.cond is not None else ""))
    if spec.spec.scalars:
        lines += ["", "Scalar state (one number per parameter):"]
        lines += [f"    {s.name}" for s in spec.spec.scalars]
    if spec.spec.factored:
        lines += ["", "Factored state (of parameters with 2 or more dimensions):"]
        lines += [f"    {s.name} ({s.kind})" for s in spec.spec.factored]
    for req in spec.spec.requires:
        lines.append(f"Requires: {req.message}")
    if spec.kind == "optimizer":
        lines += ["", f"Compiled by optdsl from {spec.filename}; see .source('numpy') for "
                      "the kernel."]
    else:
        lines += ["", f"Compiled by optdsl from {spec.filename}."]
    return "\n".join(lines)


def state_bytes_per_param(spec: CompiledSpec, itemsize: int = 4, *, factored: bool = False,
                          **hypers: Any) -> int:
    """Bytes of elementwise state per parameter element under the given (default) hypers,
    of a parameter with fewer than 2 dimensions (``factored``: with 2 or more). Scalar
    states are :func:`scalar_state_bytes`, row and column states
    :func:`factored_state_bytes`."""
    from .hypers import resolve

    values = resolve(spec.hypers, hypers, spec.name)
    enabled = spec.host["state_enabled"]({**values, "factored": factored})
    return itemsize * sum(1 for v in enabled.values() if v)


def factored_state_bytes(spec: CompiledSpec, shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Bytes of row and column state of a parameter of ``shape`` (2 or more dimensions):
    Adafactor's row_var and col_var hold 4 (R + C) bytes for an R x C float32 matrix."""
    from .runtime import factored_shape

    return itemsize * sum(int(np.prod(factored_shape(d.kind, shape)))
                          for d in spec.spec.factored)


def scalar_state_bytes(spec: CompiledSpec) -> int:
    """Bytes of scalar state per parameter tensor: a float64 for each scalar state."""
    return 8 * len(spec.spec.scalars)


__all__ = ["compile", "make_class", "HyperInfo", "state_bytes_per_param", "scalar_state_bytes",
           "factored_state_bytes"]


class StdlibModule:
    """What ``optdsl.optim`` and ``optdsl.schedules`` share: classes compiled on first use
    from files under ``stdlib/``, available as module attributes."""

    def __init__(self, module: str, kind: str, files: dict[str, str]):
        self.module, self.kind, self.files = module, kind, files

    def load(self, name: str) -> type:
        """The stdlib class ``name`` ("Adam", "StepLR"), compiled on first use; KeyError
        naming the available ones for another name."""
        if name not in self.files:
            raise KeyError(f"no stdlib {self.kind} {name!r}; available: "
                           f"{', '.join(self.files)}")
        if name not in _STDLIB_CLASSES:
            from ._resources import data_dir
            from .compiler import load_spec

            path = data_dir("stdlib") / self.files[name]
            spec = load_spec(path.read_text(), f"stdlib/{self.files[name]}")
            _STDLIB_CLASSES[name] = make_class(spec, module=self.module)
        return _STDLIB_CLASSES[name]

    def getattr(self, namespace: dict[str, Any], name: str) -> type:
        if name in self.files:
            namespace[name] = self.load(name)
            return namespace[name]
        raise AttributeError(f"module {self.module!r} has no attribute {name!r}")


_STDLIB_CLASSES: dict[str, type] = {}
