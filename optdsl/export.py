"""``optdsl compile FILE -o module.py``: a spec as one importable, self-contained module.

The module holds the host functions and the kernel of every path, rendered exactly as
the in-memory compiler renders them, plus the spec's hyper table as data. Importing it
calls :func:`build_class`, which rebuilds the optimizer class without parsing anything.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace
from typing import Any

import jinja2

from ._resources import data_dir
from .backend import Backend, Kernel
from .backend import get as get_backend
from .compiler import CompiledSpec
from .errors import OptdslError
from .extras import normalize as normalize_extras
from .hypers import HyperInfo
from .ops import quiet
from .render import constant, hex_string, ident, number, quoted_ident

MAX_PATHS = 256


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("codegen"))),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
        lstrip_blocks=True, autoescape=False)
    env.filters["quoted"] = quoted_ident
    env.filters["hexstr"] = hex_string
    return env.get_template("module.py.j2")


def _hyper_literal(info: HyperInfo) -> str:
    from .hypers import REQUIRED

    default = "None" if info.default is REQUIRED else constant(info.default)
    bound = lambda x: "None" if x is None else number(x)  # noqa: E731
    choices = "None" if info.choices is None else constant(tuple(info.choices))
    if info.type not in ("float", "int", "bool", "str", "tuple"):
        raise OptdslError(f"bad hyper type {info.type!r}")
    return (f"_H({quoted_ident(info.name)}, {info.type!r}, {default}, {int(info.n)}, "
            f"{bound(info.lo)}, {bound(info.hi)}, {bool(info.lo_closed)}, "
            f"{bool(info.hi_closed)}, {choices}, {info.default is REQUIRED})")


def render_module(spec: CompiledSpec, backend: str = "numpy") -> str:
    """The text of a self-contained module for ``spec`` on ``backend``."""
    from . import __version__

    chosen = get_backend(backend)
    if chosen.name != "numpy":
        raise OptdslError(f"a compiled module holds numpy kernels; the {chosen.name!r} "
                          "backend compiles its own at run time (leave out --backend)")
    if spec.per_parameter:
        raise OptdslError(f"{spec.name} uses per-tensor reductions or scalar states, which "
                          "a compiled module cannot hold yet (it has no reduce stages); "
                          "import the .opt file with optdsl.compile instead")
    all_paths = spec.paths()
    if len(all_paths) > MAX_PATHS:
        raise OptdslError(f"{spec.name} has {len(all_paths)} specialisations; a module "
                          f"holds at most {MAX_PATHS}")
    kernels = []
    for path in all_paths:
        source = spec.kernel(chosen, path).source
        body = _strip_preamble(source)
        kernels.append({
            "suffix": "_".join(map(str, path)) or "only",
            "path": "(" + "".join(f"{int(i)}, " for i in path) + ")",
            "source": "\n".join(("    " + line) if line.strip() else ""
                                for line in body.splitlines()),
        })
    return _template().render(
        version=__version__, kind=spec.kind, name=ident(spec.name, ""), backend=chosen.name,
        spec_hash=spec.spec_hash, hypers=[_hyper_literal(h) for h in spec.hypers.values()],
        states=[s.name for s in spec.spec.states],
        conditional=[s.name for s in spec.spec.states if s.cond is not None],
        requires=[constant(r.message) for r in spec.spec.requires],
        doc=constant(spec.spec.doc), host=spec.host_source, kernels=kernels)


_PREAMBLE_END = re.compile(r"^_NAN = .*$", re.MULTILINE)


def _strip_preamble(source: str) -> str:
    """A kernel module without its imports and shared constants (the module has them)."""
    m = _PREAMBLE_END.search(source)
    return source[m.end():].strip("\n") if m else source


@dataclass
class ExportedSpec:
    """What the runtime needs of a spec, rebuilt from an exported module's data."""

    name: str
    kind: str
    hypers: dict[str, HyperInfo]
    spec: Any
    host: dict[str, Any]
    backend: str
    factories: dict[tuple[int, ...], Any]
    spec_hash: str
    filename: str = ""
    text: str = ""
    kernels: dict[tuple[str, tuple[int, ...], tuple[str, ...]], Kernel] = field(
        default_factory=dict)

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends this module has kernels for (the runtime picks among them)."""
        return (self.backend,)

    # A module holds no spec with reductions or scalar states (render_module refuses one).
    reduces = False
    staged = False
    uses_factored = False
    per_parameter = False

    def kernel(self, backend: Backend, path: tuple[int, ...], extras=()) -> Kernel:
        if backend.name != self.backend:
            raise OptdslError(f"this module was compiled for the {self.backend!r} backend, "
                              f"not {backend.name!r}")
        if normalize_extras(extras):
            raise OptdslError("a compiled module holds kernels without extra outputs "
                              "(tracks, update, dlr:); compile the .opt file to get them")
        key = (backend.name, path, ())
        if key not in self.kernels:
            factory = self.factories[path]
            host_args, run, buffers, outputs, scratch = factory()
            host_args = quiet(host_args)
            try:
                source = inspect.getsource(factory)
            except (OSError, TypeError):  # a module without a file on disk
                source = ""
            self.kernels[key] = Kernel(source, host_args, run, buffers, outputs, scratch)
        return self.kernels[key]


def hyper(name: str, type_: str, default: Any, n: int, lo: float | None, hi: float | None,
          lo_closed: bool, hi_closed: bool, choices: tuple[str, ...] | None,
          required: bool) -> HyperInfo:
    """A HyperInfo from an exported module's literal (``None`` default + required flag)."""
    from .hypers import REQUIRED

    return HyperInfo(name, type_, REQUIRED if required else default, n, lo, hi, lo_closed,
                     hi_closed, choices)


def build_class(name: str, kind: str, namespace: dict[str, Any]):
    """Called by a generated module: its optimizer class, from the module's globals."""
    from .api import make_class
    from .compiler import quiet_functions

    quiet_functions(namespace)

    hypers = {h.name: h for h in namespace["HYPERS"]}
    conditional = set(namespace["CONDITIONAL_STATES"])
    states = tuple(SimpleNamespace(name=s, cond=True if s in conditional else None)
                   for s in namespace["STATES"])
    requires = tuple(SimpleNamespace(message=m) for m in namespace["REQUIRE_MESSAGES"])
    spec = ExportedSpec(
        name, kind, hypers, SimpleNamespace(doc=namespace["DOC"], states=states,
                                            scalars=(), factored=(), requires=requires),
        namespace, "numpy", dict(namespace["KERNELS"]), namespace["SPEC_HASH"],
        filename=namespace.get("__file__") or name)
    return make_class(spec, module=namespace.get("__name__"))
