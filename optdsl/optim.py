"""The standard library of optimizers, compiled from ``stdlib/*.opt`` on first use.

``from optdsl.optim import Adam`` compiles ``stdlib/adam.opt`` (milliseconds, cached) and
returns the class. Each class takes torch.optim's constructor keywords and defaults.
"""

from __future__ import annotations

from .api import StdlibModule

STDLIB = {
    "SGD": "sgd.opt", "Adam": "adam.opt", "AdamW": "adamw.opt", "RMSprop": "rmsprop.opt",
    "Adagrad": "adagrad.opt", "Adadelta": "adadelta.opt",
}

__all__ = list(STDLIB) + ["load", "STDLIB"]

_stdlib = StdlibModule(__name__, "optimizer", STDLIB)
load = _stdlib.load


def __getattr__(name: str) -> type:
    return _stdlib.getattr(globals(), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(STDLIB))
