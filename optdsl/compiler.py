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
from dataclasses import dataclass, field, replace
from functools import cached_property
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
from .stages import ReduceStage, split


def compile_kernel(spec: CompiledSpec, path: DecisionPath, backend: Backend,
                   extras: Extras = ()) -> Kernel:
    """One specialisation of a spec as a runnable kernel (cached in memory and on disk),
    writing the extra outputs ``extras`` (normalised; see :mod:`optdsl.extras`) too. A
    spec with reductions gets its reduce stages too, in ``Kernel.stages``
    (:mod:`optdsl.stages`)."""
    # Extras join the key only when there are some: a plain kernel keeps its old key.
    key = (spec.spec_hash, backend.name, repr(path), *([repr(extras)] if extras else []))
    k = cache.key(*key)
    stages: tuple[ReduceStage, ...] = ()
    factored = None
    if spec.staged:
        stages, final, factored = split(lower_with_extras(spec.checked, path, extras))

        def render() -> str:
            return backend.render(passes.run(final), kind=spec.kind, path=path)
    else:
        def render() -> str:
            program = lower_with_extras(spec.checked, path, extras)  # AST + decisions -> IR
            program = passes.run(program)              # fold, CSE, hoist, DCE, buffer reuse
            return backend.render(program, kind=spec.kind, path=path)  # IR -> source
    source = cache.get_or_create(k, render)       # rendered once per machine
    kernel = backend.build(source, f"{spec.name}_{k[:8]}")  # source -> callable
    if stages:  # the reduce stages' kernels, rendered and built the same way
        kernel = replace(kernel, stages=_build_stages(spec, stages, backend, path, key))
    if factored is not None:
        kernel = replace(kernel, factored=factored)
    return kernel


def _build_stages(spec: CompiledSpec, stages: tuple[ReduceStage, ...], backend: Backend,
                  path: DecisionPath, key: tuple) -> tuple[ReduceStage, ...]:
    built = []
    for i, stage in enumerate(stages):
        if stage.program is None:  # it reduces buffers as loaded: no kernel
            built.append(stage)
            continue
        k = cache.key(*key, f"reduce stage {i}")
        source = cache.get_or_create(k, lambda st=stage: backend.render(
            passes.run(st.program), kind=spec.kind, path=path))
        built.append(replace(stage, kernel=backend.build(source, f"{spec.name}_{k[:8]}")))
    return tuple(built)


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

    @cached_property
    def reduces(self) -> bool:
        """Whether the update block uses a per-tensor reduction (see optdsl.stages)."""
        return _uses_reductions(self.checked.spec.body)

    @cached_property
    def staged(self) -> bool:
        """Whether a step splits into passes (optdsl.stages): reductions, or row and column
        values (factored states)."""
        return self.reduces or bool(self.checked.spec.factored)

    @cached_property
    def uses_factored(self) -> bool:
        """Whether the rule reads ``factored``, which is decided per parameter."""
        from . import syntax as S

        return "factored" in _names_read(self.checked.spec) or any(
            isinstance(n, S.Name) and n.id == "factored"
            for s in self.checked.spec.states if s.cond is not None
            for n in S.walk_expr(s.cond))

    @cached_property
    def per_parameter(self) -> bool:
        """Whether steps need per-parameter host values: reductions, scalar or factored
        states, ``factored`` or ``dtype_eps``. Such a spec steps parameter by parameter
        (each with its own scalar arguments)."""
        spec = self.checked.spec
        return self.staged or bool(spec.scalars) or self.uses_factored \
            or "dtype_eps" in _names_read(spec)

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
        """The optimised program of the update kernel of ``path`` (for a spec with
        reductions, the update after its reduce stages: see :mod:`optdsl.stages`)."""
        lowered = self.unoptimized(path, extras)
        if self.staged:
            lowered = split(lowered)[1]
        return passes.run(lowered, skip=skip)

    def unoptimized(self, path: DecisionPath, extras: Extras | str = ()) -> Program:
        return lower_with_extras(self.checked, path, normalize(extras))

    def paths(self) -> list[DecisionPath]:
        return paths(self.checked.spec)


def _names_read(spec) -> set[str]:
    from .hostcode import _names_in

    return _names_in(spec.body)


def _uses_reductions(stmts) -> bool:
    from . import syntax as S
    from .ir import FACTORED, REDUCTIONS

    for stmt in stmts:
        if isinstance(stmt, S.If):
            if any(_uses_reductions(body) for _, body in stmt.branches) \
                    or _uses_reductions(stmt.orelse or ()):
                return True
            continue
        if any(isinstance(n, S.Call) and (n.func in REDUCTIONS or n.func in FACTORED)
               for n in S.walk_expr(stmt.value)):
            return True
    return False


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
