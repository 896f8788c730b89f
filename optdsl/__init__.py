"""optdsl: optimizers and learning-rate schedules as short update-rule specs.

    import optdsl
    from optdsl.optim import Adam
    Rule = optdsl.compile("my_rule.opt")
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import amp  # noqa: E402  (optdsl.amp.GradScaler)
from . import autotune as autotune  # noqa: E402  (optdsl.autotune.HypergradientLR)
from . import diagnostics as diagnostics  # noqa: E402  (optdsl.diagnostics.JSONLLogger)
from .api import compile  # noqa: E402  (shadows the builtin on purpose: optdsl.compile)
from .backend import available as _available  # noqa: E402
from .backend.pool import num_threads, set_num_threads  # noqa: E402
from .checkpoint import LoadReport, load, save  # noqa: E402
from .clip import clip_grad_norm_, clip_grad_value_  # noqa: E402
from .errors import (  # noqa: E402
    CheckError,
    CheckpointChecksumError,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointVersionError,
    GradientError,
    GradientTypeError,
    HyperError,
    HyperTypeError,
    InternalCompilerError,
    NonFiniteNormError,
    NotAffineError,
    OptdslError,
    ParamGroupError,
    ParamGroupTypeError,
    ParseError,
    ScheduleError,
    SparseGradientError,
    SparseGradientTypeError,
    SpecError,
    StateDictError,
)
from .flat import FlatParams, flatten  # noqa: E402
from .groups import param_groups  # noqa: E402
from .runtime import Optimizer, Param  # noqa: E402
from .sparse import RowSparse  # noqa: E402


def backends(device_kind: str | None = None) -> list[str]:
    """Names of the backends available here, best first: all of them, or those for
    ``device_kind``, "cpu" (NumPy arrays) or "cuda" (CuPy arrays on a GPU)."""
    return _available(device_kind)


__all__ = [
    "compile", "backends", "Param", "Optimizer", "flatten", "FlatParams", "OptdslError",
    "SpecError", "ParseError",
    "CheckError", "HyperError", "HyperTypeError", "ScheduleError", "StateDictError",
    "InternalCompilerError", "GradientError", "GradientTypeError", "ParamGroupError",
    "ParamGroupTypeError",
    "save", "load", "LoadReport", "CheckpointError", "CheckpointCorruptError",
    "CheckpointChecksumError", "CheckpointVersionError", "CheckpointMismatchError",
    "set_num_threads", "num_threads", "__version__", "clip_grad_norm_", "clip_grad_value_",
    "NonFiniteNormError", "RowSparse", "SparseGradientError", "SparseGradientTypeError",
    "amp", "autotune", "diagnostics", "param_groups", "NotAffineError",
]
