"""Helpers shared by the runtime tests: deterministic problems, driving loops, comparisons,
and an independent NumPy reference of Adam (the oracle for tests that poke at the state).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

import optdsl
from optdsl import Param
from optdsl.api import make_class
from optdsl.compiler import load_spec
from optdsl.optim import STDLIB, load


def make_arrays(dtype: Any = np.float64, shapes=((4, 3), (5,)), seed: int = 0):
    """Arrays with entries of magnitude 0.5..1.5 and random signs (none near zero)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        magnitude = rng.uniform(0.5, 1.5, size=shape)
        sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        out.append((magnitude * sign).astype(dtype))
    return out


def grad(step: int, data: np.ndarray, which: int = 0) -> np.ndarray:
    """``0.5 * p + noise(step, which)`` in p's dtype: depends on the current parameter, so a
    wrong update anywhere changes every later gradient."""
    noise = np.random.default_rng(10_000 * which + step).standard_normal(np.shape(data))
    return np.asarray(data) * data.dtype.type(0.5) + noise.astype(data.dtype)


def set_grads(params, step: int) -> None:
    for i, p in enumerate(params):
        p.grad = grad(step, p.data, i)


def train(opt, params, first: int, last: int) -> None:
    """Steps ``first..last`` (1-based, inclusive) with the deterministic gradients."""
    for step in range(first, last + 1):
        set_grads(params, step)
        opt.step()


def fresh_class(name: str) -> type[optdsl.Optimizer]:
    """A stdlib optimizer class with its own (empty) kernel cache, so tests can count the
    kernels a run compiles without seeing other tests' kernels."""
    spec_text = load(name)._spec.text + f"\n# fresh copy {uuid.uuid4().hex}\n"
    return make_class(load_spec(spec_text, f"stdlib/{STDLIB[name]}"))


def params_from(arrays) -> list[Param]:
    return [Param(a.copy()) for a in arrays]


def assert_state_dicts_equal(a: dict, b: dict) -> None:
    """Deep, bit-for-bit equality of two state_dicts (arrays compared by dtype and bytes)."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    assert set(a) == set(b), (sorted(map(str, a)), sorted(map(str, b)))
    for k in a:
        _assert_equal(a[k], b[k], str(k))


def _assert_equal(x: Any, y: Any, where: str) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict), where
        assert set(x) == set(y), where
        for k in x:
            _assert_equal(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_equal(u, v, f"{where}[{i}]")
    elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, where
        assert x.tobytes() == y.tobytes(), where
    else:
        assert type(x) is type(y) and x == y, f"{where}: {x!r} != {y!r}"


def assert_bits_equal(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: max diff {np.max(np.abs(a - b))}"


def adam_reference(
    p, g, m, v, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, vmax=None
):
    """torch.optim.Adam's update in float64, written out: (p, m, v, vmax) after step t."""
    b1, b2 = betas
    g = g + weight_decay * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    use = v
    if vmax is not None:
        vmax = np.maximum(vmax, v)
        use = vmax
    denom = np.sqrt(use) / np.sqrt(1 - b2**t) + eps
    p = p - lr / (1 - b1**t) * (m / denom)
    return p, m, v, vmax


def assert_close(actual, expected, what: str = "") -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-14, err_msg=what)
