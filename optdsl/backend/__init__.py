"""Backends: a small interface and a registry by name (``optdsl.backends()`` lists them).

A backend turns a hoisted, buffer-assigned :class:`~optdsl.ir.Program` into source text
(``render``) and that text into a runnable :class:`Kernel` (``build``). ``accepts`` tells
the runtime whether the backend can run on a given array (its device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..errors import OptdslError


@dataclass(frozen=True)
class Kernel:
    """A built kernel: scalar prologue, fused body, and what it touches.

    ``buffers`` (all it reads or writes, in call order) and ``outputs`` (what it writes)
    name p, g and states, and the extra outputs of a kernel built with extras
    (``track:NAME``, ``diag:update``, ``dlr:HYPER``; see :mod:`optdsl.extras`), which are
    only written."""

    source: str
    host_args: Callable[[dict, int], tuple]
    run: Callable[..., None]
    buffers: tuple[str, ...]
    outputs: tuple[str, ...]
    scratch: tuple[int, int]
    # What building and first calls cost, for benchmarks; a backend may leave it empty.
    # The numba backend: {"compile_seconds": {dtype.str: seconds}, "cache_hit": bool}.
    stats: dict = field(default_factory=dict, compare=False)
    # Backends that can step many separate tensors in one launch set ``many``:
    # ``many(tensors)``, given each tensor's 1-D buffers in ``buffers`` order, returns a
    # launcher ``launch(args)`` to call every step while those buffers stay the same.
    many: Callable[[list], Callable[[tuple], None]] | None = field(default=None,
                                                                   compare=False)
    # Specs with scalar states: ``host_step(h, t)``, ``host_args``'s arguments and the
    # scalar states' new values (a dict), from one run of the prologue.
    host_step: Callable[[dict, int], tuple[tuple, dict]] | None = field(default=None,
                                                                        compare=False)
    # Specs with reductions: the reduce stages that run before this kernel, each an
    # ``optdsl.stages.ReduceStage`` with its own kernel (see optdsl.stages).
    stages: tuple = field(default=(), compare=False)
    # Specs with row and column values: their ``optdsl.stages.FactoredProgram``.
    factored: Any = field(default=None, compare=False)


class Backend:
    name: str = ""
    # "cpu": runs NumPy arrays in host memory; "cuda": runs CuPy arrays on a GPU.
    device_kind: str = "cpu"
    priority: int = 0  # higher wins when backend=None and several accept the arrays
    # True: ``kernel.run`` spreads the work over threads itself, so the runtime calls it
    # once over the whole buffer, ``run(n, *buffers, args, None, 0, 0, n)``, instead of
    # through the thread pool (``pool.run``) with per-worker scratch and chunks.
    parallel: bool = False

    def available(self) -> bool:
        raise NotImplementedError

    def accepts(self, array: Any) -> bool:
        raise NotImplementedError

    def device(self, array: Any) -> Any:
        """Where ``array`` lives, for telling devices apart within a group (None: the
        host's memory)."""
        return None

    def math_dtype(self, dtype: Any) -> Any:
        """The dtype the kernels compute in, and take scalar arguments in, for buffers
        of ``dtype`` (the storage type itself, unless the backend widens it)."""
        import numpy as np

        return np.dtype(dtype)

    def reduce(self, kind: str, x: Any) -> float:
        """A per-tensor reduction (``sum``, ``sumsq`` or ``maxabs``) of the 1-D buffer
        ``x``, accumulated in float64 (see :mod:`optdsl.stages`)."""
        from ..stages import reduce_values

        return reduce_values(kind, x)

    def render(self, program, *, kind: str, path: tuple[int, ...]) -> str:
        raise NotImplementedError

    def build(self, source: str, name: str) -> Kernel:
        raise NotImplementedError


@cache
def template(name: str):
    """The Jinja2 template ``codegen/NAME`` with the filters every backend's uses: ``ident``
    (a validated identifier with a prefix), ``quoted`` (one as a string literal), and
    ``buffer`` and ``quoted_buffer``, the same for buffer names, which may be extra
    outputs' ``KIND:NAME`` (see :func:`optdsl.render.buffer_ident`)."""
    import jinja2

    from .._resources import data_dir
    from ..render import buffer_ident, ident, quoted_buffer, quoted_code, quoted_ident

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("codegen"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["ident"] = lambda name, prefix="v_": ident(name, prefix)
    env.filters["quoted"] = quoted_ident
    env.filters["buffer"] = buffer_ident
    env.filters["quoted_buffer"] = quoted_buffer
    env.filters["quoted_text"] = quoted_code
    return env.get_template(name)


class ScalarCode:
    """What the backends that render an element's update as scalar code (numba, cupy)
    share: operand names (``xN`` for the IR's elementwise value %N, ``aN`` for the
    kernel's N-th scalar argument, constants as ``constant(value)`` renders them) and the
    walk over the body, each source line's group of ops headed by ``comment(line)``."""

    def __init__(self, program, constant: Callable[[Any], str]):
        self.program = program
        self.consts = {i.out.id: i.attr for i in program.host if i.op == "const"}
        self.args = {v.id: f"a{k}" for k, v in enumerate(program.kernel_args)}
        self.constant = constant

    def operand(self, v) -> str:
        if v.type.is_tensor:
            return f"x{v.id}"
        if v.id in self.consts:
            return self.constant(self.consts[v.id])
        return self.args[v.id]

    def body(self, comment: Callable[[int], str], load: Callable[[Any], list[str]],
             op: Callable[[Any], list[str]]) -> list[str]:
        lines, last = [], None
        for ins in self.program.body:
            if ins.span is not None and ins.span.line != last:
                lines.append(comment(ins.span.line))  # heads its group of ops
                last = ins.span.line
            lines.extend(load(ins) if ins.op == "load" else op(ins))
        return lines


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def get(name: str) -> Backend:
    if name not in _REGISTRY:
        raise OptdslError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}")
    backend = _REGISTRY[name]
    if not backend.available():
        raise OptdslError(f"backend {name!r} is not available here; available: "
                          f"{', '.join(available())}")
    return backend


def available(device_kind: str | None = None) -> list[str]:
    """Names of the backends usable on this machine, best first; only those for
    ``device_kind`` ("cpu" or "cuda") if given."""
    ready = [b for b in _REGISTRY.values() if b.available()
             and (device_kind is None or b.device_kind == device_kind)]
    return [b.name for b in sorted(ready, key=lambda b: -b.priority)]


def pick(array: Any) -> Backend:
    """The best available backend for arrays like ``array``."""
    for name in available():
        if _REGISTRY[name].accepts(array):
            return _REGISTRY[name]
    raise OptdslError(f"no available backend accepts arrays of type {type(array).__name__}")


# numpy registers first (the baseline, always there: error messages list it first); numba
# only where it is installed, and numba itself is imported only when first used.
from . import numpy_backend  # noqa: E402,F401,I001
from . import numba_backend  # noqa: E402,F401
from . import cupy_backend  # noqa: E402,F401
