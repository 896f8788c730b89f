"""Diagnostics off cost nothing: the kernels that run are the plain optimizer's (the same
objects, the same source), nothing is collected and no extra buffer is made; turning
them on and off again returns to the very same kernel."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
import optdsl.diagnostics
from optdsl.optim import SGD, Adam


def _spy(opt) -> list:
    """The kernels ``opt`` launches, in order (wraps its _launch)."""
    seen = []
    launch = opt._launch

    def spy(kernel, *args, **kwargs):
        seen.append(kernel)
        return launch(kernel, *args, **kwargs)

    opt._launch = spy
    return seen


def _params(flat: bool):
    rng = np.random.default_rng(0)
    params = [optdsl.Param(rng.standard_normal(s).astype(np.float32)) for s in ((8, 4), (5,))]
    for p in params:
        p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
    if flat:
        optdsl.flatten(params)
    return params


@pytest.mark.parametrize("backend", [None, "numpy"])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("Cls", [Adam, SGD])
def test_off_runs_the_plain_kernels_and_on_then_off_returns_to_them(Cls, flat, backend,
                                                                    monkeypatch):
    plain_opt = Cls(_params(flat), backend=backend)
    plain = _spy(plain_opt)
    for _ in range(3):
        plain_opt.step()

    calls = []
    real = optdsl.diagnostics.collect
    monkeypatch.setattr(optdsl.diagnostics, "collect",
                        lambda opt, todo: calls.append(1) or real(opt, todo))
    opt = Cls(_params(flat), backend=backend, diagnostics=False)
    seen = _spy(opt)
    for _ in range(3):
        opt.step()
    assert seen and len(seen) == len(plain)
    assert all(a is b for a, b in zip(seen, plain, strict=True))  # the same kernel objects
    assert all(":" not in b for k in seen for b in k.buffers)
    assert seen[-1].source == Cls.source(backend or _backend_of(opt), t=3)
    assert calls == [] and opt._extra_layouts == {} and opt._last_diagnostics is None

    opt.diagnostics_enabled = True
    seen.clear()
    opt.step()
    assert calls == [1]
    on = seen[-1]
    assert on is not plain[-1] and "diag:update" in on.buffers
    assert opt.diagnostics().step == 4

    opt.diagnostics_enabled = False
    seen.clear()
    opt.step()
    opt.step()
    assert calls == [1]  # nothing collected while off
    assert seen[-1] is plain[-1]  # back to the plain kernel (at the same path)
    assert all(":" not in b for b in seen[-1].buffers)


def _backend_of(opt) -> str:
    return next(iter(opt._plans.values())).backend.name


def test_the_spec_cache_holds_extras_kernels_only_once_asked():
    """A fresh class: stepping without diagnostics compiles only extras-free kernels."""
    from tests.runtime.rt_util import fresh_class

    Cls = fresh_class("Adam")
    w = optdsl.Param(np.ones(4, np.float32))
    w.grad = np.ones(4, np.float32)
    opt = Cls([w])
    opt.step()
    opt.step()
    assert Cls._spec.kernels and all(extras == () for _, _, extras in Cls._spec.kernels)
    opt.diagnostics_enabled = True
    opt.step()
    assert {extras for _, _, extras in Cls._spec.kernels} == {(), ("track", "update")}
