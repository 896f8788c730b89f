"""The compiler driver: spec text -> checked spec -> one kernel per path, cached.

    parse  (frontend)  text -> AST
    check  (checker)   AST -> checked AST + hyper table
    lower  (lower)     checked AST + host decisions (+ extra outputs) -> SSA IR
    passes (passes)    IR -> folded, CSE'd, hoisted, buffer-assigned IR
    render (backend)   IR -> kernel source (a Jinja2 template per backend)
    build  (backend)   source -> callable
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cache, passes
from .backend import Backend, Kernel
from .checker import CheckedSpec, check
from .extras import Extras, lower_with_extras, normalize
from .frontend import parse
from .hostcode import render_host_module
from .ir import Program
from .lower import Path as DecisionPath
from .lower import paths
from .ops import text as _text


def compile_kernel(spec: CompiledSpec, path: DecisionPath, backend: Backend,
                   extras: Extras = ()) -> Kernel:
    """One specialisation of a spec as a runnable kernel (cached in memory and on disk),
    writing the extra outputs ``extras`` (normalised; see :mod:`optdsl.extras`) too."""
    def render() -> str:
        program = lower_with_extras(spec.checked, path, extras)  # AST + decisions -> SSA IR
        program = passes.run(program)              # fold, CSE, hoist, DCE, buffer reuse
        return backend.render(program, kind=spec.kind, path=path)  # IR -> source
    # Extras join the key only when there are some: a plain kernel keeps its old key.
    k = cache.key(spec.spec_hash, backend.name, repr(path), *([repr(extras)] if extras else []))
    source = cache.get_or_create(k, render)       # rendered once per machine
    return backend.build(source, f"{spec.name}_{k[:8]}")  # source -> callable


def load_spec(text: str, filename: str = "<string>") -> CompiledSpec:
    """Parse and check a spec, and build its host functions."""
    checked = check(parse(text, filename))         # text -> AST -> checked AST
    return CompiledSpec(checked, text, filename)


@dataclass
class CompiledSpec:
    """A checked spec with its generated host code and a cache of kernels per path."""

    checked: CheckedSpec
    text: str
    filename: str
    kernels: dict[tuple[str, DecisionPath, Extras], Kernel] = field(default_factory=dict,
                                                                    repr=False)

    def __post_init__(self):
        self.spec_hash = hashlib.sha256(self.text.encode()).hexdigest()
        if self.kind == "schedule":
            from .schedcode import render_schedule_module

            self.host_source = render_schedule_module(self.checked)
        else:
            self.host_source = render_host_module(self.checked)
        self.host = _exec_host(self.host_source, self.name)

    @property
    def name(self) -> str:
        return self.checked.spec.name

    @property
    def kind(self) -> str:
        return self.checked.spec.kind

    @property
    def spec(self):
        return self.checked.spec

    @property
    def hypers(self):
        return self.checked.hypers

    def kernel(self, backend: Backend, path: DecisionPath,
               extras: Extras | str = ()) -> Kernel:
        """The kernel of ``path``; ``extras`` asks for diagnostic outputs besides p and
        the states (``"track"``, ``"update"``, ``"dlr:lr"``: see :mod:`optdsl.extras`)."""
        extras = normalize(extras)
        k = (backend.name, path, extras)
        if k not in self.kernels:
            self.kernels[k] = compile_kernel(self, path, backend, extras)
        return self.kernels[k]

    def program(self, path: DecisionPath, skip: tuple[str, ...] = (),
                extras: Extras | str = ()) -> Program:
        return passes.run(self.unoptimized(path, extras), skip=skip)

    def unoptimized(self, path: DecisionPath, extras: Extras | str = ()) -> Program:
        return lower_with_extras(self.checked, path, normalize(extras))

    def paths(self) -> list[DecisionPath]:
        return paths(self.checked.spec)


def _truth(value: Any) -> bool:
    if isinstance(value, str):
        raise TypeError("a string is not a condition")
    return bool(value)


def _exec_host(source: str, name: str) -> dict[str, Any]:
    import numpy as np

    from . import ops

    namespace: dict[str, Any] = {
        "__name__": f"optdsl.generated.{name}_host", "_np": np, "_ops": ops,
        "_f": np.float64, "_truth": _truth, "_text": _text,
        "_INF": float("inf"), "_NAN": float("nan"),
    }
    exec(compile(source, f"<optdsl {name} host>", "exec"), namespace)  # noqa: S102
    return quiet_functions(namespace)


def quiet_functions(namespace: dict[str, Any]) -> dict[str, Any]:
    """Wrap the generated functions in a namespace with :func:`optdsl.ops.quiet`."""
    from .ops import quiet

    for key, value in list(namespace.items()):
        if callable(value) and getattr(value, "__module__", None) == namespace["__name__"]:
            namespace[key] = quiet(value)
    return namespace


def read_source(path_or_source: str | Path) -> tuple[str, str]:
    """(text, filename) from a path or from spec text itself."""
    if isinstance(path_or_source, Path):
        return path_or_source.read_text(), str(path_or_source)
    text = str(path_or_source)
    if "\n" not in text and (text.endswith(".opt") or _is_file(text)):
        return Path(text).read_text(), text
    return text, "<string>"


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # e.g. a one-line spec longer than a file name may be (ENAMETOOLONG)
        return False
