"""Facts about the stdlib optimizers that the catalogue (``docs/catalogue.md``, ``optdsl
list``) reports, computed from their compiled specs."""

from __future__ import annotations

from typing import Any

from optdsl import optim
from optdsl.api import state_bytes_per_param as _spec_state_bytes

FLOAT32_BYTES = 4


def state_bytes_per_param(cls: type | str, hypers: dict[str, Any] | None = None) -> int:
    """Bytes of optimizer state per parameter element, stored in float32, for the
    optimizer class ``cls`` (or its stdlib name) built with ``hypers`` (its defaults for
    the rest): 4 per state buffer those hypers switch on, e.g. 8 for Adam, 0 for plain
    SGD, 4 for SGD(momentum=0.9). The step count, one per parameter, is not counted."""
    if isinstance(cls, str):
        cls = optim.load(cls)
    return _spec_state_bytes(cls._spec, FLOAT32_BYTES, **(hypers or {}))
