"""The standard library of optimizers, compiled from ``stdlib/*.opt`` on first use.

``from optdsl.optim import Adam`` compiles ``stdlib/adam.opt`` (milliseconds, cached) and
returns the class. Each class takes torch.optim's constructor keywords and defaults.
"""

from __future__ import annotations

from functools import cache

from ._resources import data_dir
from .api import make_class
from .compiler import load_spec
from .runtime import Optimizer

STDLIB = {
    "SGD": "sgd.opt", "Adam": "adam.opt", "AdamW": "adamw.opt", "RMSprop": "rmsprop.opt",
    "Adagrad": "adagrad.opt", "Adadelta": "adadelta.opt",
}

__all__ = list(STDLIB) + ["load", "STDLIB"]


@cache
def load(name: str) -> type[Optimizer]:
    """The stdlib optimizer class ``name`` (e.g. ``"Adam"``)."""
    if name not in STDLIB:
        raise KeyError(f"no stdlib optimizer {name!r}; available: {', '.join(STDLIB)}")
    path = data_dir("stdlib") / STDLIB[name]
    return make_class(load_spec(path.read_text(), f"stdlib/{STDLIB[name]}"),
                      module="optdsl.optim")


def __getattr__(name: str) -> type[Optimizer]:
    if name in STDLIB:
        cls = load(name)
        globals()[name] = cls
        return cls
    raise AttributeError(f"module 'optdsl.optim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(STDLIB))
