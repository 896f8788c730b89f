"""Helpers shared by the GradScaler tests: deterministic gradients with injected infs and
nans, and a torch run and an optdsl run of the same loop side by side."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

import optdsl


def true_grads(step: int, shapes, dtype=np.float32, seed: int = 0) -> list[np.ndarray]:
    """The unscaled gradients of one step: normal values spread over six orders of
    magnitude, so that unscaling rounds differently in every dtype."""
    rng = np.random.default_rng(1000 * seed + step)
    out = []
    for shape in shapes:
        magnitude = 10.0 ** rng.uniform(-4, 2, size=shape)
        sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        out.append((magnitude * sign).astype(dtype))
    return out


# step -> (param index, flat element, value): the non-finite values a "backward" produced.
BAD = {3: (0, 0, np.inf), 4: (1, 2, np.nan), 9: (2, 5, -np.inf), 10: (0, 7, np.nan),
       11: (1, 0, np.inf), 17: (2, 1, np.nan)}


def inject(grads: list[np.ndarray], step: int, bad: dict = BAD) -> None:
    if step in bad:
        which, at, value = bad[step]
        grads[which].reshape(-1)[at] = value


def snapshot(opt: Any, params: list) -> tuple:
    """Everything a skipped step must leave alone: values, state, step counts."""
    return ([p.data.copy() for p in params], copy.deepcopy(opt.state_dict()))


def assert_same_snapshot(a: tuple, b: tuple) -> None:
    for x, y in zip(a[0], b[0], strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert _plain(a[1]) == _plain(b[1])


def _plain(value: Any) -> Any:
    """A state_dict as comparable plain data (arrays as dtype, shape and bytes)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    return value


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def make_params(shapes, dtype=np.float32, seed: int = 7) -> list[optdsl.Param]:
    rng = np.random.default_rng(seed)
    return [optdsl.Param(rng.uniform(-1, 1, size=s).astype(dtype), name=f"p{i}")
            for i, s in enumerate(shapes)]
