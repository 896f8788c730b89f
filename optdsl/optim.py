"""The standard library of optimizers, compiled from ``stdlib/*.opt`` on first use.

``from optdsl.optim import Adam`` compiles ``stdlib/adam.opt`` (milliseconds, cached) and
returns the class. Each class takes torch.optim's constructor keywords and defaults.
"""

from __future__ import annotations

from .api import StdlibModule

STDLIB = {
    "SGD": "sgd.opt", "Adam": "adam.opt", "AdamW": "adamw.opt", "RMSprop": "rmsprop.opt",
    "Adagrad": "adagrad.opt", "Adadelta": "adadelta.opt", "SparseAdam": "sparse_adam.opt",
    # torch.optim's, matched to torch 2.13
    "Adamax": "adamax.opt", "RAdam": "radam.opt", "Rprop": "rprop.opt",
    "NAdam": "nadam.opt", "ASGD": "asgd.opt", "Adafactor": "adafactor.opt",
    # from optax or the papers (the docstring of each says which)
    "Lion": "lion.opt", "AdaBelief": "adabelief.opt", "Yogi": "yogi.opt",
    "Signum": "signum.opt", "Adan": "adan.opt", "AdEMAMix": "ademamix.opt",
    # with per-tensor reductions or scalar states (see docs/language.md)
    "LAMB": "lamb.opt", "LARS": "lars.opt", "NovoGrad": "novograd.opt",
    "ScheduleFreeAdamW": "schedule_free_adamw.opt",
}

# Optimizers that, as their torch.optim namesakes, step only the rows of optdsl.RowSparse
# gradients (lazily) and refuse dense ones: their classes get ``sparse_only = True``.
SPARSE_ONLY = frozenset({"SparseAdam"})

__all__ = list(STDLIB) + ["load", "STDLIB", "SPARSE_ONLY"]


class _Optimizers(StdlibModule):
    """The stdlib's optimizers, with the class attributes :data:`SPARSE_ONLY` sets."""

    def load(self, name: str) -> type:
        cls = super().load(name)
        if name in SPARSE_ONLY:
            cls.sparse_only = True
        return cls


_stdlib = _Optimizers(__name__, "optimizer", STDLIB)
load = _stdlib.load


def __getattr__(name: str) -> type:
    return _stdlib.getattr(globals(), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(STDLIB))
